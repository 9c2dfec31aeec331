"""Report dict (its `figures`: report/figures.py) -> one self-contained HTML page: no script, no network, no CDN.

Plots are hand-written SVG: a few polylines and bars need no plotting library (matplotlib would add ~40 MB and
a font cache to every CI box for four charts), the output is deterministic text, and the page opens anywhere."""
from __future__ import annotations

import html
import math
from typing import Any

from .render import check_rows, prompt_rows

_W, _H, _PAD = 560, 180, 40
_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#1b1b1b;max-width:1200px}
h1{font-size:22px} h2{font-size:18px;margin-top:28px} h3{font-size:15px;margin:14px 0 4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left} th{background:#f2f2f2}
.pass{color:#0a7a2f;font-weight:600} .fail{color:#b00020;font-weight:600} .skip{color:#8a6d00;font-weight:600}
.banner{padding:10px 14px;border-radius:6px;font-size:18px;font-weight:700;display:inline-block}
.banner.pass{background:#e3f5e8} .banner.fail{background:#fde7ea}
.charts{display:flex;flex-wrap:wrap;gap:16px} .meta{color:#555;font-size:13px}
svg text{font-size:11px;font-family:system-ui,sans-serif}
"""


def render_html(report: dict[str, Any]) -> str:
    figures = report.get("figures") or {}
    passed = report["passed"]
    parts = [f"<h1>{_e(report['model'])} precision report</h1>",
             f'<div class="banner {"pass" if passed else "fail"}">{"PASS" if passed else "FAIL"}</div>',
             f'<p class="meta">{_e(_meta_line(report))}</p>',
             *([f'<p class="fail">engine processes still alive after the close: '
                f'{_e(", ".join(map(str, report["run"]["engine_survivors"])))}</p>']
               if report.get("run", {}).get("engine_survivors") else []),
             "<h2>Checks</h2>", _table(*check_rows(report), verdict_column=3),
             "<h2>Prompts</h2>", _table(*prompt_rows(report))]
    if figures.get("worst"):
        parts += ["<h2>Where the distributions part most</h2>", _worst(figures["worst"])]
    if figures.get("series"):
        parts.append("<h2>Along the positions</h2>")
        for prompt, series in figures["series"].items():
            parts.append(f"<h3>prompt {_e(prompt)}</h3><div class=\"charts\">"
                         + _series_chart(series, "kl_divergence", "KL(reference ‖ device)")
                         + _series_chart(series, "cosine_similarity", "1 − cosine", one_minus=True)
                         + "</div>")
    if (report.get("diagnosis") or {}).get("layers"):
        parts += ["<h2>Layer by layer</h2>", f"<p>{_e(report['diagnosis'].get('message', ''))}</p>",
                  _layer_chart(report["diagnosis"])]
    if figures.get("abs_diff"):
        parts += ["<h2>|device − reference| over every compared logit</h2>", _histogram(figures["abs_diff"])]
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(report['model'])}: {'PASS' if passed else 'FAIL'}</title><style>{_STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _meta_line(report: dict[str, Any]) -> str:
    run = report.get("run", {})
    device, ref = run.get("device", {}), run.get("reference", {})
    versions = ", ".join(f"{k} {v}" for k, v in run.get("versions", {}).items() if v)
    fault = f" — FAULT INJECTED: {device['fault']}" if device.get("fault") else ""
    return (f"{report['model_name']}: device vLLM {device.get('platform', '?')} "
            f"{device.get('engine_kwargs', {}).get('dtype', '?')} vs reference transformers "
            f"{ref.get('platform', '?')} {ref.get('dtype', '?')}; {len(report['prompts'])} prompts; "
            f"vocab {report['vocab_size']}; {report['created']}; {versions}{fault}")


def _table(header: list[str], rows: list[list[str]], verdict_column: int | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = {"PASS": "pass", "FAIL": "fail"}.get(cell, "skip" if str(cell).lower().startswith("skip") else "")
            attr = f' class="{cls}"' if i == verdict_column and cls else ""
            cells.append(f"<td{attr}>{_e(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def _worst(worst: dict[str, Any]) -> str:
    head = (f"<p>prompt <b>{_e(worst['prompt'])}</b>, position {worst['position']} (predicting "
            f"{_e(repr(worst.get('next_token')))}): KL {_fmt(worst['kl_divergence'])}</p>")
    rows = []
    for rank, (dev, ref) in enumerate(zip(worst["device"], worst["reference"]), start=1):
        rows.append([str(rank), repr(ref["text"]), _fmt(ref["prob"]), repr(dev["text"]), _fmt(dev["prob"])])
    return head + _table(["#", "reference token", "p", "device token", "p"], rows)


def _fmt(value: Any) -> str:
    return value if isinstance(value, str) else f"{value:.4g}"


def _finite(values: list[Any]) -> list[float | None]:
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values]


def _series_chart(series: dict[str, Any], metric: str, title: str, one_minus: bool = False) -> str:
    """One metric along the positions of a prompt: prefill solid, decode dashed (decode rows repeat prefill's
    positions)."""
    lines = []
    for phase in ("prefill", "decode"):
        data = series.get(phase, {})
        if metric in data:
            ys = [1 - v if one_minus and isinstance(v, (int, float)) else v for v in data[metric]]
            lines.append((phase, data["positions"], ys))
    return _line_chart(lines, f"{title} per position", "position")


def _line_chart(lines: list[tuple[str, list[Any], list[Any]]], title: str, x_name: str) -> str:
    """Log-scale lines (label, xs, ys); the first solid, the others dashed; a non-finite value marked with a cross,
    never dropped."""
    colours = ("#1f5fbf", "#d9730d", "#2a9d4b")
    lines = [(label, xs, _finite(ys)) for label, xs, ys in lines]
    xs_all = [x for _, xs, _ in lines for x in xs]
    if not xs_all:
        return ""
    ys_all = [max(y, 1e-12) for _, _, ys in lines for y in ys if y is not None]
    y_lo, y_hi = (math.floor(math.log10(min(ys_all))), math.ceil(math.log10(max(ys_all)))) if ys_all else (-12, 0)
    y_hi = y_hi if y_hi > y_lo else y_lo + 1
    x_lo, x_hi = min(xs_all), max(xs_all) if max(xs_all) > min(xs_all) else min(xs_all) + 1

    def sx(x: float) -> float:
        return _PAD + (x - x_lo) / (x_hi - x_lo) * (_W - 2 * _PAD)

    def sy(y: float) -> float:
        return _H - _PAD + (math.log10(max(y, 1e-12)) - y_lo) / (y_hi - y_lo) * (2 * _PAD - _H)

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img" aria-label="{_e(title)}">',
           f'<rect width="{_W}" height="{_H}" fill="#fff" stroke="#ddd"/>',
           f'<text x="{_PAD}" y="16">{_e(title)} (log; 0 drawn at 1e-12)</text>',
           f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#999"/>',
           f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="#999"/>',
           f'<text x="{_PAD}" y="{_H - 22}">{x_name} {x_lo}</text><text x="{_W - _PAD - 20}" y="{_H - 22}">{x_hi}</text>',
           f'<text x="2" y="{_PAD + 4}">1e{y_hi}</text><text x="2" y="{_H - _PAD}">1e{y_lo}</text>']
    for i, (label, xs, ys) in enumerate(lines):
        colour = colours[i % len(colours)]
        points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys) if y is not None)
        dash = ' stroke-dasharray="5,3"' if i else ""
        svg.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dash} points="{points}"/>')
        svg += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2" fill="{colour}"><title>{_e(label)} {x_name} {x}: '
                f'{y:.3g}</title></circle>' for x, y in zip(xs, ys) if y is not None]
        svg += [f'<text x="{sx(x) - 3:.1f}" y="{_PAD + 10}" fill="#b00020">✕</text>'
                for x, y in zip(xs, ys) if y is None]
        svg.append(f'<text x="{_W - _PAD - 60}" y="{16 + 13 * i}" fill="{colour}">{_e(label)}</text>')
    svg.append("</svg>")
    return "".join(svg)


def _histogram(hist: dict[str, Any]) -> str:
    counts, edges = hist["counts"], hist["edges"]
    total = sum(counts) or 1
    bar_w = (_W - 2 * _PAD) / len(counts)
    peak = max(counts) or 1
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H + 20}" role="img" '
           'aria-label="absolute difference histogram">',
           f'<rect width="{_W}" height="{_H + 20}" fill="#fff" stroke="#ddd"/>']
    for i, count in enumerate(counts):
        height = (count / peak) * (_H - 2 * _PAD)
        x = _PAD + i * bar_w
        svg.append(f'<rect x="{x:.1f}" y="{_H - _PAD - height:.1f}" width="{bar_w - 2:.1f}" height="{height:.1f}" '
                   f'fill="#1f5fbf"><title>{edges[i]:g} to {edges[i + 1]:g}: {count} logits '
                   f'({100 * count / total:.2f}%)</title></rect>')
        svg.append(f'<text x="{x:.1f}" y="{_H - _PAD + 14}">{"0" if edges[i] == 0 else f"{edges[i]:.0e}"}</text>')
    svg.append(f'<text x="{_PAD}" y="16">share of logits per |diff| decade; non-finite: {hist["nonfinite"]}</text>')
    svg.append("</svg>")
    return "".join(svg)


def _one_minus_cosine(entries: list[dict[str, Any]], kind: str, side: str) -> list[Any]:
    return [1 - c if isinstance(c, (int, float)) else c for c in (e[kind][side].get("Cosine") for e in entries)]


def _layer_chart(diagnosis: dict[str, Any]) -> str:
    """1 - Cosine of each decoder layer's output vs the FP32 reference: the device and the floor (transformers BF16),
    and of each MoE layer's router logits; a vision tower's blocks in a chart of their own, before it; where the
    device first left its floor named under them."""
    charts = []
    blocks = diagnosis.get("vision_blocks") or []
    if blocks:
        xs = [entry["block"] for entry in blocks]
        lines = [(side, xs, _one_minus_cosine(blocks, "output", side)) for side in ("device", "floor")]
        charts.append(_line_chart(lines, "1 − Cosine of each vision block's output", "vision block"))
    entries = diagnosis["layers"]
    layers = [entry["layer"] for entry in entries]
    lines = [(side, layers, _one_minus_cosine(entries, "output", side)) for side in ("device", "floor")]
    routed = [entry for entry in entries if "router" in entry]
    if routed:
        lines.append(("router logits", [e["layer"] for e in routed],
                      _one_minus_cosine(routed, "router", "device")))
    charts.append(_line_chart(lines, "1 − Cosine of each layer's output", "layer"))
    where = diagnosis.get("where")
    note = (f"<p>first divergent: <b>{_e(where)}</b></p>" if where else "<p>no layer left its floor</p>")
    return "".join(charts) + note
