"""The experiment's report: summary.csv, candidates.csv, report.md and the plots.

report.md first says what it summarises (each cost matrix, sigma, eps, the seeds, the training
schedule, the certification budget and bounds, how candidates were chosen, what "sd" is), then
gives per setting the test split's table as the paper's Tables 1-3 (mean over seeds, best value
of each column in bold), the curves, and the verdicts on both papers' claims, each saying which
certification its numbers come from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csrs.costs import CostMatrix
from csrs.experiment.aggregate import SD_DDOF, RunResult
from csrs.experiment.config import ExperimentConfig, Setting
from csrs.experiment.plots import (
    plot_candidates,
    plot_method_cost,
    plot_method_curves,
    plot_r1_vs_r2,
)
from csrs.experiment.verdict import method_label, verdict_2023, verdict_2025
from csrs.report import markdown_table, metric_columns, write_csv

__all__ = ["CANDIDATE_COLUMNS", "CANDIDATE_TEST_COLUMNS", "SUMMARY_COLUMNS", "Outcome",
           "write_experiment_report"]

SUMMARY_COLUMNS = ("dataset", "cost", "method", "seeds", "acc", "acc_sd", "rob_cs", "rob_cs_sd",
                   "cert_cost", "cert_cost_sd", "rob_cs_std", "rob_non_std", "clean_cost",
                   "cert_cost_sensitive", "recall", "precision", "hparams", "examples",
                   "sensitive", "adaptive_acc", "adaptive_acc_sd", "adaptive_rob_cs",
                   "adaptive_rob_cs_sd", "adaptive_rob_cs_std", "adaptive_rob_non_std",
                   "adaptive_cert_cost", "adaptive_mean_samples",
                   "adaptive_examples", "seed_values", "eps", "sigma", "n0", "n", "alpha",
                   "bounds", "cost_matrix", "results_files", "checkpoints")
CANDIDATE_COLUMNS = ("dataset", "cost", "method", "seed", "hparams", "acc", "rob_cs",
                     "rob_cs_std", "rob_non_std", "clean_cost", "cert_cost", "chosen", "reason")
CANDIDATE_TEST_COLUMNS = ("dataset", "cost", "method", "seed", "hparams", "chosen", "examples",
                          "sensitive", "acc", "rob_cs", "rob_cs_std", "rob_non_std",
                          "cert_cost", "adaptive_examples", "adaptive_acc", "adaptive_rob_cs",
                          "adaptive_rob_non_std", "adaptive_mean_samples")
_SELECT = {"rob_cs": "the highest validation Rob_cs", "cert_cost": "the lowest validation "
           "certified cost Cost_cert(eps) (matched accuracy)"}


@dataclass
class Outcome:
    """What the stages produced: the summary (means over seeds), every test certification, the
    validation scores of the candidates, the Zhang & Evans rows, the dropped candidates and
    each setting's cost matrix."""

    summary: list[dict[str, Any]]
    tests: list[RunResult]
    candidates: list[dict[str, Any]] = field(default_factory=list)
    convex: list[dict[str, Any]] = field(default_factory=list)
    diverged: list[dict[str, Any]] = field(default_factory=list)
    costs: dict[tuple[str, str], CostMatrix] = field(default_factory=dict)


def _by_setting(items: Sequence[Any]) -> dict[tuple[str, str], list]:
    groups: dict[tuple[str, str], list] = {}
    for item in items:
        key = (item.dataset, item.cost) if isinstance(item, RunResult) else (
            item["dataset"], item["cost"])
        groups.setdefault(key, []).append(item)
    return groups


def _relative(path: Path | None, out: Path) -> str:
    """``path`` relative to the output directory where it lies inside it."""
    if path is None:
        return "-"
    try:
        return str(Path(path).relative_to(out))
    except ValueError:
        return str(path)


def _which_examples(count: int, skip: int, max_examples: int | None) -> str:
    """"all 10000 test examples", "every 20th test example (500 examples)"."""
    if skip == 1:
        return f"{'all' if max_examples is None else 'the first'} {count} test examples"
    ordinal = "th" if 10 <= skip % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(skip % 10, "th")
    limit = "" if max_examples is None else f", at most {max_examples}"
    return f"every {skip}{ordinal} test example{limit} ({count} examples)"


