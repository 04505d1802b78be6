"""Result files: the per-example TSVs that certification writes and every report reads.

Four kinds, told apart by their header (and described by the settings file ``<name>.json``
beside each file csrs writes):

- ``fixed-n`` (:data:`COLUMNS`): ``csrs certify``; Cohen's columns first, then the radii of
  Algorithm 1 and what the certified cost kappa(eps) needs at every eps;
- ``sequential`` (:func:`sequential_columns`): ``csrs certify --adaptive``; the decisions of one
  sequential test at each eps of a grid, which the header names (``certified@0.5``);
- ``convex``: ``csrs certify --convex``; Zhang & Evans's deterministic decisions at one eps;
- ``cohen-log``: the log of Cohen et al.'s ``certify.py`` (``idx label predict radius correct
  time``), read only.

Floats are written with the shortest text that reads back to the same number
(:func:`format_float`): an eps equal to a printed radius must compare as the certificate did.
Files of the first csrs format (radii rounded to 6 digits) are refused in one line.

Torch-free, so that metrics and reports load without the model stack.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from csrs.progress import progress as progress_bar
from csrs.progress import write

__all__ = ["COHEN_COLUMNS", "COHEN_LOG", "COLUMNS", "CONVEX", "CONVEX_COLUMNS", "FIXED",
           "FORMAT", "SEQUENTIAL", "ResultsFile", "ResultsFileError", "ResultsStream",
           "eps_column", "format_float", "load_results", "prepare_results", "read_results",
           "sequential_columns"]

FORMAT = "csrs-results-2"
FIXED, SEQUENTIAL, CONVEX, COHEN_LOG = "fixed-n", "sequential", "convex", "cohen-log"

# Cohen's columns first (idx label predict radius correct), then the cost-sensitive certificate
# (Algorithm 1 for Omega_y), then what the certified cost kappa(eps) needs at every eps: clean_cost
# = C[y][predict] (an abstention costs max_k C[y][k]), cost_r1 = the cost certificate's own R1,
# cs_cost = C[y][c_A], and for each costly class k != c_A its pairwise radius and cost, as
# "k:value" lists.
COLUMNS = ("idx", "label", "predict", "radius", "correct", "sensitive", "cs_predict",
           "cs_costly", "r1", "r2", "cs_radius", "p_a_lower", "p_b_upper", "clean_cost",
           "cost_r1", "cs_cost", "pair_radii", "pair_costs", "time")
# The sequential file: per example the standard decision at radius 0 (predict, correct), the
# candidate and whether it is costly, the samples spent, the radius bounds of both tests, why it
# stopped; then per eps of the grid the standard decision and the cost-sensitive one.
_SEQUENTIAL_HEAD = ("idx", "label", "predict", "correct", "sensitive", "candidate", "costly",
                    "clean_cost", "samples", "radius_lower", "radius_upper", "std_radius_lower",
                    "std_radius_upper", "stopped")
CONVEX_COLUMNS = ("idx", "label", "predict", "correct", "sensitive", "certified", "margin", "eps",
                  "time")
COHEN_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
# The first csrs format: radii with 6 significant digits, and a cost certificate that took R1
# from Algorithm 1's column (at alpha, not alpha/2, with --bounds paper).
_FORMAT_1 = {
    ("idx", "label", "predict", "radius", "correct", "sensitive", "cs_predict", "cs_costly",
     "r1", "r2", "cs_radius", "p_a_lower", "p_b_upper", "clean_cost", "cs_cost", "pair_radii",
     "pair_costs", "time"): "a fixed-n",
    ("idx", "label", "predict", "correct", "sensitive", "certified", "samples", "eps",
     "candidate", "costly", "p_a_lower", "p_b_upper", "radius_lower", "radius_upper", "stopped",
     "time"): "an adaptive",
}
# Settings that describe a run but do not change its rows: a resume may differ in them.
_NOT_COMPARED = frozenset({"model", "checkpoint", "cost_description", "class_names"})


class ResultsFileError(ValueError):
    """A results file that is missing, foreign, or cannot be resumed with these settings."""


def format_float(value: float) -> str:
    """Return the shortest text that reads back to exactly ``value`` ("0.5", "inf", "-inf")."""
    value = float(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def eps_column(prefix: str, eps: float) -> str:
    """The column of a sequential file holding ``prefix``'s decision at ``eps``
    (``certified@0.5``)."""
    return f"{prefix}@{format_float(eps)}"


def sequential_columns(grid: Sequence[float]) -> tuple[str, ...]:
    """The columns of a sequential results file for the eps ``grid``."""
    per_eps = [eps_column(prefix, eps) for eps in grid for prefix in ("standard", "certified")]
    return (*_SEQUENTIAL_HEAD, *per_eps, "time")


def _grid_of(header: Sequence[str]) -> tuple[float, ...] | None:
    """The eps grid of a sequential header, or None if ``header`` is not one."""
    if tuple(header[:len(_SEQUENTIAL_HEAD)]) != _SEQUENTIAL_HEAD or header[-1] != "time":
        return None
    try:
        grid = tuple(float(name.partition("@")[2]) for name in header[len(_SEQUENTIAL_HEAD):-1:2])
    except ValueError:
        return None
    return grid if grid and tuple(header) == sequential_columns(grid) else None


def _kind_of(header: Sequence[str], path: Path) -> str:
    header = tuple(header)
    if header == COLUMNS:
        return FIXED
    if header == CONVEX_COLUMNS:
        return CONVEX
    if header == COHEN_COLUMNS:
        return COHEN_LOG
    if _grid_of(header) is not None:
        return SEQUENTIAL
    if header in _FORMAT_1:
        raise ResultsFileError(f"'{path}' is {_FORMAT_1[header]} results file of an older csrs "
                               f"(format 1: radii rounded to 6 digits); certify again with this "
                               f"version into another --out")
    raise ResultsFileError(f"'{path}' is not a results file csrs knows (header starts "
                           f"{list(header[:4])}); expected the header of csrs certify, or "
                           f"Cohen et al.'s 'idx label predict radius correct time'")


def read_results(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Read a results TSV into a list of row dicts (values as strings).

    A torn last line (no newline, or the wrong number of fields) is ignored; with
    ``repair=True`` it is also cut from the file so that appending continues cleanly. A file
    that holds an example twice is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsFileError(f"results file '{path}' does not exist")
    with open(path, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    try:
        header = lines[0].decode("utf-8").rstrip("\r").split("\t")
    except UnicodeDecodeError:
        raise ResultsFileError(f"'{path}' is not a text results file") from None
    if tuple(header[:2]) != ("idx", "label"):
        raise ResultsFileError(f"'{path}' is not a csrs results file (header starts with "
                               f"{header[:2]}; expected idx, label)")
    complete, good_bytes = [], len(lines[0]) + 1
    seen: dict[str, int] = {}
    for number, line in enumerate(lines[1:-1], start=2):  # after the last newline: unfinished
        fields = line.decode("utf-8").rstrip("\r").split("\t")
        if len(fields) != len(header):
            break
        if fields[0] in seen:
            raise ResultsFileError(f"'{path}' holds example {fields[0]} twice (lines "
                                   f"{seen[fields[0]]} and {number}): two runs wrote to it; "
                                   f"keep one row per example (nothing was changed)")
        seen[fields[0]] = number
        complete.append(dict(zip(header, fields, strict=True)))
        good_bytes += len(line) + 1
    if repair and good_bytes < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
            handle.flush()
            os.fsync(handle.fileno())
    return complete


@dataclass
class ResultsFile:
    """A results file read back: its kind, rows and settings (empty where no settings file
    lies beside it, as for Cohen's logs)."""

    path: Path
    kind: str
    rows: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[float, ...] | None:
        """The radii this file decided (sequential: its grid; convex: its eps); None for files
        with radii, which serve every eps."""
        if self.kind == SEQUENTIAL:
            return _grid_of(list(self.rows[0]) if self.rows else [])
        if self.kind == CONVEX:
            return tuple(sorted({float(row["eps"]) for row in self.rows}))
        return None


def load_results(path: str | Path) -> ResultsFile:
    """Read a results file with its kind and settings; refuse an empty or unknown one."""
    path = Path(path)
    rows = read_results(path)
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
    kind = _kind_of(header, path)
    if not rows:
        raise ResultsFileError(f"results file '{path}' has no finished rows yet")
    meta_path = _meta_path(path)
    settings = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return ResultsFile(path, kind, rows, settings)


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _settings_json(settings: Mapping[str, Any]) -> str:
    """JSON with one line per key and each row of a matrix on a line of its own."""
    lines = []
    for key, value in settings.items():
        if (isinstance(value, list) and value
                and all(isinstance(row, list) for row in value)):
            rows = ",\n    ".join(json.dumps(row) for row in value)
            text = f"[\n    {rows}\n  ]"
        else:
            text = json.dumps(value)
        lines.append(f"  {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def prepare_results(path: str | Path, columns: Sequence[str], settings: Mapping[str, Any],
                    kind: str, *, fingerprint: str | None = None) -> list[dict[str, Any]]:
    """Create a results file with its header, or check and repair one to resume; return its rows.

    The settings are kept beside the file (``<path>.json``) with the format and the ``kind``. A
    file with other columns (another kind of run), made with other settings, or made by another
    model (``fingerprint``, see :func:`csrs.certify.model_fingerprint`) is refused, so that one
    file never mixes certificates computed differently; a torn last line is cut off. The file
    is locked (``<path>.lock``, an ``flock`` that the kernel releases if the process dies) until
    its :class:`ResultsStream` closes, so that a second writer is refused instead of appending
    every example again.
    """
    path = Path(path)
    settings = {"format": FORMAT, "kind": kind, **settings}
    if fingerprint is not None:
        settings["model"] = fingerprint
    path.parent.mkdir(parents=True, exist_ok=True)
    _lock(path)
    try:
        meta_path = _meta_path(path)
        if path.exists() and path.stat().st_size > 0:
            with path.open(encoding="utf-8") as handle:
                header = tuple(handle.readline().rstrip("\r\n").split("\t"))
            if header != tuple(columns):
                existing = _kind_of(header, path)
                raise ResultsFileError(f"'{path}' holds {existing} results, not {kind} with "
                                       f"these columns; use another --out to start anew")
            if meta_path.exists():
                _check_settings(path, json.loads(meta_path.read_text()), settings)
            rows = read_results(path, repair=True)
        else:
            path.write_text("\t".join(columns) + "\n", encoding="utf-8")
            rows = []
        meta_path.write_text(_settings_json(settings))
    except BaseException:
        release(path)
        raise
    return rows


def _check_settings(path: Path, previous: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    if "model" in previous and previous["model"] != settings.get("model"):
        raise ResultsFileError(f"'{path}' holds results of another model (fingerprint "
                               f"{previous['model']}, this one {settings.get('model')}); use "
                               f"another --out to start anew")
    changed = [f"{key}={previous.get(key)!r} (now {value!r})" for key, value in settings.items()
               if key not in _NOT_COMPARED and previous.get(key) != value]
    if changed:
        raise ResultsFileError(f"'{path}' was made with other settings: {', '.join(changed)}; "
                               f"use another --out to start anew")


# -- one writer per file ------------------------------------------------------------------------
_HELD: dict[Path, FileLock] = {}


def _lock(path: Path) -> None:
    """Take ``<path>.lock`` for this process, or refuse: another process writes the file."""
    key = path.resolve()
    if key in _HELD:
        return
    lock = FileLock(str(path.with_name(path.name + ".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ResultsFileError(f"'{path}' is being written by another process (lock "
                               f"'{lock.lock_file}'); wait for it to finish") from None
    _HELD[key] = lock


def release(path: str | Path) -> None:
    """Release this process's lock on the results file ``path`` (no-op if not held)."""
    lock = _HELD.pop(Path(path).resolve(), None)
    if lock is not None:
        lock.release()


class ResultsStream:
    """The rows of a certification run over ``indices``: those already in ``rows`` (read back
    from its file) are done, the others are ``todo``; new rows are appended to the file (when
    ``path`` is given) and flushed, so that a kill loses no finished row, kept in memory, and
    counted on a progress bar. Rows may arrive in any order; once every index is done, a file
    whose rows are out of the order of ``indices`` is rewritten in that order.

    Use as a context manager; the file and the bar are closed however the run ends.
    """

    def __init__(self, path: str | Path | None, columns: Sequence[str],
                 rows: list[dict[str, Any]], indices: Sequence[int], *, desc: str,
                 progress: bool) -> None:
        self.rows = rows
        self.indices = list(indices)
        done = {int(row["idx"]) for row in rows}
        self.todo = [index for index in self.indices if index not in done]
        self.kept = len(self.indices) - len(self.todo)
        self._columns = columns
        self._path = Path(path) if path is not None else None
        if self._path is not None and progress:
            if not self.todo:
                write(f"'{self._path}' is already complete ({len(self.indices)} examples); "
                      f"nothing to certify")
            elif self.kept:
                write(f"resuming '{self._path}': kept {self.kept} of {len(self.indices)} "
                      f"examples, {len(self.todo)} to go")
        self._handle = open(path, "a", encoding="utf-8") if path is not None else None
        self._bar = progress_bar(total=len(self.indices), initial=self.kept, unit="ex",
                                 desc=desc, disable=not progress)

    def add(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if self._handle is not None:
            self._handle.writelines("\t".join(str(row[column]) for column in self._columns)
                                    + "\n" for row in rows)
            self._handle.flush()
        self.rows.extend(rows)
        self._bar.update(len(rows))

    def select(self) -> list[dict[str, Any]]:
        """Return the rows of ``indices``, in that order (each must have finished)."""
        by_index = {int(row["idx"]): row for row in self.rows}
        return [by_index[index] for index in self.indices]

    def _sort_file(self) -> None:
        """Rewrite the file with its rows in the order of ``indices`` (atomically)."""
        rank = {index: i for i, index in enumerate(self.indices)}
        positions = [rank.get(int(row["idx"]), len(rank)) for row in self.rows]
        if all(a <= b for a, b in zip(positions, positions[1:], strict=False)):
            return
        ordered = [row for _, row in sorted(zip(positions, self.rows, strict=True),
                                            key=lambda pair: pair[0])]
        temporary = self._path.with_name(self._path.name + ".tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("\t".join(self._columns) + "\n")
            handle.writelines("\t".join(str(row[column]) for column in self._columns) + "\n"
                              for row in ordered)
        os.replace(temporary, self._path)

    def __enter__(self) -> ResultsStream:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self._bar.close()
        if self._handle is not None:
            self._handle.close()
            try:
                if exc_type is None and not set(self.indices) - {int(r["idx"]) for r in self.rows}:
                    self._sort_file()
            finally:
                release(self._path)
