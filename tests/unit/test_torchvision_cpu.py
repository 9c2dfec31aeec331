"""torchvision on the CPU torch (dev.sh: the CUDA wheel without its dependencies, plus
requirements/npuprec_torchvision_cpu.py): the processors' Python transforms work, compiled ops still fail, and
the shim steps in only when the compiled ops did not load."""
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

SHIM = Path(__file__).resolve().parents[2] / "requirements" / "npuprec_torchvision_cpu.py"


def test_shim_skips_the_registrations_only_without_compiled_ops(monkeypatch):
    spec = importlib.util.spec_from_file_location("npuprec_torchvision_cpu_copy", SHIM)
    shim = importlib.util.module_from_spec(spec)
    before = list(sys.meta_path)
    spec.loader.exec_module(shim)
    monkeypatch.setattr(sys, "meta_path", before)  # the copy's finder does not stay installed
    finder = shim._SkipWithoutOps()
    monkeypatch.setitem(sys.modules, "torchvision.extension", SimpleNamespace(_has_ops=lambda: True))
    assert finder.find_spec("torchvision._meta_registrations") is None  # ops loaded: the real module runs
    monkeypatch.setitem(sys.modules, "torchvision.extension", SimpleNamespace(_has_ops=lambda: False))
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        assert finder.find_spec(name) is not None
    assert finder.find_spec("torchvision.ops") is None and finder.find_spec("torchvision.transforms") is None


def test_torchvision_imports_and_its_transforms_work_in_a_fresh_interpreter():
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed here (./dev.sh setup installs it)")
    code = ("import torch, torchvision, torchvision.transforms.v2.functional as F\n"
            "x = F.resize(torch.zeros(3, 8, 8), [4, 4], antialias=True); assert tuple(x.shape) == (3, 4, 4)\n"
            "if not torchvision.extension._has_ops():\n"
            "    try:\n"
            "        torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)\n"
            "    except Exception:\n"
            "        pass\n"
            "    else:\n"
            "        raise SystemExit('a compiled op ran without its library')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
