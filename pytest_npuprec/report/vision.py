"""The vision side in the report: per image its embeddings' cosine, relative L2 and max |diff| (worst part), and
per prompt its M-RoPE position mismatches, beside the vision checks' verdicts."""
from __future__ import annotations

from typing import Any, Callable

from ..measure.vision import IMAGE_METRICS, VisionMeasurement
from .numbers import encode, words


def add_vision(report: dict[str, Any], vision: VisionMeasurement, prompt_id: Callable[[int], str]) -> None:
    positions = {p.prompt: p for p in vision.positions}
    report["vision"] = {
        "images": [{"prompt_index": i.prompt, "prompt_id": prompt_id(i.prompt), "image": i.image, "tokens": i.tokens,
                    **{m: encode(i.values.get(m, float("nan"))) for m in IMAGE_METRICS},
                    "worst_part": i.worst_part, "invalid": i.invalid} for i in vision.images],
        "mrope": [{"prompt_index": p.prompt, "prompt_id": prompt_id(p.prompt), "positions": p.tokens,
                   "differing": p.differing, "first": p.first, "device": list(p.device),
                   "reference": list(p.reference)} for p in positions.values()],
        "problems": vision.problems,
    }


def vision_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    vision = report.get("vision")
    if not vision or not (vision["images"] or vision["mrope"]):
        return None
    mrope = {p["prompt_id"]: p for p in vision["mrope"]}
    header = ["prompt", "image", "tokens", "vision cosine", "vision rel. L2", "vision max |diff|", "M-RoPE"]

    def positions(pid: str) -> str:
        p = mrope.get(pid)
        if p is None:
            return "-"
        return "same" if not p["differing"] else f"{p['differing']} differ (first at {p['first']})"

    rows = [[i["prompt_id"], str(i["image"]), str(i["tokens"]), words(i["vision_cosine"], ".7f"),
             words(i["vision_relative_l2"], ".3e"), words(i["vision_max_abs_diff"], ".3e"), positions(i["prompt_id"])]
            for i in vision["images"]]
    with_images = {i["prompt_id"] for i in vision["images"]}
    rows += [[pid, "-", "-", "-", "-", "-", positions(pid)] for pid in mrope if pid not in with_images]
    return header, rows
