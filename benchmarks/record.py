"""Where benchmark results go: CSVs under docs/results/ (which scripts/tables.py renders into
BENCHMARKS.md) and a row per file in docs/results/provenance.csv saying which command, machine,
torch build and commit made it. Each benchmark takes ``--record`` to write them; without it, it
only prints.
"""

from __future__ import annotations

import csv
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path("docs/results")
PROVENANCE_COLUMNS = ("file", "command", "machine", "torch", "python", "wall_s", "cpu_s",
                      "commit")


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def machine_text() -> str:
    """"<CPU model>, N cores, M GiB, no GPU" (or the GPU's name)."""
    cpu = cpu_name()
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        memory = f", {kib / 2**20:.0f} GiB"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu.replace('(R)', '')}, {os.cpu_count()} cores{memory}, {gpu}"


def _commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        # Changes to the result files themselves do not change what made them.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!docs/results", ":!BENCHMARKS.md"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"
    return value


def write(name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *,
          module: str, wall_s: float, folder: Path = RESULTS) -> Path:
    """Write ``rows`` to ``folder/name`` and record their provenance (``python -m module``
    with this process's arguments); return the CSV's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(column, "")) for column in columns])
    _provenance(folder / "provenance.csv", {
        "file": str(path), "command": " ".join(["python -m", module, *sys.argv[1:]]),
        "machine": machine_text(), "torch": torch.__version__,
        "python": platform.python_version(), "wall_s": f"{wall_s:.0f}",
        "cpu_s": f"{time.process_time():.0f}", "commit": _commit()})
    return path


def _provenance(path: Path, row: Mapping[str, str]) -> None:
    """Replace ``row['file']``'s line of the provenance table (or add it), keeping its columns."""
    rows, columns = [], list(PROVENANCE_COLUMNS)
    if path.exists():
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns += [c for c in reader.fieldnames or () if c not in columns]
            rows = [r for r in reader if r["file"] != row["file"]]
    rows.append(dict(row))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
