"""Copy the 2025 comparison's results from a run of `csrs experiment` into docs/results/.

    python scripts/comparison_2025.py RUN_DIR [--time-log LOG --commit SHA]

reads RUN_DIR/summary.csv (experiments/small/comparison_2025.toml's run) and writes

- ``docs/results/comparison_2025.csv``: the summary's rows with the columns below, each cell
  copied as the run wrote it (never re-typed, never rounded);
- ``docs/results/comparison_2025_verdict.csv``: each claim's comparisons per setting, computed
  from those rows (:func:`verdict_rows`; ``tests/test_docs.py`` recomputes them);
- ``docs/results/comparison_*.png``: the validation trade-off plots and the test split's curves;
- with ``--time-log`` (the output of ``/usr/bin/time -v``, as the run's log holds it) and
  ``--commit`` (the commit the run was made at): the run's row of
  ``docs/results/provenance.csv``, with this machine's CPU, cores, memory, torch and python.

The claims and their bars are those of the experiment's report (:mod:`csrs.experiment.verdict`:
a gain of Rob_cs over 0.05 and Acc within 0.03 of Cohen's for CS-RS; Acc within 0.02 of Cohen's
and the lowest certified cost for Margin-CS), with the spread over seeds judged as there. Where
this table differs from the report, its ``test`` column says how: the cost-blind methods are
all of :data:`csrs.experiment.config.COST_BLIND` (the report's 2023 verdict leaves SmoothAdv
out); each rival is also taken at matched accuracy, among the methods within the claim's
accuracy budget of Cohen's; a method's rivals are the rows of the other methods (one reading of
Margin-CS is no rival of the other); and CS-RS against Cohen-R is left to the main table. Each
claim is tested for every row of its method, variants included (``csrs@per-draw``,
``margin-cs@top``).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
SUMMARY = RESULTS / "comparison_2025.csv"
VERDICT = RESULTS / "comparison_2025_verdict.csv"
PROVENANCE = RESULTS / "provenance.csv"

COLUMNS = ("dataset", "cost", "method", "seeds", "acc", "acc_sd", "rob_cs", "rob_cs_sd",
           "cert_cost", "cert_cost_sd", "rob_cs_std", "clean_cost", "hparams", "examples",
           "sensitive", "seed_values")
VERDICT_COLUMNS = ("claim", "dataset", "cost", "method", "test", "value", "value_sd", "against",
                   "other", "other_sd", "difference", "spread", "bar", "beyond_spread",
                   "outcome")
# The cost-blind methods (csrs.experiment.config.COST_BLIND; repeated so that the verdict can be
# recomputed without importing the library, and checked against it by the tests).
COST_BLIND = ("cohen", "macer", "smoothadv")
# The bars of csrs.experiment.verdict: the 2023 claim's Rob_cs gain and accuracy budget, the
# 2025 claim's accuracy budget.
GAIN_BAR, ACC_DROP_2023, ACC_DROP_2025 = 0.05, 0.03, 0.02
# The figures: (file in the run directory, name under docs/results/).
FIGURES = (
    ("tradeoff.png", "comparison_tradeoff.png"),
    ("tradeoff_cost.png", "comparison_tradeoff_cost.png"),
    ("curves_digits_3.png", "comparison_curves_digits_3.png"),
    ("curves_breast-cancer_malignanttobenign.png", "comparison_curves_breast_cancer.png"),
    ("cost_digits_3to5x10_8x4.png", "comparison_cost_digits_graded.png"),
    ("cost_breast-cancer_malignanttobenignx10+benigntomalignantx1.png",
     "comparison_cost_breast_cancer_10to1.png"),
)


def base(method: str) -> str:
    return method.partition("@")[0]


def _float(text: str) -> float | None:
    return float(text) if text.strip() else None


def _compare(ours: Mapping[str, str], other: Mapping[str, str], metric: str, test: str,
             bar: str, passes: bool, *, gain: bool) -> dict[str, object]:
    """One comparison, as csrs.experiment.verdict judges it: differences rounded to the three
    decimals shown; a gain holds when it clears its bar and the spread over seeds (sd_a + sd_b),
    "on the means only" when it clears the bar alone; a bound on a loss holds when it is met."""
    value, against = float(ours[metric]), float(other[metric])
    sds = (_float(ours.get(f"{metric}_sd", "")), _float(other.get(f"{metric}_sd", "")))
    spread = sds[0] + sds[1] if None not in sds else None
    beyond = (round(abs(value - against), 3) > round(spread, 3)) if spread is not None else None
    if not passes:
        outcome = "does not hold"
    elif gain and beyond is False:
        outcome = "holds on the means only"
    else:
        outcome = "holds"
    return {"method": ours["method"], "test": test, "value": value, "value_sd": sds[0],
            "against": other["method"], "other": against, "other_sd": sds[1],
            "difference": value - against, "spread": spread, "bar": bar,
            "beyond_spread": "" if beyond is None else ("yes" if beyond else "no"),
            "outcome": outcome}


def _known(row: Mapping[str, str], metric: str) -> bool:
    value = _float(row.get(metric, ""))
    return value is not None and not math.isnan(value)


def _within(row: Mapping[str, str], cohen: Mapping[str, str] | None, budget: float) -> bool:
    """Whether a row's mean Acc is at most ``budget`` below Cohen's (at three decimals)."""
    return cohen is None or round(float(cohen["acc"]) - float(row["acc"]), 3) <= budget


def verdict_rows(summary: Sequence[Mapping[str, str]]) -> list[dict[str, object]]:
    """The comparisons behind both claims, per setting (summary rows as read from the CSV).

    Each claim's rival is taken twice: among all the methods it names, and among those whose
    mean Acc is within the claim's accuracy budget of Cohen's (matched accuracy), so that a
    method that collapsed to one class (and certifies every example of that class) is also
    compared with what a practitioner would deploy.

    2023, for each CS-RS row: Rob_cs against the best cost-blind method (both ways), and Acc
    against Cohen's. 2025, for each Margin-CS row: Acc against Cohen's, and Cost_cert against
    the lowest of the other methods (both ways)."""
    settings: dict[tuple[str, str], dict[str, Mapping[str, str]]] = {}
    for row in summary:
        settings.setdefault((row["dataset"], row["cost"]), {})[row["method"]] = row
    out: list[dict[str, object]] = []
    for (dataset, cost), rows in settings.items():
        cohen = rows.get("cohen")
        where = {"dataset": dataset, "cost": cost}
        blind = [rows[m] for m in COST_BLIND if m in rows and _known(rows[m], "rob_cs")]
        for method in (m for m in rows if base(m) == "csrs"):
            ours = rows[method]
            for rivals, test in (
                    (blind, "Rob_cs vs the best cost-blind method"),
                    ([row for row in blind if _within(row, cohen, ACC_DROP_2023)],
                     f"Rob_cs vs the best cost-blind method within {ACC_DROP_2023:g} of Cohen's "
                     f"Acc")):
                if rivals and _known(ours, "rob_cs"):
                    best = max(rivals, key=lambda row: float(row["rob_cs"]))
                    gain = round(float(ours["rob_cs"]) - float(best["rob_cs"]), 3)
                    out.append({"claim": "2023", **where, **_compare(
                        ours, best, "rob_cs", test, f"> +{GAIN_BAR:g}", gain > GAIN_BAR,
                        gain=True)})
            if cohen is not None:
                drop = round(float(cohen["acc"]) - float(ours["acc"]), 3)
                out.append({"claim": "2023", **where, **_compare(
                    ours, cohen, "acc", "Acc vs Cohen", f">= -{ACC_DROP_2023:g}",
                    drop <= ACC_DROP_2023, gain=False)})
        others = [row for name, row in rows.items()
                  if base(name) != "margin-cs" and _known(row, "cert_cost")]
        for method in (m for m in rows if base(m) == "margin-cs"):
            ours = rows[method]
            if cohen is not None:
                drop = round(float(cohen["acc"]) - float(ours["acc"]), 3)
                out.append({"claim": "2025", **where, **_compare(
                    ours, cohen, "acc", "Acc vs Cohen", f">= -{ACC_DROP_2025:g}",
                    drop <= ACC_DROP_2025, gain=False)})
            if not _known(ours, "cert_cost"):
                continue
            for rivals, test in (
                    (others, "Cost_cert vs the lowest other method"),
                    ([row for row in others if _within(row, cohen, ACC_DROP_2025)],
                     f"Cost_cert vs the lowest other method within {ACC_DROP_2025:g} of Cohen's "
                     f"Acc")):
                if rivals:
                    rival = min(rivals, key=lambda row: float(row["cert_cost"]))
                    difference = round(float(ours["cert_cost"]) - float(rival["cert_cost"]), 3)
                    out.append({"claim": "2025", **where, **_compare(
                        ours, rival, "cert_cost", test, "<= 0", difference <= 0, gain=True)})
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def write_csv(path: Path, rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(row.get(column, "")) for column in columns] for row in rows)


def _time_log(path: Path) -> tuple[int, int]:
    """Wall and CPU (user + system) seconds from the report of ``/usr/bin/time -v``."""
    text = path.read_text(errors="replace")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    system = re.search(r"System time \(seconds\): ([\d.]+)", text)
    if not (wall and user and system):
        raise SystemExit(f"{path}: no report of /usr/bin/time -v in it")
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = 60 * seconds + float(part)
    return round(seconds), round(float(user.group(1)) + float(system.group(1)))


def _machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        if line.startswith("Model name")), platform.processor() or "unknown CPU")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB, no GPU"


def add_provenance(time_log: Path, commit: str, command: str, file: Path = SUMMARY) -> None:
    """Record in provenance.csv which command, machine and commit made ``file``, with the wall
    and CPU seconds of the run's ``/usr/bin/time -v`` report."""
    import torch

    wall, cpu = _time_log(time_log)
    rows = read_csv(PROVENANCE)
    with PROVENANCE.open(newline="", encoding="utf-8") as handle:
        columns = next(csv.reader(handle))
    if "cpu_s" not in columns:
        columns.insert(columns.index("wall_s") + 1, "cpu_s")
    rows = [row for row in rows if row["file"] != str(file.relative_to(ROOT))]
    rows.append({"file": str(file.relative_to(ROOT)), "command": command,
                 "machine": _machine(), "torch": torch.__version__,
                 "python": platform.python_version(), "wall_s": str(wall), "cpu_s": str(cpu),
                 "commit": commit})
    write_csv(PROVENANCE, rows, columns)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run's --out directory")
    parser.add_argument("--time-log", type=Path,
                        help="the run's log, ending with the report of /usr/bin/time -v")
    parser.add_argument("--commit", help="the commit the run was made at")
    parser.add_argument("--command", default="csrs experiment "
                        "experiments/small/comparison_2025.toml --out /tmp/comparison",
                        help="the command, as the provenance table shows it")
    args = parser.parse_args(argv)
    if (args.time_log is None) != (args.commit is None):
        parser.error("--time-log and --commit go together")
    summary = read_csv(args.run / "summary.csv")
    missing = sorted(set(COLUMNS) - set(summary[0]))
    if missing:
        parser.error(f"{args.run / 'summary.csv'} has no column {', '.join(missing)}")
    write_csv(SUMMARY, summary, COLUMNS)
    write_csv(VERDICT, verdict_rows(read_csv(SUMMARY)), VERDICT_COLUMNS)
    for source, target in FIGURES:
        if not (args.run / source).is_file():
            parser.error(f"{args.run / source} does not exist")
        shutil.copyfile(args.run / source, RESULTS / target)
    if args.time_log is not None:
        add_provenance(args.time_log, args.commit, args.command)
    print(f"wrote {SUMMARY.relative_to(ROOT)}, {VERDICT.relative_to(ROOT)} and "
          f"{len(FIGURES)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
