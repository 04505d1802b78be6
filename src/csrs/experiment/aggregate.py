"""The test split's numbers of the chosen candidates, averaged over seeds: a pure function.

Each (setting, method) row holds the mean over seeds of every metric and, with two seeds or more,
its standard deviation ``<metric>_sd``: the sample standard deviation (ddof = 1,
:data:`SD_DDOF`), which does not understate the spread of three seeds as ddof = 0 would. With
one seed there is no spread and no ``_sd`` key. A metric that is NaN for one seed (an empty
group) is NaN in the mean: it is shown as missing, never averaged over the other seeds alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ADAPTIVE_METRICS", "METRICS", "SD_DDOF", "RunResult", "aggregate"]

METRICS = ("acc", "rob_cs", "rob_cs_std", "rob_non_std", "clean_cost", "cert_cost",
           "cert_cost_sensitive", "recall", "precision")
# What the sequential test decides at eps (its certified cost is exact for 0/1 costs alone; NaN
# otherwise).
ADAPTIVE_METRICS = ("acc", "rob_cs", "rob_cs_std", "rob_non_std", "cert_cost", "mean_samples")
SD_DDOF = 1


@dataclass
class RunResult:
    """One candidate certified on the test split: its fixed-n summary at eps
    (:func:`csrs.metrics.summarize`) and, where it ran, the sequential test's
    (:func:`csrs.metrics.summarize` of its decisions, which it keeps under ``arrays`` for the
    curves)."""

    dataset: str
    cost: str
    method: str
    seed: int
    hparams: str
    summary: Mapping[str, Any]
    adaptive: Mapping[str, Any] | None = None
    chosen: bool = True
    path: Path | None = None
    checkpoint: Path | None = None


def _mean_and_sd(values: list[float]) -> tuple[float, float | None]:
    array = np.asarray(values, dtype=float)
    mean = float(array.mean())
    return mean, (float(array.std(ddof=SD_DDOF)) if array.size > SD_DDOF else None)


def aggregate(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Returns one row per (dataset, cost, method), in the order first met: ``seeds`` (how
    many) and ``seed_values``, the chosen hyperparameters of each seed (" / "-joined where they
    differ), the group sizes, each seed's results file and checkpoint, and the mean and sd of
    each metric over the seeds (see the module doc)."""
    groups: dict[tuple[str, str, str], list[RunResult]] = {}
    for result in results:
        groups.setdefault((result.dataset, result.cost, result.method), []).append(result)
    rows = []
    for (dataset, cost, method), group in groups.items():
        first = group[0].summary
        row: dict[str, Any] = {
            "dataset": dataset, "cost": cost, "method": method, "seeds": len(group),
            "seed_values": " ".join(str(result.seed) for result in group),
            "hparams": " / ".join(dict.fromkeys(result.hparams for result in group)),
            "examples": first["examples"], "sensitive": first["sensitive"],
            "results_files": [result.path for result in group],
            "checkpoints": [result.checkpoint for result in group]}
        for metric in METRICS:
            values = [float(result.summary.get(metric, np.nan)) for result in group]
            if np.isnan(values).all():  # e.g. a seed class's recall on a 10-class task
                continue
            row[metric], spread = _mean_and_sd(values)
            if spread is not None:
                row[f"{metric}_sd"] = spread
        if all(result.adaptive is not None for result in group):
            for metric in ADAPTIVE_METRICS:
                mean, spread = _mean_and_sd([float(result.adaptive.get(metric, np.nan))
                                             for result in group])
                row[f"adaptive_{metric}"] = mean
                if spread is not None:
                    row[f"adaptive_{metric}_sd"] = spread
            row["adaptive_examples"] = group[0].adaptive["examples"]
        rows.append(row)
    return rows
