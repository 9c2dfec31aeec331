"""Worker-side taps: arrays captured beside the logits of the teacher-forced scoring pass (see TAPS.md).

A tap is installed once per worker (`install(model)` returns the tap, or None when the model has nothing
for it to see), fills a per-forward-pass buffer from hooks of its own, and is handed the rows of the scored
positions by the logits hook (`take(rows, keys, positions)`: token rows of this pass, their scoring request
and position). A tap that needs every row of its requests (not only the scored ones) also has
`see(segments, token_index, args, kwargs)`, called once per armed forward pass with (request, first row, end) of
each scoring request in it, each row's token index and the forward's arguments. `write(key, positions, path)` writes one scoring request's arrays (atomic .npz); results leave
the worker as files, never torch objects.
"""
from __future__ import annotations

from typing import Any

from . import layers, routing, vision

# tap name -> installer; one per MoE/modality concern
INSTALLERS = {"routing": routing.install, "layers": layers.install,
              **{name: vision.installer(name, modality) for name, modality in vision.TOWERS.items()}}


def install_all(model: Any) -> dict[str, Any]:
    """The taps this model has something for (name -> tap)."""
    taps = {}
    for name, install in INSTALLERS.items():
        tap = install(model)
        if tap is not None:
            taps[name] = tap
    return taps
