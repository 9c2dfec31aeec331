"""Run by test_reference_streamed.py in a subprocess: one FP32 reference (in_memory | streamed) scoring two
sequences of a checkpoint. Prints JSON: the resident memory after start-up (every module either runner needs
imported) and the process's peak resident memory (VmHWM) after scoring."""
from __future__ import annotations

import gc
import json
import sys
from pathlib import Path


def status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main(mode: str, model: str, out: str) -> None:
    import torch

    from pytest_npuprec.runners.layer_stream import StreamedModel
    from pytest_npuprec.runners.reference import TransformersRunner
    from pytest_npuprec.runners.scoring import ScoreRequest
    from pytest_npuprec.runners.streamed import StreamedRunner

    torch.ones(256, 256) @ torch.ones(256, 256)
    StreamedModel(Path(model))  # no weights: imports every module either runner's start needs
    gc.collect()
    folder = Path(out)
    folder.mkdir(parents=True)
    sequences = [list(range(5, 45)), list(range(100, 130))]
    runner = StreamedRunner(Path(model)) if mode == "streamed" else TransformersRunner(Path(model))
    start = status("VmRSS")
    with runner as ref:
        ref.score([ScoreRequest(s, tuple(range(len(s))), folder / f"{i}.npy") for i, s in enumerate(sequences)])
    print(json.dumps({"start_rss_bytes": start, "peak_rss_bytes": status("VmHWM")}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