def _fixed_n_note(row: Mapping[str, Any], certify: Mapping[str, Any]) -> str:
    which = _which_examples(int(row["examples"]), certify["skip"], certify["max_examples"])
    return (f"Fixed n: radii from n = {certify['n']} noise samples per example (n0 = "
            f"{certify['n0']}, alpha = {certify['alpha']}, bounds '{certify['bounds']}') on "
            f"{which}, {row['sensitive']} of them sensitive; this table and Rob_cs^(std) come from "
            f"these (and the curves, unless the sequential test's grid draws them)")


def _grid_text(certify: Mapping[str, Any]) -> str:
    return ", ".join(f"{eps:g}" for eps in certify["adaptive_eps"])


def _adaptive_note(row: Mapping[str, Any], certify: Mapping[str, Any], eps: float) -> str:
    which = _which_examples(int(row["adaptive_examples"]), certify["adaptive_skip"],
                            certify["adaptive_max_examples"])
    return (f"Sequential test (`csrs certify --adaptive --eps {_grid_text(certify)}`): one "
            f"test per example decides every radius {_grid_text(certify)} at the same alpha, "
            f"with up to n = {certify['adaptive_n']} samples, stopping as soon as the answers are "
            f"known, on {which}; here at eps = {eps}. The paper's tables count the whole test "
            f"split at n = 100,000: compare these numbers with them (Cost_cert from decisions is "
            f"exact for 0/1 costs only; '-' otherwise):")


def _scope(config: ExperimentConfig, outcome: Outcome) -> list[str]:
    """The section that says what the report summarises."""
    seeds = config.seeds
    train = ", ".join(f"{key} {value}" for key, value in config.train.items()
                      if value is not None)
    tuning, certify = config.tuning, config.certify
    lines = ["## What this report summarises", "",
             "- Settings (cost matrices as specs that `csrs certify --cost` reads back):"]
    for setting in config.settings:
        matrix = outcome.costs.get((setting.dataset, setting.cost))
        described = f" = `{matrix.spec()}`: {matrix}" if matrix is not None else ""
        lines.append(f"  - {setting.dataset}, cost '{setting.cost}'{described}")
    lines += [
        f"- Noise sigma = {config.sigma} (training and certification); robustness counted at "
        f"eps = {config.eps} (l2, [0, 1] input units).",
        (f"- Seeds {', '.join(map(str, seeds))}: each trains every method anew; tables give the "
         f"mean over seeds and 'sd', the sample standard deviation over seeds (ddof = "
         f"{SD_DDOF})." if len(seeds) > 1 else
         f"- Seed {seeds[0]}: one seed, so no spread over seeds."),
        f"- Training: {train} (unset settings: each method's defaults, see `csrs train "
        f"--help`); every method on the same {1 - tuning['val_fraction']:.0%} of the training "
        f"split.",
        f"- Test split, fixed n: n0 = {certify['n0']}, n = {certify['n']}, alpha = "
        f"{certify['alpha']}, bounds '{certify['bounds']}', noise seed 0."
        + (f" Sequential test: up to {certify['adaptive_n']} samples, deciding eps = "
           f"{_grid_text(certify)}." if certify["adaptive_n"] else ""),
    ]
    if tuning["val_fraction"] > 0:
        lines.append(
            f"- Choice of each grid's candidate on the validation split "
            f"({tuning['val_fraction']:.0%} of the training split; n0 = {tuning['n0']}, "
            f"n = {tuning['n']}, noise seed 1; "
            f"never the test split): {_SELECT[tuning['select']]} among the candidates whose "
            f"validation Acc is within {tuning['max_acc_drop']} of Cohen's; the most accurate "
            f"where none is (candidates.csv gives each choice's reason).")
    lines += [
        "- Metrics: Acc, certified accuracy of all examples (radius > 0); Rob_cs, sensitive "
        "examples with a non-costly prediction and max(R1, R2) > eps; Rob_cs^(std), the same "
        "with the standard radius (Cohen's CERTIFY); Rob_non^(std), non-sensitive examples "
        "correct with the standard radius > eps; clean cost, mean of C[y][prediction] (an "
        "abstention costs the row's largest cost); Cost_cert, mean certified worst-case cost "
        "kappa(eps) over all examples (and over the sensitive ones): with probability 1 - alpha "
        "no perturbation within eps makes the smoothed classifier predict a class that costs "
        "more; lower is better. Seed recall / precision (two-class tasks): of the costly seed "
        "class. Best value of each column in bold.", ""]
    return lines


