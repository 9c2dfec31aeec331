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
    # one value per prompt, per scored position, per route (scored position x MoE layer: measure/routing.py) or
    # per image (the vision tower's output: measure/vision.py)
    per: Literal["prompt", "position", "route", "image"]
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
    MetricSpec("routing_agreement", "higher", 0.0, 1.0, "route",
               "share of (scored position, MoE layer) whose selected expert set equals the reference's "
               "(BF16 router ties count as agreeing)"),
    MetricSpec("expert_load", "lower", 0.0, 1.0, "route",
               "largest |device - reference| share of one expert's top-k slots in one MoE layer"),
    MetricSpec("vision_cosine", "higher", -1.0, 1.0, "image",
               "cosine of device and reference image embeddings entering the language model (per image, its "
               "worst part: embeddings or a deepstack level)"),
    MetricSpec("vision_relative_l2", "lower", 0.0, math.inf, "image",
               "||device - reference|| / ||reference|| of an image's embeddings (worst part)"),
    MetricSpec("vision_max_abs_diff", "lower", 0.0, math.inf, "image",
               "largest absolute difference of an image's embeddings"),
    MetricSpec("mrope_mismatches", "lower", 0.0, math.inf, "prompt",
               "tokens of a compared prompt whose multi-dimensional (M-RoPE) positions differ from the reference's "
               "(compared exactly)"),
]

# metrics judged on the routing capture of MoE models (measure/routing.py), not on logits rows
ROUTING_METRICS = ("routing_agreement", "expert_load")
# metrics judged on the vision capture of vision-language models (measure/vision.py), not on logits rows
VISION_METRICS = ("vision_cosine", "vision_relative_l2", "vision_max_abs_diff", "mrope_mismatches")

METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}
