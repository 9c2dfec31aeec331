"""Rewrite a model's YAML: only the `precision.thresholds` block (and its comment; a tap's tie margin such as
routing_tie_margin) and the `precision.drift` block (and its comment) change, or a `precision:` section is
appended; every other line — comments, key order, quoting, indentation — stays byte for byte.

ruamel.yaml (a round-trip YAML library: it keeps each key's line and column, which PyYAML, the configs' reader,
drops) finds where the block starts and ends; only those lines are replaced, with text written here. Numbers are
YAML 1.1 floats (`1.2e-5`, never `1e-05`), which PyYAML reads back as floats. The file is replaced in one rename
(atomic.py).
"""
from __future__ import annotations

import io
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable

from ..atomic import atomic_write_text
from ..errors import NpuprecError
from .bounds import Bound, yaml_float

CALIBRATED_MARK = "calibrated by pytest-npuprec"  # first line of the comment above a calibrated block
DRIFT_MARK = "drift tolerances proposed by pytest-npuprec"  # first line of the comment above a proposed drift block


class DocumentError(NpuprecError):
    """A YAML whose layout calibration cannot rewrite (e.g. precision: written as a flow mapping)."""


def _round_trip(text: str) -> Any:
    from ruamel.yaml import YAML

    return YAML().load(text)  # round trip: mappings know their keys' lines


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return yaml_float(Decimal(repr(value)))
    return str(value)


def _flow(entry: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in entry.items()) + "}"


def _blank_or_comment(line: str) -> bool:
    return not line.strip() or line.lstrip().startswith("#")


