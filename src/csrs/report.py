"""Tables (markdown, CSV) and plots (PNG) from result files."""

from __future__ import annotations

import csv
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from csrs.costs import CostMatrix
from csrs.metrics import (
    METRICS,
    DecisionArrays,
    ResultArrays,
    arrays_of,
    curves,
    per_class,
    summarize,
)
from csrs.results import (
    COHEN_LOG,
    CONVEX,
    SEQUENTIAL,
    ResultsFile,
    ResultsFileError,
    format_float,
)

__all__ = ["format_value", "markdown_table", "plot_cost_curves", "plot_curves", "provenance",
           "report_eps", "results_table", "summary_rows", "write_csv", "write_report"]

LABELS = {"acc": "Acc", "rob_cs": "Rob_cs", "rob_cs_std": "Rob_cs^(std)",
          "rob_non_std": "Rob_non^(std)", "clean_cost": "clean cost", "cert_cost": "Cost_cert",
          "cert_cost_sensitive": "Cost_cert (sensitive)", "recall": "seed recall",
          "precision": "seed precision", "mean_samples": "mean samples",
          "median_samples": "median samples"}
# Costs: the smallest value is the best one.
LOWER_IS_BETTER = frozenset({"clean_cost", "cert_cost", "cert_cost_sensitive"})
ROBUSTNESS_COLUMNS = ("acc", "rob_cs", "rob_cs_std", "rob_non_std")
COST_COLUMNS = ("clean_cost", "cert_cost", "cert_cost_sensitive")
TITLE_WIDTH = 60  # characters per title line: longer titles wrap instead of being cut off


def format_value(value: Any, column: str = "") -> str:
    """A table cell: three decimals, whole numbers of samples, "-" for NaN."""
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if column.endswith("samples") else f"{value:.3f}"
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
            text = format_value(row.get(column, float("nan")), column)
            if column in best and row.get(column) == best[column]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]],
              columns: Sequence[str]) -> Path:
    """Write ``rows`` to a CSV with the given columns: floats as the shortest text that reads
    back to the same number (a table rounds them, never the file), NaN as an empty cell."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(column, "")) for column in columns])
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else format_float(value)
    return value


Arrays = ResultArrays | DecisionArrays


def _arrays(results: Mapping[str, Sequence[Mapping[str, Any]] | Arrays]) -> dict[str, Arrays]:
    return {name: rows if isinstance(rows, (ResultArrays, DecisionArrays))
            else ResultArrays.from_rows(rows) for name, rows in results.items()}


def _eps_max(arrays: Mapping[str, Arrays]) -> float:
    """The largest radius worth showing: past every finite radius and every decided eps."""
    largest = [0.5]
    for result in arrays.values():
        if isinstance(result, DecisionArrays):
            largest.append(max(result.grid))
        else:
            for values in (result.radius, result.cs_radius):
                finite = values[np.isfinite(values)]
                if finite.size:
                    largest.append(float(finite.max()))
    return max(largest) * 1.05


def _lines(arrays: Mapping[str, Arrays], metric: str, grid: np.ndarray
           ) -> list[tuple[list[str], np.ndarray, np.ndarray, bool]]:
    """One (names, eps, values, decided) line per distinct curve of ``metric``: results whose
    curves are identical share a line, so that none hides under another unnamed. ``decided``
    lines hold the decisions at a grid of eps (drawn as steps through their points)."""
    lines: list[tuple[list[str], np.ndarray, np.ndarray, bool]] = []
    for name, result in arrays.items():
        decided = isinstance(result, DecisionArrays)
        values = curves(result, None if decided else grid)
        eps, curve = values["eps"], values[metric]
        if np.isnan(curve).all():
            continue
        for line in lines:
            if line[3] == decided and np.array_equal(line[1], eps) and \
                    np.array_equal(line[2], curve, equal_nan=True):
                line[0].append(name)
                break
        else:
            lines.append(([name], eps, curve, decided))
    return lines


def _draw(axis: Any, lines: list[tuple[list[str], np.ndarray, np.ndarray, bool]], *,
          label: str = "", style: str = "-", colors: Mapping[str, str] | None = None) -> None:
    for names, eps, values, decided in lines:
        text = " = ".join(names) + (" (identical)" if len(names) > 1 else "")
        if label:
            text = f"{text}: {label}" if text else label
        color = (colors or {}).get(names[0]) if names else None
        if decided:
            # Decided at grid points: between two of them, the larger one's value is what the
            # decisions guarantee (certified at an eps implies certified below it).
            axis.step(np.concatenate([[0.0], eps]), np.concatenate([values[:1], values]),
                      where="pre", linestyle=style, color=color, label=text)
            axis.plot(eps, values, "o", color=axis.lines[-1].get_color(), markersize=4)
        else:
            axis.plot(eps, values, style, color=color, label=text)


def plot_curves(results: Mapping[str, Sequence[Mapping[str, Any]] | Arrays],
                path: str | Path, *, metrics: Sequence[str] = ("rob_cs", "rob_cs_std",
                                                                "rob_non_std"),
                eps_max: float | None = None, title: str = "") -> Path:
    """Plot certified robustness over eps, one line per (result set, metric), to a PNG; files
    of decisions are drawn as steps through the eps they decided."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arrays = _arrays(results)
    grid = np.linspace(0.0, eps_max or _eps_max(arrays), 200)
    styles = {"rob_cs": "-", "rob_cs_std": "--", "rob_non_std": ":", "acc": "-."}
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = ({name: palette[i % len(palette)] for i, name in enumerate(arrays)}
              if len(arrays) > 1 else None)
    for metric in metrics:
        lines = _lines(arrays, metric, grid)
        if len(arrays) == 1:
            for line in lines:
                line[0].clear()
        _draw(axis, lines, label=LABELS[metric] if len(metrics) > 1 or len(arrays) == 1
              else "", style=styles.get(metric, "-"), colors=colors)
    axis.set_ylim(-0.02, 1.02)
    return _save(figure, [axis], path, ylabel="certified fraction", title=title)