def _setting_section(config: ExperimentConfig, outcome: Outcome, out: Path,
                     rows: list[dict[str, Any]], tests: list[RunResult]) -> list[str]:
    from csrs.results import read_results

    dataset, cost = rows[0]["dataset"], rows[0]["cost"]
    eps_max = max(1.0, 2.5 * config.eps)
    seeds = max(int(row["seeds"]) for row in rows)
    metrics = metric_columns(rows)
    columns = ["method"]
    for metric in metrics:
        columns += [metric, f"{metric}_sd"] if seeds > 1 and f"{metric}_sd" in rows[0] \
            else [metric]
    columns.append("hparams")
    shown = [{**row, "method": method_label(row["method"])} for row in rows]
    lines = [f"## {dataset}, cost '{cost}'", "",
             _fixed_n_note(rows[0], config.certify)
             + (f"; mean over {seeds} seeds" if seeds > 1 else "") + ".", "",
             markdown_table(shown, columns,
                            headers={"hparams": "chosen", **{c: "sd" for c in columns
                                                             if c.endswith("_sd")}},
                            bold_best=[m for m in metrics if m not in ("recall", "precision")]),
             ""]
    if all("adaptive_rob_cs" in row for row in rows):
        lines += [_adaptive_note(rows[0], config.certify, config.eps), "",
                  markdown_table(shown, ["method", "adaptive_acc", "adaptive_rob_cs",
                                         "adaptive_rob_cs_std", "adaptive_rob_non_std",
                                         "adaptive_cert_cost", "adaptive_mean_samples"],
                                 headers={"adaptive_acc": "Acc", "adaptive_rob_cs": "Rob_cs",
                                          "adaptive_rob_cs_std": "Rob_cs^(std)",
                                          "adaptive_rob_non_std": "Rob_non^(std)",
                                          "adaptive_cert_cost": "Cost_cert",
                                          "adaptive_mean_samples": "mean samples"},
                                 bold_best=["adaptive_acc", "adaptive_rob_cs",
                                            "adaptive_rob_non_std"]), ""]
    chosen = [{"method": t.method, "rows": read_results(t.path)} for t in tests if t.chosen]
    key = Setting(dataset, cost).key
    grid_curves = len(config.certify["adaptive_eps"]) > 1 and all(
        t.adaptive is not None for t in tests if t.chosen)
    if grid_curves:  # the curves from the sequential test's grid, on its examples
        curve = plot_method_curves(
            [{"method": t.method, "rows": t.adaptive["arrays"]} for t in tests if t.chosen],
            out / f"curves_{key}.png", metric="rob_cs", eps_max=eps_max,
            title=f"{dataset}, cost '{cost}': Rob_cs at eps {_grid_text(config.certify)} "
                  f"(sequential test)")
        lines += [f"The Rob_cs curves come from the sequential test at eps "
                  f"{_grid_text(config.certify)} (first seed); R1 vs max(R1, R2) from the "
                  f"fixed-n radii.", ""]
    else:
        curve = plot_method_curves(chosen, out / f"curves_{key}.png", metric="rob_cs",
                                   eps_max=eps_max,
                                   title=f"{dataset}, cost '{cost}': Rob_cs over eps")
    lines += [f"![Rob_cs over eps]({curve.name})", ""]
    matrix = outcome.costs.get((dataset, cost))
    if matrix is not None and not matrix.is_binary:  # real costs: the certified cost too
        cost_curve = plot_method_cost(chosen, out / f"cost_{key}.png", eps_max=eps_max,
                                      title=f"{dataset}, cost '{cost}': certified cost")
        if cost_curve is not None:
            lines += [f"![certified cost over eps]({cost_curve.name})", ""]
    blind = [test for test in chosen if test["method"] in ("cohen", "macer")]
    if blind:
        r1r2 = plot_r1_vs_r2(blind, out / f"r1_vs_r2_{key}.png", eps_max=eps_max,
                             title=f"{dataset}, cost '{cost}': R1 vs max(R1, R2)")
        lines += [f"![R1 vs max(R1, R2)]({r1r2.name})", ""]
    return lines


