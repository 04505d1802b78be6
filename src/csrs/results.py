"""Result files: the per-example TSV that certification writes and every report reads.

Torch-free, so that metrics and reports load without the model stack.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "ResultsFileError", "read_results"]

# Cohen's columns first (idx label predict radius correct), then the cost-sensitive certificate.
COLUMNS = ("idx", "label", "predict", "radius", "correct", "sensitive", "cs_predict",
           "cs_costly", "r1", "r2", "cs_radius", "p_a_lower", "p_b_upper", "time")


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
    for line in lines[1:-1]:  # the part after the last newline is unfinished by definition
        fields = line.decode("utf-8").rstrip("\r").split("\t")
        if len(fields) != len(header):
            break
        complete.append(dict(zip(header, fields, strict=True)))
        good_bytes += len(line) + 1
    if repair and good_bytes < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(good_bytes)
            handle.flush()
            os.fsync(handle.fileno())
    return complete
