"""Report dict -> the table the seed reports show by hand, for the terminal and for Markdown."""
from __future__ import annotations

from typing import Any

from ..verdicts.verdict import clip
from .diagnosis import diagnosis_heading, diagnosis_rows
from .numbers import scaled, words
from .routing import routing_rows
from .vision import vision_rows

_MARK = {"match": "yes", "tie": "tie", "mismatch": "NO", "nonfinite": "NaN"}


def _num(value: float | str | None, fmt: str) -> str:
    """A number of the report: formatted, or NaN / +Inf / -Inf / missing as what it is."""
    return words(value, fmt)


def _percent(value: float | str | None) -> str:
    text = _num(scaled(value, 100), ".2f")
    return text + "%" if text[-1].isdigit() else text


def _verdict(check: dict[str, Any]) -> str:
    if check.get("skipped") is not None:
        return f"skipped ({clip(check['skipped'], 80)})"
    return "PASS" if check["passed"] else "FAIL"


def _overall(report: dict[str, Any]) -> str:
    skipped = len(report.get("skipped", []))
    return ("PASS" if report["passed"] else "FAIL") + (f" ({skipped} skipped: compared nothing)" if skipped else "")


def _clip(text: str, width: int) -> str:
    return clip(text.replace("\n", "\\n"), width)  # one table row per prompt


def prompt_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["#", "prompt", "device 1st", "reference 1st", "match", "agreed", "cosine", "rel L2", "KL"]
    decode = "decode_metrics" in report  # the decode steps, beside the prefill (teacher-forced) columns
    if decode:
        header += ["decode rows", "dec cosine", "dec rel L2", "dec KL"]
    rows = []
    for p in report["prompts"]:
        m = p["metrics"]
        d = p.get("decode") or {}
        rows.append([
            p["id"], _clip(p["prompt"], 40),
            repr(p["device_first_token"]["text"]), repr(p["reference_first_token"]["text"]),
            _MARK.get(p["first_token"], p["first_token"]),
            f"{p['agreed_prefix']}/{p['continuation_tokens']}",
            _num(m.get("cosine_similarity"), ".6f"),
            _percent(m.get("relative_l2")),
            _num(m.get("kl_divergence"), ".2e"),
        ] + ([str(d.get("rows", 0)), _num(d.get("cosine_similarity"), ".6f"),
              _percent(d.get("relative_l2")),
              _num(d.get("kl_divergence"), ".2e")] if decode else []))
    return header, rows


def check_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["check", "value", "threshold", "verdict"]
    rows = []
    for c in report["checks"]:
        threshold = c.get("bound_text") or "all finite"  # a metric bound in Threshold's words: "mean >= 0.999"
        rows.append([c["check"], _num(c["value"], ".6g"), threshold, _verdict(c)])
    checked = {c["metric"] for c in report["checks"] if not c["check"].endswith("-decode")}
    for name, stats in report.get("metrics", {}).items():
        if name not in checked:
            rows.append([name, _num(stats["mean"], ".6g"), "mean (no threshold)", "-"])
    return header, rows


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows])


def _title(report: dict[str, Any]) -> str:
    run = report.get("run", {})
    device = run.get("device", {})
    ref = run.get("reference", {})
    return (f"{report['model']} ({report['model_name']}): device vLLM {device.get('platform', '?')} "
            f"{device.get('engine_kwargs', {}).get('dtype', '?')} vs reference transformers "
            f"{ref.get('platform', '?')} {ref.get('dtype', '?')}; {len(report['prompts'])} prompts, "
            f"positions: {report['positions']}, vocab {report['vocab_size']}"
            + "".join(f"; {modality} placeholder positions not compared ({sum(media['per_prompt'].values())} in "
                      f"{len(media['per_prompt'])} prompts)" for modality in ("image", "audio", "media")
                      if (media := run.get(f"{modality}_tokens")))
            + (f"; FAULT INJECTED: {device['fault']}" if device.get("fault") else ""))


def survivors(processes: list[str]) -> str:
    return f"engine process(es) still alive after the engine was shut down and killed: {', '.join(processes)}"


def _reference_source(report: dict[str, Any]) -> list[str]:
    run = report.get("run", {})
    source = run.get("reference_source")
    lines = [f"reference: {source['source']}: {source['reason']}"] if source else []
    if run.get("engine_survivors"):
        lines.append(f"ERROR: {survivors(run['engine_survivors'])}")
    lines += [f"decoding (both sides): {run['decoding']}"] if run.get("decoding") else []
    return lines + list(run.get("baseline_update", []))


def render_terminal(report: dict[str, Any]) -> str:
    lines = [_title(report), *_reference_source(report)]
    lines += _text_table(*prompt_rows(report))
    lines.append("")
    for extra in (routing_rows(report), vision_rows(report)):
        if extra:
            lines += _text_table(*extra) + [""]
    lines += _text_table(*check_rows(report))
    lines.append(f"overall: {_overall(report)}")
    if report.get("diagnosis"):
        rows = diagnosis_rows(report, every_block=False)
        lines += ["", *diagnosis_heading(report), *(_text_table(*rows) if rows else [])]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    versions = report.get("run", {}).get("versions", {})
    lines = [f"# {report['model']} precision report", "", _title(report), "", *_reference_source(report), "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v), ""]
    lines += _md_table(*prompt_rows(report))
    lines.append("")
    for extra in (routing_rows(report), vision_rows(report)):
        if extra:
            lines += _md_table(*extra) + [""]
    lines += _md_table(*check_rows(report))
    lines += ["", f"**Overall: {_overall(report)}**", ""]
    if report.get("diagnosis"):
        rows = diagnosis_rows(report, every_block=True)
        lines += ["## Layer by layer", "", *(f"{line}  " for line in diagnosis_heading(report)), ""]
        lines += (_md_table(*rows) + [""]) if rows else []
    if report.get("html"):
        lines += [f"Plots (KL and cosine along the positions, the |diff| distribution, the top tokens where the two "
                  f"sides part most): [{report['html']}]({report['html']})", ""]
    return "\n".join(lines)
