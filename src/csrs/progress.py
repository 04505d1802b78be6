"""Progress on stderr: a tqdm bar on a terminal, a plain line every ~10% or 30 s in a log.

Redrawn bars are right on a terminal and wrong in a file: every redraw is kept, so a log of the
demo grew to half a megabyte of carriage returns. When stderr is not a terminal (CI, ``nohup``,
``2> log``), :func:`progress` returns a :class:`LineProgress` instead, which writes one line when
another tenth of the total is done or 30 s have passed since the last line, and one at the end.
tqdm's own ``miniters``/``mininterval`` cannot say "either": it needs both, hence this class.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm

__all__ = ["LineProgress", "progress", "write"]

LINE_SECONDS = 30.0
LINE_FRACTION = 0.1


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LineProgress:
    """The part of tqdm's interface csrs uses (iterate, ``update``, ``set_postfix``, ``close``,
    ``disable``), printed as plain lines: ``desc: 120/451 ex (27%), 14 s, ~37 s left``."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None,
                 initial: int = 0, desc: str = "", unit: str = "it", disable: bool = False,
                 stream: TextIO | None = None, seconds: float = LINE_SECONDS,
                 fraction: float | None = LINE_FRACTION) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.n, self.initial = iterable, total, initial, initial
        self.desc, self.unit, self.disable = desc, unit, disable
        self._stream = stream
        self._seconds = seconds
        self._fraction = fraction
        self._start = self._last_time = time.monotonic()
        self._last_n = initial
        self._postfix = ""
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def set_postfix(self, values: dict[str, Any] | None = None, **more: Any) -> None:
        items = {**(values or {}), **more}
        self._postfix = ", ".join(f"{key}={value}" for key, value in items.items())

    def update(self, count: int = 1) -> None:
        self.n += count
        if self.disable:
            return
        now = time.monotonic()
        step = (max(1, round(self.total * self._fraction))
                if self.total and self._fraction else None)
        if (step is not None and self.n - self._last_n >= step) or \
                now - self._last_time >= self._seconds:
            self._line(now)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable and self.n != self._last_n:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        elapsed = now - self._start
        done = self.n - self.initial
        text = f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        text += f", {elapsed:.0f} s"
        if self.total and 0 < done and self.n < self.total:
            text += f", ~{elapsed / done * (self.total - self.n):.0f} s left"
        if self._postfix:
            text += f" [{self._postfix}]"
        print(text, file=self._stream or sys.stderr, flush=True)
        self._last_n, self._last_time = self.n, now

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None,
             initial: int = 0, desc: str = "", unit: str = "it",
             disable: bool = False, fraction: float | None = LINE_FRACTION) -> Any:
    """Return a progress bar for ``iterable`` or ``total`` steps: tqdm on a terminal, a
    :class:`LineProgress` when stderr is not one (a line per ``fraction`` of the total, None for
    none but the 30-second and the final ones)."""
    if _is_terminal(sys.stderr):
        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit,
                    disable=disable, dynamic_ncols=True)
    return LineProgress(iterable, total=total, initial=initial, desc=desc, unit=unit,
                        disable=disable, fraction=fraction)


def write(text: str) -> None:
    """Print one line to stderr without breaking a bar that is being drawn."""
    if _is_terminal(sys.stderr):
        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)
