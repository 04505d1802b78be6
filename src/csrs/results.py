"""Result files: the per-example TSV that certification writes and every report reads.

Torch-free, so that metrics and reports load without the model stack.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from csrs.progress import progress as progress_bar

__all__ = ["COLUMNS", "ResultsFileError", "ResultsStream", "prepare_results", "read_results",
           "release"]

# Cohen's columns first (idx label predict radius correct), then the cost-sensitive certificate
# (Algorithm 1 for Omega_y), then what the certified cost kappa(eps) needs at every eps:
# clean_cost = C[y][predict] (an abstention costs max_k C[y][k]), cs_cost = C[y][c_A], and for
# each costly class k != c_A its pairwise radius and cost, as "k:value" lists.
COLUMNS = ("idx", "label", "predict", "radius", "correct", "sensitive", "cs_predict",
           "cs_costly", "r1", "r2", "cs_radius", "p_a_lower", "p_b_upper", "clean_cost",
           "cs_cost", "pair_radii", "pair_costs", "time")


class ResultsFileError(ValueError):
    """A results file that is missing, foreign, or cannot be resumed with these settings."""


def read_results(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Read a results TSV into a list of row dicts (values as strings).

    A torn last line (no newline, or the wrong number of fields) is ignored; with
    ``repair=True`` it is also cut from the file so that appending continues cleanly.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsFileError(f"results file '{path}' does not exist")
    with open(path, "rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    header = lines[0].decode("utf-8").rstrip("\r").split("\t")
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


def prepare_results(path: str | Path, columns: Sequence[str], settings: Mapping[str, Any],
                    kind: str, *, fingerprint: str | None = None) -> list[dict[str, Any]]:
    """Create a results file with its header, or check and repair one to resume; return its rows.

    The settings are kept beside the file (``<path>.json``). A file with other columns (another
    ``kind`` of run), made with other settings, or made by another model (``fingerprint``, see
    :func:`csrs.certify.model_fingerprint`) is refused, so that one file never mixes
    certificates computed differently; a torn last line is cut off. The file is locked
    (``<path>.lock``) for this process until its :class:`ResultsStream` closes, so that a second
    writer is refused instead of appending every example again.
    """
    path = Path(path)
    meta_path = path.with_name(path.name + ".json")
    settings = dict(settings)
    if fingerprint is not None:
        settings["model"] = fingerprint
    path.parent.mkdir(parents=True, exist_ok=True)
    _lock(path)
    try:
        if path.exists() and path.stat().st_size > 0:
            with path.open(encoding="utf-8") as handle:
                header = tuple(handle.readline().rstrip("\r\n").split("\t"))
            if header != tuple(columns):
                raise ResultsFileError(f"'{path}' has other columns than {kind}; use another "
                                       f"--out to start anew")
            if meta_path.exists():
                _check_settings(path, json.loads(meta_path.read_text()), settings)
            rows = read_results(path, repair=True)
        else:
            path.write_text("\t".join(columns) + "\n", encoding="utf-8")
            rows = []
        meta_path.write_text(json.dumps(settings, indent=2) + "\n")
    except BaseException:
        release(path)
        raise
    return rows


def _check_settings(path: Path, previous: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    if "model" in previous and previous["model"] != settings.get("model"):
        raise ResultsFileError(f"'{path}' holds results of another model (fingerprint "
                               f"{previous['model']}, this one {settings.get('model')}); use "
                               f"another --out to start anew")
    changed = [f"{key}={previous.get(key)!r} (now {value!r})"
               for key, value in settings.items() if key != "model" and previous.get(key) != value]
    if changed:
        raise ResultsFileError(f"'{path}' was made with other settings: {', '.join(changed)}; "
                               f"use another --out to start anew")


# -- one writer per file ------------------------------------------------------------------------
_HELD: set[Path] = set()


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock(path: Path) -> None:
    """Take ``<path>.lock`` for this process; a lock left by a dead process is taken over."""
    lock = _lock_path(path)
    key = lock.resolve()
    if key in _HELD:
        return
    host = socket.gethostname()
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner_host, _, pid_text = lock.read_text().strip().partition(":")
                pid = int(pid_text)
            except (OSError, ValueError):
                owner_host, pid = host, -1
            if owner_host == host and (pid < 0 or not _alive(pid)):
                lock.unlink(missing_ok=True)  # stale: its writer is gone
                continue
            raise ResultsFileError(f"'{path}' is being written by process {pid} on "
                                   f"{owner_host} (lock '{lock}'); wait for it to finish, or "
                                   f"delete the lock if that process is gone") from None
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{host}:{os.getpid()}\n")
        _HELD.add(key)
        return
    raise ResultsFileError(f"could not lock '{path}' ('{lock}' keeps coming back)")


def release(path: str | Path) -> None:
    """Release this process's lock on the results file ``path`` (no-op if not held)."""
    lock = _lock_path(Path(path))
    key = lock.resolve()
    if key in _HELD:
        _HELD.discard(key)
        lock.unlink(missing_ok=True)


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        key.unlink(missing_ok=True)
    _HELD.clear()


class ResultsStream:
    """The rows of a certification run over ``indices``: those already in ``rows`` (read back
    from its file) are done, the others are ``todo``; new rows are appended to the file (when
    ``path`` is given) and flushed, so that a kill loses no finished row, kept in memory, and
    counted on a progress bar.

    Use as a context manager; the file and the bar are closed however the run ends.
    """

    def __init__(self, path: str | Path | None, columns: Sequence[str],
                 rows: list[dict[str, Any]], indices: Sequence[int], *, desc: str,
                 progress: bool) -> None:
        self.rows = rows
        self.indices = list(indices)
        done = {int(row["idx"]) for row in rows}
        self.todo = [index for index in self.indices if index not in done]
        self._columns = columns
        self._path = path
        self._handle = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115
        self._bar = progress_bar(total=len(self.indices),
                                 initial=len(self.indices) - len(self.todo), unit="ex", desc=desc,
                                 disable=not progress)

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

    def __enter__(self) -> ResultsStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.close()
        if self._handle is not None:
            self._handle.close()
            release(self._path)
