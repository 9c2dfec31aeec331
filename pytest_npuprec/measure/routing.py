"""MoE routing, device vs reference (pure numpy): which experts each layer chose at each scored position.

Reference: the FP32 router logits [P x L x E] (reference_taps/routing.py); its choice is their top k.
Device: the expert ids it ran [P x L x k] (worker_taps/routing.py).

A (position, layer) *agrees* when both chose the same set of experts. A differing set is a *tie* (agreeing
within noise) when every expert the device chose instead lies within `tie_margin` of the reference's k-th
logit: the reference's own margin there is inside the BF16 noise floor of the router logits, so BF16
arithmetic alone could flip it. Otherwise it is a *flip*. Its margin is how far below the reference's k-th
logit the device reached (for a swap of the k-th and (k+1)-th expert: the reference's margin between them).

Expert load: each expert's share of the k slots of all scored tokens, per layer and side; the check bounds
the largest |device share - reference share| (a lost expert map moves load even when few sets differ).

The comparison reads the reference only through its compact form (`compact_routes`), the one a baseline keeps
(baselines/store.py): per route its top-k expert ids (the narrowest unsigned type), its k-th logit (float32) and
each expert's gap below it (float16, rounded away from the tie floor: a gap inside the floor is rounded down, one
outside it up, so the tie rule decides exactly as on the FP32 logits; a flip's margin is kept to float16's
3 significant digits, at least the true one). A live reference is compacted here before comparing, so a replay
gives the same measurement bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..capture.records import ModelCapture

TAP = "routing"


def bf16_ulp(x: np.ndarray) -> np.ndarray:
    """One BF16 unit in the last place at |x| (8 significand bits)."""
    _, exponent = np.frexp(np.maximum(np.abs(x), np.finfo(np.float32).tiny))
    return np.ldexp(1.0, exponent - 8)


@dataclass(frozen=True)
class Flip:
    prompt: int  # prompt index
    position: int  # position in the scored sequence
    layer: int  # decoder layer index
    margin: float  # reference k-th logit minus the lowest reference logit among the experts only the device chose
    reference: tuple[int, ...]  # expert sets, sorted
    device: tuple[int, ...]


@dataclass
class RoutingMeasurement:
    layers: list[int]  # decoder layer indices with a router, in order
    top_k: int
    n_experts: int
    tie_margin: float | None  # None: one BF16 ulp of the k-th logit
    agree: np.ndarray  # [N x L] bool: same set, or a tie
    exact: np.ndarray  # [N x L] bool: same set
    prompt: np.ndarray  # [N] prompt index of each row
    position: np.ndarray  # [N]
    load_reference: np.ndarray  # [L x E] share of top-k slots
    load_device: np.ndarray
    flips: list[Flip] = field(default_factory=list)  # every non-tie difference
    invalid: list[str] = field(default_factory=list)  # non-finite reference logits, device ids out of range

    @property
    def n_routes(self) -> int:
        return int(self.agree.size)

    def agreement(self) -> float:
        """Share of (position, layer) routes that agree (ties counted as agreeing); NaN if any input is invalid."""
        if self.invalid or not self.agree.size:
            return float("nan")
        return float(self.agree.mean())

    def layer_agreement(self) -> list[float]:
        return [float(x) for x in self.agree.mean(axis=0)] if self.agree.size else []

    def load_difference(self) -> np.ndarray:
        """[L x E] |device share - reference share|."""
        return np.abs(self.load_device - self.load_reference)

    def max_load_difference(self) -> float:
        if self.invalid or not self.agree.size:
            return float("nan")
        return float(self.load_difference().max())

    def worst_flip(self) -> Flip | None:
        return max(self.flips, key=lambda f: f.margin) if self.flips else None

    def ties(self) -> int:
        return int(np.count_nonzero(self.agree & ~self.exact))


def tie_floor(kth: np.ndarray, tie_margin: float | None) -> np.ndarray:
    """The router-logit gap under which a differing choice is a tie: the config's margin, else one BF16 ulp."""
    return bf16_ulp(kth) if tie_margin is None else np.full(np.shape(kth), float(tie_margin))


