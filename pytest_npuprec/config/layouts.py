"""precision.checks.parallel_layouts: other parallel layouts of the same device, parsed with the other check kinds;
its bounds are settled against the rest of the config (the thresholds, serve:) once both are read."""
from __future__ import annotations

import dataclasses
from typing import Any

from .reader import Reader
from .schema import LAYOUT_KEYS, ParallelLayout, ParallelLayoutsCheck, PrecisionConfig, ServeConfig, Threshold

KEY = "precision.checks.parallel_layouts"


def parse_parallel_layouts(r: Reader, raw: Any, key: str, thresholds: tuple[Threshold, ...] | None
                           ) -> ParallelLayoutsCheck:
    """`layouts:` a list of mappings of LAYOUT_KEYS, e.g. [{tensor_parallel_size: 2}, {tensor_parallel_size: 2,
    enable_expert_parallel: true}]."""
    if "layouts" not in raw:
        raise r.fail(f"{key}.layouts", "missing; expected a list of parallel layouts such as [{tensor_parallel_size: "
                                       "2}, {tensor_parallel_size: 2, enable_expert_parallel: true}]")
    items = r.typed(raw["layouts"], f"{key}.layouts", list)
    if not items:
        raise r.fail(f"{key}.layouts", "empty; expected at least one parallel layout (or no parallel_layouts check)")
    layouts, seen = [], {}
    for i, item in enumerate(items):
        at = f"{key}.layouts[{i}]"
        r.mapping(item, at, frozenset(LAYOUT_KEYS))
        if not item:
            raise r.fail(at, f"empty; expected one or more of {', '.join(LAYOUT_KEYS)}")
        for name, value in item.items():
            if name == "tensor_parallel_size":
                r.positive_int(value, f"{at}.{name}")
            else:
                r.typed(value, f"{at}.{name}", bool)
        layout = ParallelLayout(tuple(item.items()), key=at)
        if layout.settings in seen:
            raise r.fail(at, f"the same layout as {seen[layout.settings]}; expected each layout once")
        seen[layout.settings] = at
        layouts.append(layout)
    return ParallelLayoutsCheck(layouts=tuple(layouts), thresholds=thresholds)


def settle_parallel_layouts(r: Reader, precision: PrecisionConfig, serve: ServeConfig) -> PrecisionConfig:
    """Each layout must differ from the configured one and be one vLLM can build; the check's thresholds default to
    the model's (its own `thresholds:` replace those of the metrics they name)."""
    check = precision.checks.parallel_layouts
    if check is None:
        return precision
    if not precision.thresholds:  # only a calibration loads a config without bounds: it judges nothing
        return dataclasses.replace(precision, checks=dataclasses.replace(precision.checks, parallel_layouts=None))
    for layout in check.layouts:
        served = layout.serve(serve)
        if (served.tensor_parallel_size, bool(served.enable_expert_parallel)) == \
                (serve.tensor_parallel_size, bool(serve.enable_expert_parallel)):
            raise r.fail(layout.key, f"{layout.label} is the configured layout (serve:); expected another "
                                     "tensor_parallel_size or enable_expert_parallel")
        if served.enable_expert_parallel and served.tensor_parallel_size < 2:
            raise r.fail(layout.key, f"{layout.label}: expert parallel over tensor_parallel_size "
                                     f"{served.tensor_parallel_size} puts every expert on one rank, the layout "
                                     "without it; expected tensor_parallel_size >= 2")
    own = check.thresholds or ()
    named = {t.metric for t in own}
    check = dataclasses.replace(check, thresholds=tuple(t for t in precision.thresholds if t.metric not in named) + own)
    return dataclasses.replace(precision, checks=dataclasses.replace(precision.checks, parallel_layouts=check))
