"""Typed settings: how one value is read from a TOML file or a command-line word, checked and
described, so that a config key and a ``csrs`` flag of the same setting accept the same values
and refuse the others with the same one-line message.

Torch-free: the command line builds its parsers from these without loading the model stack.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BOOL", "EPOCHS", "FRACTION", "INTEGER", "Kind", "NONNEGATIVE", "NONNEGATIVE_INT",
           "PATH", "POSITIVE", "POSITIVE_INT", "PROBABILITY", "TEXT", "TEXTS", "Key", "choice",
           "read_table"]


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Kind:
    """A kind of value: ``accept`` says whether a value (as TOML or Python gives it) is one,
    ``convert`` normalises it (an int where a float is expected), ``parse`` reads a command-line
    word and ``show`` writes one back, so that ``parse(show(v)) == v``."""

    expected: str
    accept: Callable[[Any], bool]
    convert: Callable[[Any], Any] = _same
    parse: Callable[[str], Any] = str
    show: Callable[[Any], str] = str

    def check(self, value: Any, where: str) -> Any:
        """Returns ``value`` converted; raises ValueError "WHERE: expected ...; got ..."."""
        if not self.accept(value):
            raise ValueError(f"{where}: expected {self.expected}; got {value!r}")
        return self.convert(value)

    def from_text(self, text: str) -> Any:
        """Returns the value of a command-line word; raises ValueError naming what was expected."""
        try:
            value = self.parse(text)
        except ValueError:
            raise ValueError(f"expected {self.expected}, got '{text}'") from None
        if not self.accept(value):
            raise ValueError(f"expected {self.expected}, got '{text}'")
        return self.convert(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _epochs(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


POSITIVE_INT = Kind("an integer >= 1", lambda v: _is_int(v) and v >= 1, parse=int)
NONNEGATIVE_INT = Kind("an integer >= 0", lambda v: _is_int(v) and v >= 0, parse=int)
INTEGER = Kind("an integer", _is_int, parse=int)
POSITIVE = Kind("a number > 0", lambda v: _is_number(v) and v > 0, float, float, repr)
NONNEGATIVE = Kind("a number >= 0", lambda v: _is_number(v) and v >= 0, float, float, repr)
FRACTION = Kind("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1, float, float, repr)
PROBABILITY = Kind("a number in (0, 1)", lambda v: _is_number(v) and 0 < v < 1, float, float,
                   repr)
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
TEXT = Kind("a string", lambda v: isinstance(v, str) and v != "")
PATH = Kind("a path", lambda v: isinstance(v, (str, Path)) and str(v) != "", Path, Path)
TEXTS = Kind("a list of strings", lambda v: isinstance(v, list) and all(
    isinstance(item, str) and item for item in v))
EPOCHS = Kind("a list of epochs (integers >= 0), e.g. [200, 400]",
              lambda v: isinstance(v, (list, tuple)) and all(_is_int(e) and e >= 0 for e in v),
              tuple, _epochs, lambda v: ",".join(str(e) for e in v))


def choice(*options: str) -> Kind:
    """The kind of a value that must be one of ``options``."""
    return Kind(f"one of {', '.join(options)}", lambda v: v in options)


@dataclass(frozen=True)
class Key:
    """One key of a config table: its kind, its default (``None``: unset, which is allowed) and
    whether it must be given."""

    kind: Kind
    default: Any = None
    required: bool = False


def read_table(given: Mapping[str, Any] | None, keys: Mapping[str, Key],
               where: str) -> dict[str, Any]:
    """Returns the table ``given`` checked against ``keys``, defaults filled in; raises ValueError
    in one line on an unknown key, a missing required one or a value of the wrong kind."""
    if given is not None and not isinstance(given, Mapping):
        raise ValueError(f"{where}: expected a table; got {given!r}")
    given = dict(given or {})
    unknown = sorted(set(given) - set(keys))
    if unknown:
        raise ValueError(f"{where}: unknown key '{unknown[0]}'; known keys: "
                         f"{', '.join(sorted(keys))}")
    table = {}
    for name, key in keys.items():
        if name not in given:
            if key.required:
                raise ValueError(f"{where}.{name} is missing: expected {key.kind.expected}")
            table[name] = key.default
        elif given[name] is None and key.default is None and not key.required:
            table[name] = None
        else:
            table[name] = key.kind.check(given[name], f"{where}.{name}")
    return table