def _save(figure: Any, axes: Sequence[Any], path: str | Path, *, ylabel: str,
          title: str) -> Path:
    """Label the eps axes, add grids and legends, write the figure to ``path`` and close it."""
    import matplotlib.pyplot as plt

    for axis in axes:
        axis.set_xlabel("l2 radius eps")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    axes[0].set_ylabel(ylabel)
    if title:
        figure.suptitle(textwrap.fill(title, TITLE_WIDTH), fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def summary_rows(results: Mapping[str, Sequence[Mapping[str, Any]] | Arrays],
                 eps: float) -> list[dict[str, Any]]:
    """Return one summary dict per named result set, with its name under ``results``."""
    return [{"results": name, **summarize(rows, eps)} for name, rows in results.items()]


def _known(rows: Sequence[Mapping[str, Any]], column: str) -> bool:
    return any(isinstance(row.get(column), float) and not math.isnan(row[column])
               for row in rows)


def metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metric columns worth showing for these summaries: robustness always; the costs
    where the files recorded them; the seed class's recall and precision on two-class tasks;
    the samples where a sequential test spent them."""
    columns = list(ROBUSTNESS_COLUMNS)
    columns += [c for c in COST_COLUMNS if _known(rows, c)]
    columns += [c for c in ("recall", "precision", "mean_samples") if _known(rows, c)]
    return columns


def results_table(results: Mapping[str, Sequence[Mapping[str, Any]] | Arrays],
                  eps: float) -> tuple[list[dict[str, Any]], list[str]]:
    """Return the summary rows at ``eps`` of named result sets and the columns to show."""
    rows = summary_rows(results, eps)
    return rows, ["results", "examples", "sensitive", *metric_columns(rows)]


def plot_cost_curves(results: Mapping[str, Sequence[Mapping[str, Any]] | Arrays],
                     path: str | Path, *, eps_max: float | None = None,
                     title: str = "certified cost over the l2 radius") -> Path | None:
    """Plot the certified cost Cost_cert(eps), over all examples (left) and over the sensitive
    examples (right, on a scale of its own), one line per result set; None when no file
    recorded costs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arrays = _arrays(results)
    grid = np.linspace(0.0, eps_max or _eps_max(arrays), 200)
    panels = [("cert_cost", "all examples"), ("cert_cost_sensitive", "sensitive examples")]
    drawn = [_lines(arrays, metric, grid) for metric, _ in panels]
    if not any(drawn):
        return None
    figure, axes = plt.subplots(1, 2, figsize=(10.0, 4.2))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {name: palette[i % len(palette)] for i, name in enumerate(arrays)}
    for axis, lines, (_, label) in zip(axes, drawn, panels, strict=True):
        _draw(axis, lines, colors=colors)
        axis.set_title(f"mean over {label}", fontsize=9)
    return _save(figure, list(axes), path,
                 ylabel="certified worst-case cost (lower is better)", title=title)


# -- reports of result files ------------------------------------------------------------------
PROVENANCE = ("kind", "cost", "sigma", "n0", "n", "eps_decided", "alpha", "bounds", "seed",
              "max_cost", "checkpoint", "model")
_PROVENANCE_HEADERS = {"eps_decided": "eps decided", "n": "n (max)", "bounds": "bounds / test",
                       "max_cost": "max cost", "model": "model fingerprint"}


def provenance(results: ResultsFile, cost: CostMatrix | None = None) -> dict[str, Any]:
    """What a results file summarises: its kind and the settings it was certified with (its
    settings file; "-" where it recorded none, as for Cohen's logs)."""
    settings = results.settings

    def get(key: str) -> Any:
        value = settings.get(key)
        return "-" if value is None or value == "" else value

    if results.kind == SEQUENTIAL:
        n, bounds = get("n_max"), f"sequential ({get('method')})"
    elif results.kind == CONVEX:
        n, bounds = "-", "convex bounds (no alpha)"
    else:
        n, bounds = get("n"), get("bounds")
    grid = results.grid
    return {"kind": results.kind,
            "cost": cost.spec() if cost is not None else get("cost"),
            "sigma": get("sigma"), "n0": get("n0"), "n": n,
            "eps_decided": ",".join(f"{e:g}" for e in grid) if grid else "every eps",
            "alpha": get("alpha") if results.kind != CONVEX else "-", "bounds": bounds,
            "seed": get("seed"), "max_cost": get("max_cost"),
            "checkpoint": get("checkpoint"), "model": get("model")}


def report_eps(files: Mapping[str, ResultsFile], eps: Sequence[float] | None) -> list[float]:
    """The radii a report shows: ``eps`` (each one decided by every file of decisions), or the
    grid the files of decisions share, or 0.5; refuses what some file cannot give."""
    grids = {name: f.grid for name, f in files.items() if f.grid is not None}
    if eps is None:
        distinct = set(grids.values())
        if len(distinct) > 1:
            named = "; ".join(f"{name}: {', '.join(f'{e:g}' for e in grid)}"
                              for name, grid in grids.items())
            raise ResultsFileError(f"the files decided different radii ({named}); choose "
                                   f"radii they share with --eps")
        return list(distinct.pop()) if distinct else [0.5]
    for name, grid in grids.items():
        missing = [e for e in eps if not any(abs(e - g) <= 1e-12 * max(1, e) for g in grid)]
        if missing:
            raise ResultsFileError(f"eps {missing[0]:g} was not decided in '{name}': it holds "
                                   f"decisions at eps {', '.join(f'{g:g}' for g in grid)} "
                                   f"only")
    return list(eps)


def write_report(files: Mapping[str, ResultsFile], out: str | Path, *,
                 eps: Sequence[float] | None = None, cost: CostMatrix | None = None,
                 compare: bool = False) -> tuple[str, list[Path]]:
    """Summarise named results files of any kind side by side: the metrics table at each eps
    (each file by its own kind), summary.csv (with what each file summarises), per_class.csv,
    the curves and certified-cost curves (PNG) and report.md in ``out``. ``cost`` reads Cohen's
    logs (which hold none) for that cost matrix. ``compare`` draws Rob_cs alone. Returns the
    tables as text and the files written."""
    out = Path(out)
    arrays = {name: arrays_of(f, cost) for name, f in files.items()}
    radii = report_eps(files, eps)
    origin = {name: provenance(f, cost) for name, f in files.items()}
    summaries, text = [], []
    for value in radii:
        rows, columns = results_table(arrays, value)
        for row in rows:
            row.update(origin[row["results"]])
        summaries += rows
        best = [c for c in columns if c in ROBUSTNESS_COLUMNS or c in COST_COLUMNS]
        text += [f"certified robustness at eps = {value:g}",
                 markdown_table(rows, columns, bold_best=best if len(rows) > 1 else ()), ""]
    columns = ["results", "eps", "examples", "sensitive", *metric_columns(summaries),
               *PROVENANCE]
    written = [write_csv(out / "summary.csv", summaries, columns)]
    classes = [{"results": name, "eps": value, **row} for value in radii
               for name, result in arrays.items() for row in per_class(result, value)]
    written.append(write_csv(out / "per_class.csv", classes,
                             ["results", "eps", "label", "examples", "sensitive", *METRICS,
                              "clean_cost"]))
    metrics = ("rob_cs",) if compare else ("rob_cs", "rob_cs_std", "rob_non_std")
    title = "Rob_cs over eps" if compare else "certified robustness over the l2 radius"
    stem = "compare" if compare else "certified"
    curve = plot_curves(arrays, out / f"{stem}_curves.png", metrics=metrics, title=title)
    cost_curve = plot_cost_curves(arrays, out / f"{stem}_cost.png")
    written += [path for path in (curve, cost_curve) if path is not None]
    lines = ["# csrs report", "", "## What the files are", "",
             markdown_table([{"results": name, **origin[name]} for name in files],
                            ["results", *PROVENANCE], headers=_PROVENANCE_HEADERS), "",
             "Acc: certified accuracy (radius > 0); Rob_cs: sensitive examples with a non-costly "
             "prediction certified beyond eps; Rob_cs^(std): the same from the standard radius; "
             "Rob_non^(std): non-sensitive examples correct beyond eps; clean cost: mean "
             "C[y][prediction]; Cost_cert: mean certified worst-case cost within eps (lower is "
             "better). Files of decisions (sequential, convex) give the eps they decided only; "
             "'-' marks what a file cannot give.", ""]
    if any(f.kind == COHEN_LOG for f in files.values()):
        lines += ["Cohen's logs hold the standard radius only: read for a cost matrix, their "
                  "Rob_cs uses it as R1, a lower bound (R2 needs class counts), and their "
                  "certified cost is C[y][prediction] within it and the row's largest cost "
                  "beyond it.", ""]
    lines += ["## Metrics", "", *text,
              *(f"![{path.stem}]({path.name})" for path in written if path.suffix == ".png"), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    written.append(report)
    return "\n".join(text).rstrip(), written