class ConfigDocument:
    """One YAML file's text, with the positions of its keys."""

    def __init__(self, path: Path, text: str | None = None):
        self.path = Path(path)
        self.text = self.path.read_text(encoding="utf-8") if text is None else text

    def _data(self) -> Any:
        return _round_trip(self.text)

    def precision_keys(self) -> list[str]:
        precision = self._data().get("precision")
        return [str(k) for k in precision] if isinstance(precision, dict) else []

    def has_precision(self) -> bool:
        data = self._data()
        return isinstance(data, dict) and data.get("precision") is not None

    def add_precision(self, section: dict[str, Any], comment: list[str]) -> None:
        """Append a `precision:` section (the file has none) at the end, with comment lines above it."""
        from ruamel.yaml import YAML

        y = YAML()
        y.indent(mapping=2, sequence=4, offset=2)
        y.width = 4096
        out = io.StringIO()
        y.dump({"precision": section}, out)
        head = self.text if self.text.endswith("\n") or not self.text else self.text + "\n"
        self.text = head + "".join(f"# {c}\n" for c in comment) + out.getvalue()

    def set_thresholds(self, bounds: Iterable[Bound], comment: list[str],
                       keep: dict[str, list[dict[str, Any]]] | None = None,
                       scalars: dict[str, str] | None = None) -> None:
        """precision.thresholds := the bounds (plus `keep`, bounds carried over as they were, e.g. phase: decode
        ones), one flow mapping each, a list where a metric has several; `comment` lines above it; `scalars`
        (precision keys the file does not have yet, e.g. routing_tie_margin) right after it. A comment of an earlier
        calibration directly above the block is replaced; any other comment stays."""
        by_metric: dict[str, list[str]] = {}
        for b in bounds:
            by_metric.setdefault(b.metric, []).append(_flow({b.kind: _Text(b.text), "reduce": b.reduce}))
        for metric, extra in (keep or {}).items():
            by_metric.setdefault(metric, []).extend(_flow(dict(e)) for e in extra)
        body = ["thresholds:\n"]
        for metric, entries in by_metric.items():
            if len(entries) == 1:
                body.append(f"  {metric}: {entries[0]}\n")
            else:
                body.append(f"  {metric}:\n")
                body.extend(f"    - {e}\n" for e in entries)
        body.extend(f"{key}: {text}\n" for key, text in (scalars or {}).items())
        self._set_block("thresholds", body, comment, CALIBRATED_MARK, ("prompts",))

    def set_drift(self, tolerances: dict[str, str], comment: list[str]) -> None:
        """precision.drift := the tolerances (metric -> "35%"), `comment` lines above it; placed after thresholds
        when the file has no drift block. A comment of an earlier proposal directly above it is replaced."""
        body = ["drift:\n", *(f"  {metric}: {text}\n" for metric, text in tolerances.items())]
        self._set_block("drift", body, comment, DRIFT_MARK, ("thresholds", "prompts"))

    def _set_block(self, key: str, body: list[str], comment: list[str], mark: str, after: tuple[str, ...]) -> None:
        """Replace precision.<key> (its lines, and the comment with `mark` directly above) by `comment` + `body`
        (lines relative to precision's indentation); without one, insert it after the first of `after` there is."""
        data = self._data()
        precision = data.get("precision")
        if not hasattr(precision, "lc") or getattr(precision.fa, "flow_style", lambda: False)():
            raise DocumentError(f"{self.path}: precision: is not a block mapping; calibration rewrites "
                                f"precision.{key} in a block-style precision: section")
        lines = self.text.splitlines(keepends=True)
        keys = list(precision.keys())
        indent = precision.lc.key(keys[0])[1]
        if key in precision:
            start = precision.lc.key(key)[0]
            end = self._value_end(data, precision, key, lines)
            start = self._own_comment_start(lines, start, mark)
        else:
            anchor = next((k for k in after if k in precision), keys[-1])
            start = end = self._value_end(data, precision, anchor, lines)
        pad = " " * indent
        block = [f"{pad}# {c}\n".rstrip(" ") if c else f"{pad}#\n" for c in comment]
        block.extend(pad + line for line in body)
        if start > 0 and not lines[start - 1].endswith("\n"):
            lines[start - 1] += "\n"
        self.text = "".join(lines[:start] + block + lines[end:])

    def set_scalar(self, keys: tuple[str, ...], text: str) -> None:
        """Replace the plain scalar at `keys` (e.g. precision.checks.perplexity.max_ratio) with `text`, in place."""
        node = self._data()
        for key in keys[:-1]:
            node = node[key]
        line, col = node.lc.value(keys[-1])
        lines = self.text.splitlines(keepends=True)
        match = re.compile(r"[0-9.eE+-]+").match(lines[line], col)
        if match is None or match.end() < len(lines[line]) and lines[line][match.end()] not in " \t,}\r\n":
            raise DocumentError(f"{self.path}: {'.'.join(keys)}: expected a plain number to replace")
        lines[line] = lines[line][:col] + text + lines[line][match.end():]
        self.text = "".join(lines)

    @staticmethod
    def _value_end(data: Any, precision: Any, key: str, lines: list[str]) -> int:
        """The line after `key`'s value in precision: (trailing blank and comment lines belong to what follows)."""
        keys = list(precision.keys())
        i = keys.index(key)
        if i + 1 < len(keys):
            end = precision.lc.key(keys[i + 1])[0]
        else:
            top = list(data.keys())
            j = top.index("precision")
            end = data.lc.key(top[j + 1])[0] if j + 1 < len(top) else len(lines)
        while end > precision.lc.key(key)[0] + 1 and _blank_or_comment(lines[end - 1]):
            end -= 1
        return end

    @staticmethod
    def _own_comment_start(lines: list[str], start: int, mark: str) -> int:
        """Extend the block upward over the comment an earlier calibration wrote above it (its first line has
        `mark`)."""
        i = start
        while i > 0 and lines[i - 1].lstrip().startswith("#"):
            i -= 1
            if mark in lines[i]:
                return i
        return start

    def write(self) -> None:
        atomic_write_text(self.path, self.text)


class _Text(str):
    """A bound's text, written as it is."""


__all__ = ["CALIBRATED_MARK", "DRIFT_MARK", "ConfigDocument", "DocumentError"]
