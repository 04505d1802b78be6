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
from csrs.results import COHEN_LOG, CONVEX, SEQUENTIAL, ResultsFile, ResultsFileError

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
        text += [f"certified robustness at eps = {value:g}",
                 markdown_table(rows, columns, bold_best=columns[3:] if len(rows) > 1 else ()),
                 ""]
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


METHOD_LABELS = {"cohen": "Cohen", "cohen-r": "Cohen-R", "macer": "MACER", "csrs": "CS-RS",
                 "margin-cs": "Margin-CS", "smoothadv": "SmoothAdv",
                 "smoothadv-cs": "SmoothAdv-CS"}


def _setting_groups(items: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list]:
    groups: dict[tuple[str, str], list] = {}
    for item in items:
        groups.setdefault((item["dataset"], item["cost"]), []).append(item)
    return groups


def plot_method_curves(tests: Sequence[Mapping[str, Any]], path: Path, *, metric: str,
                       title: str, eps_max: float) -> Path:
    """Figure 2: one metric over eps, one line per method (the first seed of each)."""
    first = {}
    for test in tests:
        first.setdefault(test["method"], test["rows"])
    return plot_curves({METHOD_LABELS.get(m, m): rows for m, rows in first.items()}, path,
                       metrics=(metric,), eps_max=eps_max, title=title)


def plot_r1_vs_r2(tests: Sequence[Mapping[str, Any]], path: Path, *, title: str,
                  eps_max: float) -> Path:
    """Figure 1a/b: Rob_cs from R1 alone against Rob_cs from max(R1, R2), per method."""
    first = {}
    for test in tests:
        first.setdefault(test["method"], test["rows"])
    return plot_curves({METHOD_LABELS.get(m, m): rows for m, rows in first.items()}, path,
                       metrics=("rob_cs", "rob_cs_std"), eps_max=eps_max, title=title)


