"""Tables (markdown, CSV) and plots (PNG) from result files."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from csrs.metrics import ResultArrays, curves, summarize

__all__ = ["format_value", "markdown_table", "plot_cost_curves", "plot_curves",
           "results_table", "summary_rows", "write_csv"]

LABELS = {"acc": "Acc", "rob_cs": "Rob_cs", "rob_cs_std": "Rob_cs^(std)",
          "rob_non_std": "Rob_non^(std)", "clean_cost": "clean cost", "cert_cost": "Cost_cert",
          "cert_cost_sensitive": "Cost_cert (sensitive)", "recall": "seed recall",
          "precision": "seed precision"}
# Costs: the smallest value is the best one.
LOWER_IS_BETTER = frozenset({"clean_cost", "cert_cost", "cert_cost_sensitive"})
ROBUSTNESS_COLUMNS = ("acc", "rob_cs", "rob_cs_std", "rob_non_std")
COST_COLUMNS = ("clean_cost", "cert_cost", "cert_cost_sensitive")


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *,
                   headers: Mapping[str, str] | None = None,
                   bold_best: Sequence[str] = ()) -> str:
    """Return a markdown table; in each column of ``bold_best`` the best value is bold (the
    largest, or the smallest for the costs of :data:`LOWER_IS_BETTER`)."""
    headers = {**LABELS, **(headers or {})}
    best = {}
    for column in bold_best:
        values = [r[column] for r in rows if isinstance(r.get(column), float)
                  and not math.isnan(r[column])]
        if values:
            best[column] = min(values) if column in LOWER_IS_BETTER else max(values)
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
    axis.set_ylim(-0.02, 1.02)
    return _save(figure, axis, path, ylabel="certified fraction", title=title)


def _save(figure: Any, axis: Any, path: str | Path, *, ylabel: str, title: str) -> Path:
    """Label the eps axis, add grid and legend, write the figure to ``path`` and close it."""
    import matplotlib.pyplot as plt

    axis.set_xlabel("l2 radius eps")
    axis.set_ylabel(ylabel)
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


def _known(rows: Sequence[Mapping[str, Any]], column: str) -> bool:
    return any(isinstance(row.get(column), float) and not math.isnan(row[column])
               for row in rows)


def metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metric columns worth showing for these summaries: robustness always; the costs
    where the files recorded them; the seed class's recall and precision on two-class tasks."""
    columns = list(ROBUSTNESS_COLUMNS)
    columns += [c for c in COST_COLUMNS if _known(rows, c)]
    columns += [c for c in ("recall", "precision") if _known(rows, c)]
    return columns


def results_table(results: Mapping[str, Sequence[Mapping[str, Any]]],
                  eps: float) -> tuple[list[dict[str, Any]], list[str]]:
    """Return the summary rows at ``eps`` of named result sets and the columns to show."""
    rows = summary_rows(results, eps)
    return rows, ["results", "examples", "sensitive", *metric_columns(rows)]


def plot_cost_curves(results: Mapping[str, Sequence[Mapping[str, Any]] | ResultArrays],
                     path: str | Path, *, eps_max: float | None = None,
                     title: str = "certified cost over the l2 radius") -> Path | None:
    """Plot the certified cost Cost_cert(eps) (solid, over all examples) and over the sensitive
    examples (dashed), one colour per result set; None when no file recorded costs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arrays = {name: rows if isinstance(rows, ResultArrays) else ResultArrays.from_rows(rows)
              for name, rows in results.items()}
    arrays = {name: a for name, a in arrays.items() if not np.isnan(a.cs_cost[a.sensitive]).all()}
    if not arrays:
        return None
    if eps_max is None:
        finite = [a.pair_radii[np.isfinite(a.pair_radii)] for a in arrays.values()]
        eps_max = max([float(v.max()) for v in finite if v.size] + [0.5]) * 1.05
    grid = np.linspace(0.0, eps_max, 200)
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, result) in enumerate(arrays.items()):
        values = curves(result, grid)
        color = colors[i % len(colors)]
        axis.plot(grid, values["cert_cost"], "-", color=color, label=f"{name}: all examples")
        axis.plot(grid, values["cert_cost_sensitive"], "--", color=color,
                  label=f"{name}: sensitive")
    return _save(figure, axis, path, ylabel="certified worst-case cost (mean; lower is better)",
                 title=title)
