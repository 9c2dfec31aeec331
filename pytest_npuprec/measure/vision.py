"""The vision side, device vs reference (pure numpy): each image's embeddings entering the language model, and
the multi-dimensional (M-RoPE) positions of every compared prompt.

Per image and part (the main embeddings, and each deepstack level where the model has them: Qwen3-VL adds those
to its first decoder layers), over the part's flattened [tokens x hidden] values: cosine, relative L2
(||device - reference|| / ||reference||) and max |diff|. An image's value of a metric is its worst part. A
non-finite value on either side, or parts of other shapes, make the image invalid (no comparison can pass).

Positions: the device's rotary positions [dims x tokens] against the reference's get_rope_index, exactly, over
the tokens both ran (the reference runs the scored sequence up to its last scored position).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..capture.records import ModelCapture

TAP = "vision"
IMAGE_METRICS = ("vision_cosine", "vision_relative_l2", "vision_max_abs_diff")


@dataclass(frozen=True)
class ImageComparison:
    prompt: int  # prompt index
    image: int  # image index within the prompt
    tokens: int  # embedding rows (image tokens)
    values: dict[str, float]  # metric -> the image's value (worst part)
    worst_part: dict[str, str]  # metric -> the part that set it ("embeddings", "deepstack 0", ...)
    invalid: str | None = None  # why nothing of it can be compared (non-finite values, shapes)


@dataclass(frozen=True)
class PositionComparison:
    prompt: int
    tokens: int  # positions compared
    differing: int  # of them, those whose position vector differs
    first: int | None = None  # token index of the first difference
    device: tuple[int, ...] = ()  # the two position vectors there
    reference: tuple[int, ...] = ()


@dataclass
class VisionMeasurement:
    images: list[ImageComparison] = field(default_factory=list)
    positions: list[PositionComparison] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # positions that could not be compared (one side lacks them)

    def values(self, metric: str) -> np.ndarray:
        """One value per image (NaN for an invalid one), or per prompt for mrope_mismatches."""
        if metric == "mrope_mismatches":
            return np.asarray([float(p.differing) for p in self.positions])
        return np.asarray([np.nan if i.invalid else i.values[metric] for i in self.images])

    def summary(self) -> dict[str, dict[str, float]]:
        """metric -> {mean, min, max} over images (prompts for mrope_mismatches); NaN for an invalid capture, and
        no entry for a metric with no values (calibration and benchmarks/noise_floor.py)."""
        nan = float("nan")
        out = {}
        for metric in (*IMAGE_METRICS, "mrope_mismatches"):
            values = self.values(metric)
            if not values.size:
                continue
            invalid = self.problems if metric == "mrope_mismatches" else self.invalid
            out[metric] = ({k: nan for k in ("mean", "min", "max")} if invalid or not np.isfinite(values).all()
                           else {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())})
        return out

    @property
    def invalid(self) -> list[ImageComparison]:
        return [i for i in self.images if i.invalid]


def compare_parts(device: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """cosine, relative L2 and max |diff| of two arrays of one shape (flattened), in float64."""
    d, r = np.asarray(device, np.float64).ravel(), np.asarray(reference, np.float64).ravel()
    diff = d - r
    norm_d, norm_r = np.linalg.norm(d), np.linalg.norm(r)
    cosine = float(d @ r / (norm_d * norm_r)) if norm_d > 0 and norm_r > 0 else float(norm_d == norm_r)
    relative = float(np.linalg.norm(diff) / norm_r) if norm_r > 0 else (0.0 if norm_d == 0 else float("inf"))
    return {"vision_cosine": cosine, "vision_relative_l2": relative,
            "vision_max_abs_diff": float(np.abs(diff).max()) if diff.size else 0.0}


def _parts(arrays: dict[str, np.ndarray], image: int) -> dict[str, np.ndarray]:
    parts = {"embeddings": arrays[f"embeds_{image}"]}
    for level, values in enumerate(arrays.get(f"deepstack_{image}", ())):
        parts[f"deepstack {level}"] = values
    return parts


def compare_image(prompt: int, image: int, device: dict[str, np.ndarray],
                  reference: dict[str, np.ndarray]) -> ImageComparison:
    dev, ref = _parts(device, image), _parts(reference, image)
    tokens = int(ref["embeddings"].shape[0])
    if list(dev) != list(ref) or any(dev[k].shape != ref[k].shape for k in ref):
        shapes = lambda parts: ", ".join(f"{k} {list(v.shape)}" for k, v in parts.items())  # noqa: E731
        return ImageComparison(prompt, image, tokens, {}, {},
                               invalid=f"device {shapes(dev)}; reference {shapes(ref)}")
    for side, parts in (("device", dev), ("reference", ref)):
        for name, values in parts.items():
            bad = int(np.count_nonzero(~np.isfinite(values)))
            if bad:
                return ImageComparison(prompt, image, tokens, {}, {},
                                       invalid=f"{bad} non-finite values in the {side}'s {name}")
    per_part = {name: compare_parts(dev[name], ref[name]) for name in ref}
    values, worst = {}, {}
    for metric in IMAGE_METRICS:
        pick = min if metric == "vision_cosine" else max
        name = pick(per_part, key=lambda n: per_part[n][metric])
        values[metric], worst[metric] = per_part[name][metric], name
    return ImageComparison(prompt, image, tokens, values, worst)


def compare_positions(prompt: int, device: np.ndarray, reference: np.ndarray) -> PositionComparison:
    n = min(device.shape[-1], reference.shape[-1])
    dev, ref = np.asarray(device)[:, :n], np.asarray(reference)[:, :n]
    if dev.shape[0] != ref.shape[0]:
        return PositionComparison(prompt, n, n, 0, tuple(int(x) for x in dev[:, 0]),
                                  tuple(int(x) for x in ref[:, 0]))
    differ = np.flatnonzero((dev != ref).any(axis=0))
    if not differ.size:
        return PositionComparison(prompt, n, 0)
    first = int(differ[0])
    return PositionComparison(prompt, n, int(differ.size), first, tuple(int(x) for x in dev[:, first]),
                              tuple(int(x) for x in ref[:, first]))


def measure_vision(capture: ModelCapture, tap: str = TAP) -> VisionMeasurement | None:
    """Every compared prompt's images and positions, device vs reference; None without a vision capture. `tap`:
    another tower's tap of the same arrays (runners/worker_taps/vision.py TOWERS)."""
    records = [r for r in capture.compared() if tap in r.tap_files]
    if not records:
        return None
    out = VisionMeasurement()
    for record in records:
        sides = record.tap_files.get(tap, {})
        missing = [s for s in ("reference", "device") if s not in sides]
        if missing:
            raise ValueError(f"prompt {record.prompt.id!r}: no {tap} capture on the {' and '.join(missing)} side")
        dev, ref = record.tap(tap, "device"), record.tap(tap, "reference")
        index = record.prompt.index
        n_ref = len(ref["offsets"])
        if len(dev["offsets"]) != n_ref or list(dev["offsets"]) != list(ref["offsets"]):
            out.images += [ImageComparison(index, i, 0, {}, {}, invalid=(
                f"the device's image embeddings start at token positions {list(dev['offsets'])}, the reference's "
                f"at {list(ref['offsets'])}")) for i in range(max(n_ref, len(dev["offsets"])))]
        else:
            out.images += [compare_image(index, i, dev, ref) for i in range(n_ref)]
        if "positions" in dev and "positions" in ref:
            out.positions.append(compare_positions(index, dev["positions"], ref["positions"]))
        elif "positions" in dev or "positions" in ref:
            side = "device" if "positions" not in dev else "reference"
            out.problems.append(f"prompt {record.prompt.id!r}: the {side} has no multi-dimensional positions")
    return out
