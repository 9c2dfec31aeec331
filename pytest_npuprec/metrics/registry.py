"""What each metric is: its name in configs, which direction is better, its possible range.

Kept free of numpy so config validation can use it without importing the math.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MetricSpec:
    name: str
    better: Literal["higher", "lower"]
    lowest: float  # smallest value the metric can take
    highest: float  # largest value the metric can take
    per: Literal["prompt", "position"]  # one value per prompt, or one per scored position
    description: str

    def bound_is_possible(self, bound: Literal["min", "max"], value: float) -> bool:
        """A bound that every possible value violates can never pass."""
        if bound == "min":
            return value <= self.highest
        return value >= self.lowest


_SPECS = [
    MetricSpec("token_agreement", "higher", 0.0, 1.0, "prompt",
               "share of prompts whose first greedy token matches the reference (BF16 ties count as agreeing)"),
    MetricSpec("prefix_agreement", "higher", 0.0, 1.0, "prompt",
               "share of the greedy continuation agreed before the first non-tie divergence"),
    MetricSpec("cosine_similarity", "higher", -1.0, 1.0, "position",
               "cosine of device and reference logit vectors"),
    MetricSpec("pearson_correlation", "higher", -1.0, 1.0, "position",
               "Pearson correlation of device and reference logit vectors"),
    MetricSpec("kl_divergence", "lower", 0.0, math.inf, "position",
               "KL(reference || device) of the softmax distributions, in nats"),
    MetricSpec("relative_l2", "lower", 0.0, math.inf, "position",
               "||device - reference|| / ||reference|| of the logit vectors"),
    MetricSpec("max_abs_diff", "lower", 0.0, math.inf, "position",
               "largest absolute logit difference"),
    MetricSpec("mean_abs_diff", "lower", 0.0, math.inf, "position",
               "mean absolute logit difference"),
]

METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}
