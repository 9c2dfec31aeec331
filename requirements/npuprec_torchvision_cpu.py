"""Let `import torchvision` work on a CPU build of torch (installed by dev.sh with a .pth that imports this).

The only torchvision wheels the registries serve are CUDA builds: their compiled ops (_C.so) need
libtorch_cuda and cannot load against torch's CPU build, and `import torchvision` then fails in
`torchvision._meta_registrations` (`operator torchvision::nms does not exist`). The vision-language
processors (transformers' image/video processors, vLLM's qwen2_vl/qwen3_vl) use only torchvision's
Python transforms, which work. This finder lets the two modules that register fake/autograd kernels for
the compiled ops import as empty modules when, and only when, those ops did not load; every other
module (and a working torchvision, e.g. a CPU build) is untouched. Calling a compiled op (nms,
roi_align, ...) still fails, loudly, as it would without the shim.
"""
import importlib.abc
import importlib.machinery
import sys

_GUARDED = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


class _SkipWithoutOps(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name not in _GUARDED:
            return None
        extension = sys.modules.get("torchvision.extension")
        if extension is None or extension._has_ops():
            return None  # the compiled ops loaded: the real module registers their kernels
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__doc__ = "empty: torchvision's compiled ops did not load (npuprec_torchvision_cpu)"


if not any(isinstance(f, _SkipWithoutOps) for f in sys.meta_path):
    sys.meta_path.insert(0, _SkipWithoutOps())
