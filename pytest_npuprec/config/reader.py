"""Type-checked reading of one YAML file; every error names the file, the dotted key and what was expected."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import NpuprecError


class ConfigError(NpuprecError):
    def __init__(self, path: Path | str, key: str, expected: str):
        self.path, self.key, self.expected = Path(path), key, expected
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        super().__init__(where + expected)


def type_name(types: tuple[type, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
             list: "a list"}
    if float in types:  # an int is a number too
        types = tuple(t for t in types if t is not int)
    return " or ".join(dict.fromkeys(names[t] for t in types))


class Reader:
    """Type-checked access to one YAML file's nested mappings, naming the dotted key on error."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, expected: str) -> ConfigError:
        return ConfigError(self.path, key, expected)

    def typed(self, value: Any, key: str, *types: type) -> Any:
        # bool is an int subclass: a `true` where a number is expected is a mistake, not 1.
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            raise self.fail(key, f"expected {type_name(types)}, got {type(value).__name__} {value!r}")
        return value

    def mapping(self, value: Any, key: str, allowed: frozenset[str]) -> dict[str, Any]:
        self.typed(value, key, dict)
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            prefix = f"{key}." if key else ""
            raise self.fail(prefix + unknown[0],
                            f"unknown key; expected one of: {', '.join(sorted(allowed))}")
        return value

    def choice(self, value: Any, key: str, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.fail(key, f"expected one of {', '.join(options)}, got {value!r}")
        return value

    def positive_int(self, value: Any, key: str) -> int:
        self.typed(value, key, int)
        if value < 1:
            raise self.fail(key, f"expected a positive integer, got {value}")
        return value