def compact_routes(reference_logits: np.ndarray, top_k: int, tie_margin: float | None) -> dict[str, np.ndarray]:
    """[N x L x E] FP32 router logits -> what the comparison needs of them (module docstring):
    top_ids [N x L x k] (narrowest unsigned type), kth [N x L] float32 (NaN where a logit is not finite),
    gaps [N x L x E] float16 (kth - logit; 0 on the top-k)."""
    ref = np.asarray(reference_logits, dtype=np.float32)
    n_experts = ref.shape[-1]
    finite = np.isfinite(ref)
    safe = np.where(finite, ref, 0.0).astype(np.float64)
    order = np.argsort(-safe, axis=-1, kind="stable")
    top_ids = order[..., :top_k]
    kth = np.take_along_axis(safe, order[..., top_k - 1:top_k], axis=-1)[..., 0]
    gap = kth[..., None] - safe
    np.put_along_axis(gap, top_ids, 0.0, axis=-1)
    floor = tie_floor(kth, tie_margin)[..., None]
    with np.errstate(over="ignore"):
        half = gap.astype(np.float16)
    wide = half.astype(np.float64)
    half = np.where((gap <= floor) & (wide > gap), np.nextafter(half, np.float16(-np.inf)), half)
    half = np.where((gap > floor) & (wide < gap), np.nextafter(half, np.float16(np.inf)), half)
    return {"top_ids": top_ids.astype(np.min_scalar_type(max(n_experts - 1, 0))),
            "kth": np.where(finite.all(axis=-1), kth, np.nan).astype(np.float32),
            "gaps": half.astype(np.float16)}