def _convex_section(convex: list[dict[str, Any]], out: Path) -> list[str]:
    write_csv(out / "zhang_evans.csv", convex, ["dataset", "cost", "method", "eps", "acc",
                                                 "rob_cs", "seconds_per_epoch", "peak_rss_mb"])
    lines = []
    for (dataset, cost), rows in _by_setting(convex).items():
        lines += [f"## Deterministic vs smoothed certificates ({dataset}, cost '{cost}'; as "
                  f"the paper's Table 4)", "",
                  "Zhang & Evans: clean accuracy and the fraction of sensitive examples whose "
                  "convex (dual) bounds prove no costly class within eps, without alpha. CS-RS: "
                  "certified Acc and Rob_cs at the same eps from its fixed-n test results (first "
                  "seed), with alpha. Time per training epoch and the peak memory of the "
                  "training process ('-': it ran in other processes).", "",
                  markdown_table(rows, ["method", "eps", "acc", "rob_cs", "seconds_per_epoch",
                                        "peak_rss_mb"],
                                 headers={"seconds_per_epoch": "s/epoch",
                                          "peak_rss_mb": "peak RSS (MB)"}), ""]
    return lines


def _verdict_section(config: ExperimentConfig, summary: list[dict[str, Any]]) -> list[str]:
    seeds = len(config.seeds)
    source = ("From the fixed-n certification of the test split (each setting's first table)"
              + (f", mean ± sd over {seeds} seeds; a difference counts only where it exceeds "
                 f"the spread over seeds (|mean difference| > sd_a + sd_b)" if seeds > 1
                 else ", one seed: no spread over seeds to compare with") + ".")
    lines = []
    verdict = verdict_2023(summary)
    if verdict:
        lines += ["## Does the paper's claim hold here?", "",
                  "The bar: CS-RS gives Rob_cs more than 0.05 above the cost-blind methods' "
                  "(Cohen, MACER), at least Cohen-R's, and keeps Acc within 0.03 of Cohen's. "
                  + source, "", *verdict, ""]
    verdict = verdict_2025(summary)
    if verdict:
        lines += ["## Does the 2025 claim hold here?", "",
                  "The claim of the 2025 version: cost-sensitive robustness without losing "
                  "accuracy. The bar: Margin-CS within 0.02 of Cohen's Acc and the lowest "
                  f"certified cost Cost_cert(eps = {config.eps}) of all methods. " + source, "",
                  *verdict, ""]
    return lines


