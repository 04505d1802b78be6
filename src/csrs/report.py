"""Tables (markdown, CSV) and plots (PNG) from result files."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from csrs.metrics import ResultArrays, curves, summarize

__all__ = ["format_value", "markdown_table", "plot_curves", "summary_rows", "write_csv"]

LABELS = {"acc": "Acc", "rob_cs": "Rob_cs", "rob_cs_std": "Rob_cs^(std)",
          "rob_non_std": "Rob_non^(std)"}


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *,
                   headers: Mapping[str, str] | None = None,
                   bold_best: Sequence[str] = ()) -> str:
    """Return a markdown table; in each column of ``bold_best`` the largest value is bold."""
    headers = {**LABELS, **(headers or {})}
    best = {}
    for column in bold_best:
        values = [r[column] for r in rows if isinstance(r.get(column), float)
                  and not math.isnan(r[column])]
        if values:
            best[column] = max(values)
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    for row in rows:
        cells = []
        for column in columns:
            text = format_value(row.get(column, ""))
            if column in best and row.get(column) == best[column]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]],
              columns: Sequence[str]) -> Path:
    """Write ``rows`` to a CSV with the given columns (floats with 4 decimals)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([f"{row[c]:.4f}" if isinstance(row.get(c), float) else row.get(c, "")
                             for c in columns])
    return path


def plot_curves(results: Mapping[str, Sequence[Mapping[str, Any]] | ResultArrays],
                path: str | Path, *, metrics: Sequence[str] = ("rob_cs", "rob_cs_std",
                                                                "rob_non_std"),
                eps_max: float | None = None, title: str = "") -> Path:
    """Plot certified robustness over eps, one line per (result set, metric), to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arrays = {name: rows if isinstance(rows, ResultArrays) else ResultArrays.from_rows(rows)
              for name, rows in results.items()}
    if eps_max is None:
        finite = [a.cs_radius[np.isfinite(a.cs_radius)] for a in arrays.values()]
        finite += [a.radius[np.isfinite(a.radius)] for a in arrays.values()]
        eps_max = max([float(v.max()) for v in finite if v.size] + [0.5]) * 1.05
    grid = np.linspace(0.0, eps_max, 200)
    styles = {"rob_cs": "-", "rob_cs_std": "--", "rob_non_std": ":", "acc": "-."}
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, result) in enumerate(arrays.items()):
        values = curves(result, grid)
        for metric in metrics:
            label = LABELS[metric] if len(arrays) == 1 else f"{name}: {LABELS[metric]}"
            axis.plot(grid, values[metric], styles.get(metric, "-"),
                      color=colors[i % len(colors)] if len(arrays) > 1 else None, label=label)
    axis.set_xlabel("l2 radius eps")
    axis.set_ylabel("certified fraction")
    axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    if title:
        axis.set_title(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def summary_rows(results: Mapping[str, Sequence[Mapping[str, Any]]],
                 eps: float) -> list[dict[str, Any]]:
    """Return one summary dict per named result set, with its name under ``results``."""
    return [{"results": name, **summarize(rows, eps)} for name, rows in results.items()]