def plot_tradeoff(candidates: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Figure 1c: validation Acc against Rob_cs of every tuned candidate, per setting."""
    return plot_candidates(candidates, path, split="validation split")


def _verdict_2025(summary: Sequence[Mapping[str, Any]], *,
                  max_acc_drop: float = 0.02) -> list[str]:
    """One bullet per setting on the 2025 claim: Margin-CS keeps Acc within ``max_acc_drop`` of
    Cohen's and has the lowest certified cost of all methods."""
    bullets = []
    for (dataset, cost), rows in _setting_groups(summary).items():
        by_method = {row["method"]: row for row in rows}
        ours = by_method.get("margin-cs")
        if ours is None or "cohen" not in by_method:
            continue
        drop = by_method["cohen"]["acc"] - ours["acc"]
        parts = [f"Acc {ours['acc']:.3f} vs Cohen's {by_method['cohen']['acc']:.3f} "
                 f"({drop:+.3f} below: {'holds' if drop <= max_acc_drop else 'does not hold'})"]
        costs = {m: r["cert_cost"] for m, r in by_method.items()
                 if isinstance(r.get("cert_cost"), float) and not math.isnan(r["cert_cost"])}
        if "margin-cs" in costs and len(costs) > 1:
            rival = min((m for m in costs if m != "margin-cs"), key=costs.get)
            lowest = costs["margin-cs"] <= costs[rival]
            parts.append(f"certified cost {costs['margin-cs']:.3f} vs {costs[rival]:.3f} for the "
                         f"best other method ({METHOD_LABELS.get(rival, rival)}): "
                         f"{'lowest, holds' if lowest else 'not the lowest, does not hold'}")
        if isinstance(ours.get("recall"), float) and not math.isnan(ours["recall"]):
            parts.append(f"seed-class recall {ours['recall']:.3f} (Cohen "
                         f"{by_method['cohen'].get('recall', float('nan')):.3f})")
        bullets.append(f"- {dataset}, cost '{cost}': " + "; ".join(parts) + ".")
    return bullets


def _verdict(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """One bullet per setting comparing CS-RS with the others on the test split."""
    bullets = []
    for (dataset, cost), rows in _setting_groups(summary).items():
        by_method = {row["method"]: row for row in rows}
        if "csrs" not in by_method:
            continue
        ours = by_method["csrs"]
        parts = []
        blind = [by_method[m] for m in ("cohen", "macer") if m in by_method]
        if blind:
            best = max(blind, key=lambda row: row["rob_cs"])
            gain = ours["rob_cs"] - best["rob_cs"]
            parts.append(f"Rob_cs {ours['rob_cs']:.3f} vs {best['rob_cs']:.3f} for the best "
                         f"cost-blind method ({METHOD_LABELS[best['method']]}): "
                         f"{gain:+.3f} ({'holds' if gain > 0.05 else 'does not hold'})")
        if "cohen-r" in by_method:
            diff = ours["rob_cs"] - by_method["cohen-r"]["rob_cs"]
            parts.append(f"vs Cohen-R {diff:+.3f} ({'holds' if diff >= 0 else 'does not hold'})")
        if "cohen" in by_method:
            drop = by_method["cohen"]["acc"] - ours["acc"]
            parts.append(f"Acc {ours['acc']:.3f}, {drop:+.3f} below Cohen's "
                         f"({'holds' if drop <= 0.03 else 'does not hold'})")
        if parts:
            bullets.append(f"- {dataset}, cost '{cost}': " + "; ".join(parts) + ".")
    return bullets


def _which_examples(count: int, skip: int, max_examples: int | None) -> str:
    """"all 10000 test examples", "every 20th test example (500 examples)"."""
    if skip == 1:
        return f"{'all' if max_examples is None else 'the first'} {count} test examples"
    ordinal = "th" if 10 <= skip % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(skip % 10, "th")
    limit = "" if max_examples is None else f", at most {max_examples}"
    return f"every {skip}{ordinal} test example{limit} ({count} examples)"


def fixed_n_note(row: Mapping[str, Any], certify: Mapping[str, Any]) -> str:
    """Returns the sentence that says where a setting's main table and curves come from: the
    radii at fixed n on the examples that ``certify.skip``/``max_examples`` chose."""
    which = _which_examples(int(row["examples"]), int(certify.get("skip", 1)),
                            certify.get("max_examples"))
    return (f"Fixed n: radii from n = {certify['n']} noise samples per example (n0 = "
            f"{certify['n0']}, alpha = {certify['alpha']}) on {which}, {row['sensitive']} of them "
            f"sensitive; this table, Rob_cs^(std) and the curves come from these")


def adaptive_note(row: Mapping[str, Any], certify: Mapping[str, Any], eps: float) -> str:
    """Returns the sentence that introduces a setting's sequential-test table: the decisions at
    eps on the examples of ``certify.adaptive_skip``/``adaptive_max_examples``."""
    which = _which_examples(int(row["adaptive_examples"]), int(certify.get("adaptive_skip", 1)),
                            certify.get("adaptive_max_examples"))
    return (f"Sequential test (`csrs certify --adaptive`): each example decided at eps = {eps} "
            f"with the same alpha and up to n = {certify['adaptive_n']} samples, stopping as soon "
            f"as the answer is known, on {which}. The paper's tables count the whole test split "
            f"at n = 100,000: compare these numbers with them (Rob_cs^(std) needs radii and is "
            f"in the table above only):")


CANDIDATE_TEST_COLUMNS = ("dataset", "cost", "method", "seed", "hparams", "chosen", "examples",
                          "sensitive", "acc", "rob_cs", "rob_cs_std", "rob_non_std",
                          "adaptive_examples", "adaptive_acc", "adaptive_rob_cs",
                          "adaptive_rob_non_std", "adaptive_mean_samples")


def candidates_test_section(candidates: Sequence[Mapping[str, Any]],
                            out: Path) -> list[str]:
    """Writes ``candidates_test.csv`` and the trade-off plot of every candidate on the test
    split (the paper's Table 5 and Figure 1c; from the sequential test where it ran, as the
    paper's tables); returns the report's lines about them."""
    write_csv(out / "candidates_test.csv", candidates, CANDIDATE_TEST_COLUMNS)
    sequential = all("adaptive_rob_cs" in item for item in candidates)
    lines = ["## Every candidate on the test split (as the paper's Table 5 and Figure 1c)", "",
             "`certify.all_candidates`: each trained candidate certified on the test split as the "
             "chosen ones are (fixed n; " + ("and the sequential test, columns 'seq.'; " if
                                             sequential else "") +
             "the examples as above). The choice (chosen) was made on the validation split "
             "before; these numbers show the sweep, they did not pick the rows above.", ""]
    columns = ["method", "seed", "hparams", "acc", "rob_cs", "rob_cs_std", "rob_non_std"]
    best = ["acc", "rob_cs"]
    if sequential:
        columns += ["adaptive_acc", "adaptive_rob_cs"]
        best += ["adaptive_acc", "adaptive_rob_cs"]
    for (dataset, cost), items in _setting_groups(candidates).items():
        shown = [{**item, "method": METHOD_LABELS.get(item["method"], item["method"]),
                  "chosen": "yes" if item["chosen"] else ""} for item in items]
        lines += [f"### {dataset}, cost '{cost}'", "",
                  markdown_table(shown, [*columns, "chosen"],
                                 headers={"adaptive_acc": "Acc (seq.)",
                                          "adaptive_rob_cs": "Rob_cs (seq.)"},
                                 bold_best=best), ""]
    points = ([{**item, "acc": item["adaptive_acc"], "rob_cs": item["adaptive_rob_cs"]}
               for item in candidates] if sequential else candidates)
    figure = plot_candidates(points, out / "tradeoff_test.png",
                             split="test split, sequential test" if sequential else "test split")
    if figure is not None:
        lines += [f"![trade-off on the test split]({figure.name})", ""]
    return lines


def plot_candidates(candidates: Sequence[Mapping[str, Any]], path: Path, *,
                    split: str) -> Path | None:
    """Figure 1c: Acc against Rob_cs of every candidate (one point per hyperparameter set and
    seed) on ``split`` ("test split"), per setting, Cohen's Acc dashed; None without candidates
    to show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _setting_groups([c for c in candidates if c["method"] != "cohen"])
    if not groups:
        return None
    figure, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 4.0),
                                squeeze=False)
    markers = {"cohen-r": "s", "csrs": "o", "macer": "^"}
    for axis, ((dataset, cost), items) in zip(axes[0], groups.items(), strict=True):
        for method in sorted({c["method"] for c in items}):
            points = [c for c in items if c["method"] == method]
            axis.scatter([c["rob_cs"] for c in points], [c["acc"] for c in points],
                         marker=markers.get(method.partition("@")[0], "x"),
                         label=METHOD_LABELS.get(method, method))
        for reference in (c for c in candidates if c["method"] == "cohen"
                          and (c["dataset"], c["cost"]) == (dataset, cost)):
            axis.axhline(reference["acc"], color="gray", lw=0.8, ls="--")
        axis.set_title(f"{dataset}, cost '{cost}'", fontsize=9)
        axis.set_xlabel(f"Rob_cs ({split})")
        axis.set_ylabel(f"Acc ({split})")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"Each candidate on the {split}\n(dashed: Cohen's Acc)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_experiment_report(out: Path, *, title: str, description: str, sigma: float,
                            eps: float, summary: Sequence[Mapping[str, Any]],
                            tests: Sequence[Mapping[str, Any]],
                            candidates: Sequence[Mapping[str, Any]],
                            columns: Sequence[str],
                            convex: Sequence[Mapping[str, Any]] = (),
                            certify: Mapping[str, Any] | None = None,
                            candidates_test: Sequence[Mapping[str, Any]] = (),
                            diverged: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write summary.csv, candidates.csv, the plots and report.md (tables as the paper's
    Tables 1-3 with the best value of each column in bold); return the report's path.
    With the experiment's ``certify`` options the report says which examples and samples each
    table comes from; ``candidates_test`` adds candidates_test.csv and its section."""
    out = Path(out)
    write_csv(out / "summary.csv", summary, columns)
    if candidates:
        write_csv(out / "candidates.csv", candidates,
                  ["dataset", "cost", "method", "seed", "hparams", "acc", "rob_cs",
                   "rob_cs_std", "rob_non_std"])
    eps_max = max(1.0, 2.5 * eps)
    lines = [f"# {title}", ""]
    if description:
        lines += [description, ""]
    lines += [f"Certified at sigma = {sigma}; robustness counted at eps = {eps} (l2, [0, 1] "
              f"input units). Acc: overall certified accuracy (radius > 0); Rob_cs: sensitive "
              f"examples with a non-costly prediction and max(R1, R2) > eps; Rob_cs^(std): the "
              f"same with the standard radius (Cohen's CERTIFY); Rob_non^(std): non-sensitive "
              f"examples correct with the standard radius > eps. Clean cost: mean of "
              f"C[y][prediction] (an abstention costs the row's largest cost); Cost_cert: mean "
              f"certified worst-case cost kappa(eps) over all examples (and over the sensitive "
              f"ones): no perturbation within eps makes the smoothed classifier predict a class "
              f"that costs more, with probability 1 - alpha; lower is better. Seed recall / "
              f"precision (two-class tasks): of the costly seed class (malignant). Best value "
              f"of each column in bold.", ""]
    test_groups = _setting_groups(tests)
    for (dataset, cost), rows in _setting_groups(summary).items():
        metrics = metric_columns(rows)
        table_columns = ["method", *metrics, "hparams"]
        shown = [{**row, "method": METHOD_LABELS.get(row["method"], row["method"])}
                 for row in rows]
        seeds = max(int(row.get("seeds", 1)) for row in rows)
        lines += [f"## {dataset}, cost '{cost}'", "",
                  (fixed_n_note(rows[0], certify) if certify else
                   f"{rows[0]['examples']} test examples, {rows[0]['sensitive']} sensitive")
                  + (f"; mean over {seeds} seeds" if seeds > 1 else "") + ".", "",
                  markdown_table(shown, table_columns, headers={"hparams": "chosen"},
                                 bold_best=[m for m in metrics
                                            if m not in ("recall", "precision")]), ""]
        if all("adaptive_rob_cs" in row for row in rows):
            lines += [adaptive_note(rows[0], certify, eps) if certify else
                      "Decided at eps by the sequential test (`csrs certify --adaptive`): the "
                      "same alpha, up to `certify.adaptive_n` samples per example (the demo: "
                      "the paper's n = 100,000), stopping as soon as the answer is known:", "",
                      markdown_table(shown, ["method", "adaptive_acc", "adaptive_rob_cs",
                                             "adaptive_rob_non_std", "adaptive_mean_samples"],
                                     headers={"adaptive_acc": "Acc",
                                              "adaptive_rob_cs": "Rob_cs",
                                              "adaptive_rob_non_std": "Rob_non^(std)",
                                              "adaptive_mean_samples": "mean samples"},
                                     bold_best=["adaptive_acc", "adaptive_rob_cs",
                                                "adaptive_rob_non_std"]), ""]
        key = test_groups[(dataset, cost)][0]["key"]
        curve = plot_method_curves(test_groups[(dataset, cost)], out / f"curves_{key}.png",
                                   metric="rob_cs", eps_max=eps_max,
                                   title=f"{dataset}, cost '{cost}': Rob_cs over eps")
        blind = [t for t in test_groups[(dataset, cost)] if t["method"] in ("cohen", "macer")]
        lines += [f"![Rob_cs over eps]({curve.name})", ""]
        if ":" in cost:  # real-valued costs: the certified cost over eps too
            first: dict[str, Any] = {}
            for test in test_groups[(dataset, cost)]:
                first.setdefault(METHOD_LABELS.get(test["method"], test["method"]), test["rows"])
            cost_curve = plot_cost_curves(first, out / f"cost_{key}.png", eps_max=eps_max,
                                          title=f"{dataset}, cost '{cost}': certified cost")
            if cost_curve is not None:
                lines += [f"![certified cost over eps]({cost_curve.name})", ""]
        if blind:
            r1r2 = plot_r1_vs_r2(blind, out / f"r1_vs_r2_{key}.png", eps_max=eps_max,
                                 title=f"{dataset}, cost '{cost}': R1 vs max(R1, R2)")
            lines += [f"![R1 vs max(R1, R2)]({r1r2.name})", ""]
    if convex:
        write_csv(out / "zhang_evans.csv", convex,
                  ["dataset", "cost", "method", "eps", "acc", "rob_cs", "seconds_per_epoch",
                   "peak_rss_mb"])
        for (dataset, cost), rows in _setting_groups(convex).items():
            lines += [f"## Deterministic vs smoothed certificates ({dataset}, cost '{cost}'; "
                      f"as the paper's Table 4)", "",
                      "Zhang & Evans: clean accuracy and the fraction of sensitive examples "
                      "whose convex (dual) bounds prove no costly class within eps, without "
                      "alpha. CS-RS: certified Acc and Rob_cs at the same eps, with alpha. "
                      "Time per training epoch and the peak memory of the training process.",
                      "", markdown_table(rows, ["method", "eps", "acc", "rob_cs",
                                                "seconds_per_epoch", "peak_rss_mb"],
                                         headers={"seconds_per_epoch": "s/epoch",
                                                  "peak_rss_mb": "peak RSS (MB)"}), ""]
    if diverged:
        write_csv(out / "diverged.csv", diverged, ["dataset", "cost", "method", "seed", "hparams"])
        lines += ["## Dropped candidates", "",
                  "Their training diverged (NaN or infinite loss or weights), so they were left "
                  "out of the tuning:", "",
                  *(f"- {d['method']} ({d['hparams']}) on {d['dataset']}, cost '{d['cost']}', "
                    f"seed {d['seed']}" for d in diverged), ""]
    verdict = _verdict(summary)
    if verdict:
        lines += ["## Does the paper's claim hold here?", "",
                  "The bar: CS-RS gives clearly higher Rob_cs than the cost-blind methods "
                  "(Cohen, MACER), at least matches Cohen-R, and keeps Acc within about 3 points "
                  "of Cohen.", "", *verdict, ""]
    verdict_2025 = _verdict_2025(summary)
    if verdict_2025:
        lines += ["## Does the 2025 claim hold here?", "",
                  "The claim of the 2025 version: cost-sensitive robustness without losing "
                  "accuracy. The bar: Margin-CS within 2 points of Cohen's Acc and the lowest "
                  f"certified cost Cost_cert(eps = {eps}) of all methods.", "", *verdict_2025,
                  ""]
    if candidates_test:
        lines += candidates_test_section(candidates_test, out)
    tradeoff = plot_tradeoff(candidates, out / "tradeoff.png")
    if tradeoff is not None:
        lines += ["## Acc vs Rob_cs trade-off (validation split)", "",
                  f"![trade-off]({tradeoff.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
