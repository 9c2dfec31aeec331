"""Run by test_reference_streamed.py in a subprocess: one FP32 reference (in_memory | streamed) scoring two
sequences of a checkpoint, under RLIMIT_AS = the address space after start-up + CAP bytes (CAP 0: no cap).
Prints JSON (address space at start and end); an allocation beyond the cap fails the process."""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def main(mode: str, model: str, out: str, cap: int) -> None:
    import torch  # everything imported and its thread pool started before the cap is set

    from pytest_npuprec.runners.reference import TransformersRunner
    from pytest_npuprec.runners.scoring import ScoreRequest
    from pytest_npuprec.runners.streamed import StreamedRunner

    torch.ones(256, 256) @ torch.ones(256, 256)
    import transformers.models.llama.modeling_llama  # noqa: F401
    folder = Path(out)
    folder.mkdir(parents=True)
    sequences = [list(range(5, 45)), list(range(100, 130))]
    runner = StreamedRunner(Path(model)) if mode == "streamed" else TransformersRunner(Path(model))
    start = vm_bytes()
    if cap:
        resource.setrlimit(resource.RLIMIT_AS, (start + cap, start + cap))
    with runner as ref:
        ref.score([ScoreRequest(s, tuple(range(len(s))), folder / f"{i}.npy") for i, s in enumerate(sequences)])
    print(json.dumps({"start_vm_bytes": start, "cap_bytes": cap, "end_vm_bytes": vm_bytes()}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
