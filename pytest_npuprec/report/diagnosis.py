"""The layer-by-layer diagnosis in the report (diagnose.py): the JSON section as is (non-finite numbers said as
"NaN"/"+Inf"/"-Inf", report/numbers.py),
and its tables for the terminal (the layers, and the blocks of the first divergent one) and the Markdown (all)."""
from __future__ import annotations

from typing import Any

from ..measure.layers import COLUMNS
from .numbers import encode, words

_FORMATS = {"Cosine": ".6f", "MaxAbsErr": ".3g", "MaxRelativeErr": ".3g", "One Thousandth Err Ratio": ".4f",
            "RelL2": ".3g"}


def _json_ready(value: Any) -> Any:
    if isinstance(value, float):
        return encode(value)
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def add_diagnosis(report: dict[str, Any], diagnosis: dict[str, Any]) -> None:
    report["diagnosis"] = _json_ready(diagnosis)


def _cell(value: Any, column: str) -> str:
    return words(value, _FORMATS[column])


def _block(kind: str, moe: bool) -> str:
    return "experts" if kind == "mlp" and moe else kind


def diagnosis_heading(report: dict[str, Any]) -> list[str]:
    d = report.get("diagnosis")
    if not d:
        return []
    tower = " (its vision tower's blocks first)" if d.get("vision_blocks") else ""
    lines = [f"layer-by-layer diagnosis of prompt {d.get('prompt_id')} ({d.get('why', '?')}), "
             f"{d.get('positions', 0)} positions{tower}: device (vLLM eager) and floor (transformers BF16) vs FP32 "
             "reference"]
    if d.get("error"):
        return lines + [f"diagnosis not made: {d['error']}"]
    return lines + [d["message"], f"a layer diverges when {d['rule']}"]


def _routes(cell: dict[str, Any]) -> str:
    """A router row's flips beyond BF16 ties, device and floor (measure/layer_routes.py)."""
    routes = cell.get("routes")
    if not routes:
        return ""
    return (f" ({routes['device']['flips_beyond_ties']}/{routes['routes']} routes flipped beyond ties, floor "
            f"{routes['floor']['flips_beyond_ties']})")


def _rows(entries: list[dict[str, Any]], name: str, label: str, first: Any, every_block: bool) -> list[list[str]]:
    rows = []
    for entry in entries:
        kinds = ("output", "attention", "router", "mlp") if every_block or entry[name] == first else ("output",)
        for kind in (k for k in kinds if k in entry):
            cell = entry[kind]
            rows.append([f"{label}{entry[name]}", _block(kind, entry.get("moe", False)),
                         *(_cell(cell["device"][c], c) for c in COLUMNS),
                         _cell(cell["floor"]["Cosine"], "Cosine"), _cell(cell["floor"]["RelL2"], "RelL2"),
                         words(cell["floor_ratio"], ".3g"),
                         (("YES" if cell["diverged"] else "") + _routes(cell)).strip()])
    return rows


def diagnosis_rows(report: dict[str, Any], every_block: bool) -> tuple[list[str], list[list[str]]] | None:
    """Per vision block (a vision-language model's tower, first: it runs first) and per decoder layer: the device's
    columns, the floor's Cosine and RelL2, how many times its floor, diverged; the attention and MLP rows (router
    and experts in a MoE layer) of every layer (`every_block`) or of the first divergent one."""
    d = report.get("diagnosis")
    if not d or d.get("error"):
        return None
    header = ["layer", "block", *COLUMNS, "floor Cosine", "floor RelL2", "x floor", "diverged"]
    rows = _rows(d.get("vision_blocks", []), "block", "vision ", d.get("first_divergent_vision_block"), every_block)
    rows += _rows(d["layers"], "layer", "", d["first_divergent_layer"], every_block)
    return header, rows