def _candidates_test_section(tests: list[RunResult], out: Path) -> list[str]:
    """candidates_test.csv and the trade-off of every candidate on the test split (the paper's
    Table 5 and Figure 1c; from the sequential test where it ran, as the paper's tables)."""
    items = [{"dataset": t.dataset, "cost": t.cost, "method": t.method, "seed": t.seed,
              "hparams": t.hparams, "chosen": t.chosen, **t.summary,
              **{f"adaptive_{key}": value for key, value in (t.adaptive or {}).items()}}
             for t in tests]
    write_csv(out / "candidates_test.csv", items, CANDIDATE_TEST_COLUMNS)
    sequential = all(t.adaptive is not None for t in tests)
    lines = ["## Every candidate on the test split (as the paper's Table 5 and Figure 1c)", "",
             "`certify.all_candidates`: each trained candidate certified on the test split as the "
             "chosen ones are (fixed n; " + ("and the sequential test, columns 'seq.'; "
                                             if sequential else "")
             + "the examples as above). The choice (chosen) was made on the validation split "
             "before; these numbers show the sweep, they did not pick the rows above.", ""]
    columns = ["method", "seed", "hparams", "acc", "rob_cs", "rob_cs_std", "rob_non_std"]
    best = ["acc", "rob_cs"]
    if sequential:
        columns += ["adaptive_acc", "adaptive_rob_cs"]
        best += ["adaptive_acc", "adaptive_rob_cs"]
    for (dataset, cost), group in _by_setting(items).items():
        shown = [{**item, "method": method_label(item["method"]),
                  "chosen": "yes" if item["chosen"] else ""} for item in group]
        lines += [f"### {dataset}, cost '{cost}'", "",
                  markdown_table(shown, [*columns, "chosen"],
                                 headers={"adaptive_acc": "Acc (seq.)",
                                          "adaptive_rob_cs": "Rob_cs (seq.)"},
                                 bold_best=best), ""]
    points = ([{**item, "acc": item["adaptive_acc"], "rob_cs": item["adaptive_rob_cs"]}
               for item in items] if sequential else items)
    figure = plot_candidates(points, out / "tradeoff_test.png", x="rob_cs",
                             split="test split, sequential test" if sequential else "test split")
    if figure is not None:
        lines += [f"![trade-off on the test split]({figure.name})", ""]
    return lines


def write_experiment_report(out: Path, config: ExperimentConfig, outcome: Outcome) -> Path:
    """Writes summary.csv, candidates.csv, the plots and report.md; returns the report's path."""
    out = Path(out)
    certify = config.certify
    # As text: write_csv rounds floats to 4 decimals, which would turn alpha = 1e-5 into 0.
    constants = {"eps": repr(config.eps), "sigma": repr(config.sigma), "n0": certify["n0"],
                 "n": certify["n"], "alpha": repr(certify["alpha"]), "bounds": certify["bounds"]}
    write_csv(out / "summary.csv", [
        {**row, **constants, "cost_matrix": (outcome.costs[row["dataset"], row["cost"]].spec()
                                             if (row["dataset"], row["cost"]) in outcome.costs
                                             else ""),
         **{key: " ".join(_relative(path, out) for path in row.get(key, []))
            for key in ("results_files", "checkpoints")}}
        for row in outcome.summary], SUMMARY_COLUMNS)
    if outcome.candidates:
        write_csv(out / "candidates.csv", outcome.candidates, CANDIDATE_COLUMNS)
    lines = [f"# {config.name}", ""]
    if config.description:
        lines += [config.description, ""]
    lines += _scope(config, outcome)
    tests = _by_setting(outcome.tests)
    for (dataset, cost), rows in _by_setting(outcome.summary).items():
        lines += _setting_section(config, outcome, out, rows, tests[dataset, cost])
    if outcome.convex:
        lines += _convex_section(outcome.convex, out)
    if outcome.diverged:
        write_csv(out / "diverged.csv", outcome.diverged,
                  ["dataset", "cost", "method", "seed", "hparams", "reason"])
        lines += ["## Dropped candidates", "",
                  "Their training diverged (NaN or infinite loss or weights), so they were left "
                  "out of the tuning:", "",
                  *(f"- {d['method']} ({d['hparams']}) on {d['dataset']}, cost '{d['cost']}', "
                    f"seed {d['seed']}" for d in outcome.diverged), ""]
    lines += _verdict_section(config, outcome.summary)
    if certify["all_candidates"]:
        lines += _candidates_test_section(outcome.tests, out)
    for x, name, what in (("rob_cs", "tradeoff.png", "Acc vs Rob_cs"),
                          ("cert_cost", "tradeoff_cost.png", "Acc vs certified cost")):
        figure = plot_candidates(outcome.candidates, out / name, x=x, split="validation split")
        if figure is not None:
            lines += [f"## {what} of every candidate (validation split)", "",
                      f"![{what}]({figure.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