def compare_compact(reference: dict[str, np.ndarray], device_ids: np.ndarray,
                    tie_margin: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For a compact reference (compact_routes) and [N x L x k] device ids: (agree, exact, margin, invalid), each
    [N x L]. margin: the largest gap among the device-only experts (0 where the sets are equal); invalid: a
    non-finite reference logit or a device id outside 0 .. E - 1."""
    gaps = np.asarray(reference["gaps"]).astype(np.float64)
    kth = np.asarray(reference["kth"]).astype(np.float64)
    n_experts = gaps.shape[-1]
    ids = np.asarray(device_ids).astype(np.int64)
    invalid = ~np.isfinite(kth) | ((ids < 0) | (ids >= n_experts)).any(axis=-1)
    chosen_ref = np.zeros(gaps.shape, dtype=bool)
    np.put_along_axis(chosen_ref, np.asarray(reference["top_ids"]).astype(np.int64), True, axis=-1)
    chosen_dev = np.zeros(gaps.shape, dtype=bool)
    np.put_along_axis(chosen_dev, np.clip(ids, 0, n_experts - 1), True, axis=-1)
    exact = (chosen_ref == chosen_dev).all(axis=-1)
    device_only = chosen_dev & ~chosen_ref
    margin = np.where(device_only, gaps, -np.inf).max(axis=-1)
    margin = np.where(exact | ~device_only.any(axis=-1), 0.0, margin)
    floor = tie_floor(np.where(np.isfinite(kth), kth, 0.0), tie_margin)
    agree = (exact | (margin <= floor)) & ~invalid
    return agree, exact & ~invalid, margin, invalid


def compare_routes(reference_logits: np.ndarray, device_ids: np.ndarray, top_k: int,
                   tie_margin: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """compare_compact on [N x L x E] FP32 reference router logits."""
    return compare_compact(compact_routes(reference_logits, top_k, tie_margin), device_ids, tie_margin)


def top_k_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """The k largest logits' expert ids along the last axis (non-finite logits as 0)."""
    return np.argsort(-np.where(np.isfinite(logits), logits, 0.0), axis=-1, kind="stable")[..., :k]


def load_shares(ids: np.ndarray, n_experts: int) -> np.ndarray:
    """[N x L x k] expert ids -> [L x E] share of the k slots each expert took, per layer."""
    ids = np.asarray(ids).astype(np.int64)
    n, layers, k = ids.shape
    out = np.zeros((layers, n_experts))
    for layer in range(layers):
        valid = ids[:, layer].ravel()
        valid = valid[(valid >= 0) & (valid < n_experts)]
        out[layer] = np.bincount(valid, minlength=n_experts)[:n_experts] / max(1, n * k)
    return out


def reference_routes(tap: dict[str, np.ndarray], tie_margin: float | None, prompt: str) -> dict[str, np.ndarray]:
    """The compact reference of one prompt's routing tap: compacted here from a live run's router logits, or as a
    baseline replay wrote it (made with the tie margin it was recorded with: it must be today's)."""
    top_k = int(tap["top_k"])
    if "router_logits" in tap:
        return compact_routes(tap["router_logits"], top_k, tie_margin)
    recorded = float(tap["tie_margin"])
    if (math.isnan(recorded) and tie_margin is not None) or (not math.isnan(recorded) and recorded != tie_margin):
        raise ValueError(f"prompt {prompt!r}: the reference routing was recorded with routing_tie_margin "
                         f"{None if math.isnan(recorded) else recorded}, today's config has {tie_margin}; the "
                         "baseline must be recorded again")
    return {key: tap[key] for key in ("top_ids", "kth", "gaps")}


def measure_routing(capture: ModelCapture, tie_margin: float | None = None) -> RoutingMeasurement | None:
    """Routing of every compared prompt, device vs reference; None when no prompt has a routing capture."""
    records = [r for r in capture.compared() if TAP in r.tap_files]
    if not records:
        return None
    missing = [r.prompt.id for r in capture.compared() if TAP not in r.tap_files]
    if missing:
        raise ValueError(f"prompts {missing[:5]} have no routing capture while others do; routing compares every "
                         "compared prompt or none")
    refs: list[dict[str, np.ndarray]] = []
    devs, prompts, positions = [], [], []
    layers, top_k = None, None
    invalid: list[str] = []
    for record in records:
        sides = record.tap_files[TAP]
        missing = [s for s in ("reference", "device") if s not in sides]
        if missing:
            raise ValueError(f"prompt {record.prompt.id!r}: no routing capture on the {' and '.join(missing)} side")
        tap, dev = record.tap(TAP, "reference"), record.tap(TAP, "device")
        ref = reference_routes(tap, tie_margin, record.prompt.id)
        if layers is None:
            layers, top_k = [int(x) for x in tap["layers"]], int(tap["top_k"])
        if "expert_ids" not in dev:  # a transformers device (benchmarks/noise_floor.py): its top-k of its logits
            dev = dict(dev, expert_ids=top_k_ids(dev["router_logits"], top_k))
        if [int(x) for x in dev["layers"]] != layers or dev["expert_ids"].shape[-1] != top_k:
            raise ValueError(f"prompt {record.prompt.id!r}: device routed layers {list(dev['layers'])} with "
                             f"{dev['expert_ids'].shape[-1]} experts each; the reference routes layers {layers} "
                             f"with top-{top_k}")
        if len(ref["kth"]) != len(record.positions) or len(dev["expert_ids"]) != len(record.positions):
            raise ValueError(f"prompt {record.prompt.id!r}: routing rows (reference {len(ref['kth'])}, "
                             f"device {len(dev['expert_ids'])}) differ from the {len(record.positions)} scored "
                             "positions")
        refs.append(ref)
        devs.append(dev["expert_ids"])
        prompts.append(np.full(len(record.positions), record.prompt.index))
        positions.append(np.asarray(record.positions))
    assert layers is not None and top_k is not None
    ref = {key: np.concatenate([r[key] for r in refs]) for key in ("top_ids", "kth", "gaps")}
    n_experts = int(ref["gaps"].shape[-1])
    dev_ids = np.concatenate(devs)
    prompt, position = np.concatenate(prompts), np.concatenate(positions)
    agree, exact, margin, bad = compare_compact(ref, dev_ids, tie_margin)
    for row, col in zip(*np.nonzero(bad)):
        invalid.append(f"prompt {int(prompt[row])} position {int(position[row])} layer {layers[col]}: "
                       "non-finite reference router logits or a device expert id outside "
                       f"0..{n_experts - 1} ({dev_ids[row, col].tolist()})")
    ref_ids = ref["top_ids"].astype(np.int64)
    flips = [Flip(int(prompt[row]), int(position[row]), layers[col], float(margin[row, col]),
                  tuple(sorted(int(x) for x in ref_ids[row, col])), tuple(sorted(int(x) for x in dev_ids[row, col])))
             for row, col in zip(*np.nonzero(~agree & ~bad))]
    return RoutingMeasurement(layers=layers, top_k=top_k, n_experts=n_experts, tie_margin=tie_margin, agree=agree,
                              exact=exact, prompt=prompt, position=position,
                              load_reference=load_shares(ref_ids, n_experts), load_device=load_shares(dev_ids, n_experts),
                              flips=flips, invalid=invalid)


def router_logit_error(capture: ModelCapture) -> float | None:
    """Largest |device - reference| router logit when the device side wrote router logits too (a transformers
    BF16 run in benchmarks/noise_floor.py: the BF16 noise floor of the router); None otherwise."""
    worst = None
    for record in capture.compared():
        sides = record.tap_files.get(TAP, {})
        if "device" not in sides or "reference" not in sides:
            continue
        dev = record.tap(TAP, "device")
        if "router_logits" not in dev:
            return None
        diff = np.abs(dev["router_logits"].astype(np.float64) - record.tap(TAP, "reference")["router_logits"])
        worst = max(worst or 0.0, float(diff.max()) if diff.size else 0.0)
    return worst
