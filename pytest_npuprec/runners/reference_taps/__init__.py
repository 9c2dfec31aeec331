"""Reference-side taps (TAPS.md): each a module with `forward_kwargs()` (what the transformers forward call
needs to produce the tap), optionally `recording(model)` (a context manager around the forward call, for taps
that hook modules), and `write(model, output, keep, path)` (the arrays at the kept positions, atomic); a tower
tap is an object with the same three (vision.TowerReference), one per tower."""
from __future__ import annotations

from . import layers, routing, vision

REFERENCE_TAPS = {"routing": routing, "layers": layers, "vision": vision.VISION}
