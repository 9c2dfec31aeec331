"""MoE routing in the report: per layer agreement and load shift beside the routing checks' verdicts."""
from __future__ import annotations

from typing import Any

from ..measure.routing import RoutingMeasurement
from .numbers import encode, words


def add_routing(report: dict[str, Any], routing: RoutingMeasurement) -> None:
    diff = routing.load_difference()
    worst = routing.worst_flip()
    report["routing"] = {
        "layers": routing.layers, "top_k": routing.top_k, "experts": routing.n_experts,
        "tie_margin": routing.tie_margin, "routes": routing.n_routes,
        "agreement": encode(routing.agreement()),
        "exact": float(routing.exact.mean()) if routing.exact.size else None,
        "ties": routing.ties(), "flips": len(routing.flips), "invalid": routing.invalid[:20],
        "per_layer": [{"layer": layer, "agreement": encode(float(agreement)), "ties": int((routing.agree & ~routing.exact)[:, i].sum()),
                       "flips": sum(f.layer == layer for f in routing.flips),
                       "load_max_diff": encode(float(diff[i].max())),
                       "load_reference": [round(float(x), 5) for x in routing.load_reference[i]],
                       "load_device": [round(float(x), 5) for x in routing.load_device[i]]}
                      for i, (layer, agreement) in enumerate(zip(routing.layers, routing.layer_agreement()))],
        "worst_flip": vars(worst) if worst else None,
    }


def routing_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    routing = report.get("routing")
    if not routing:
        return None
    header = ["MoE layer", "routing agreement", "ties", "flips", "max load shift"]
    rows = [[str(r["layer"]), words(r["agreement"], ".4f"), str(r["ties"]), str(r["flips"]),
             words(r["load_max_diff"], ".4f")]
            for r in routing["per_layer"]]
    return header, rows
