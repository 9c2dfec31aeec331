"""Baselines: the FP32 reference recorded once and replayed (no transformers model at run time), and the
device's metric values per hardware, for drift checks.

    <baseline dir>/<model>/reference.json     provenance, lm_head tensor, per prompt: tokens, greedy
                                              continuation, positions, row checksums
    <baseline dir>/<model>/rows-<i>.npy       FP32 input rows of the reference's lm_head, per prompt
    <baseline dir>/<model>/routing-<i>.npz    a MoE model's reference routing, compact (measure/routing.py)
    <baseline dir>/<model>/device/<hw>.json   the device's metrics from a run where every check passed

`provenance.py` what a baseline is valid for, `lm_head.py` rebuilding logits from the rows,
`store.py` reading and publishing the folder, `replay.py` the Runner that replays it, `record.py`
the live reference wrapped to record it, `source.py` live or baseline (and why), `device_records.py`
and `drift.py` the device side, `update.py` what an update changed.
"""
from ..errors import NpuprecError


class BaselineError(NpuprecError):
    """A baseline that cannot be used or written: the message names the model, the file and what to do."""


def update_command(model: str) -> str:
    return f"pytest -m npu --model {model} --npuprec-update-baselines"
