"""Acc, Rob_cs, Rob_cs^(std), Rob_non^(std) and their curves over eps: pure functions of rows.

Definitions (NOTES.md, "Metrics"), at a radius eps, from the per-example results:

- Acc: fraction of all examples whose standard certificate is correct with radius > 0;
- Rob_cs: fraction of sensitive examples with a non-costly prediction and max(R1, R2) > eps;
- Rob_cs^(std): the same with the standard radius (Cohen's CERTIFY at alpha) instead;
- Rob_non^(std): fraction of non-sensitive examples that are correct with standard radius > eps.

and, for real-valued costs (NOTES.md, "Real-valued costs"), lower being better:

- clean cost: mean over all examples of C[y][prediction] (an abstention costs max_k C[y][k]);
- certified cost Cost_cert(eps): mean over all examples of kappa(eps) (non-sensitive examples
  contribute 0), and over the sensitive examples alone;
- for two-class tasks, the recall and precision of the costly seed class (what a clinician reads:
  the fraction of true malignant predicted malignant, and of predicted malignant truly so).

An abstention is never correct or robust. A fraction over an empty group is NaN, and so are the
cost metrics of result files written before csrs recorded costs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["METRICS", "ResultArrays", "certified_costs", "curves", "per_class", "summarize",
           "summarize_decisions"]

METRICS = ("acc", "rob_cs", "rob_cs_std", "rob_non_std", "cert_cost", "cert_cost_sensitive")


def _floats(values: Iterable[Any]) -> np.ndarray:
    return np.array([float(v) if v not in ("", None) else np.nan for v in values], dtype=float)


def _ints(values: Iterable[Any], empty: int = -1) -> np.ndarray:
    return np.array([int(v) if v not in ("", None) else empty for v in values], dtype=np.int64)


def _pairs(values: Iterable[Any]) -> list[dict[int, float]]:
    """Parse "k:value,k:value" cells (pair_radii, pair_costs) into dicts."""
    parsed = []
    for cell in values:
        items = [item.partition(":") for item in str(cell or "").split(",") if item]
        parsed.append({int(k): float(v) for k, _, v in items})
    return parsed


@dataclass(frozen=True)
class ResultArrays:
    """Result rows as arrays (missing cost-sensitive fields of non-sensitive rows are NaN/-1).

    ``pair_radii``/``pair_costs`` are (examples, P) arrays padded with +inf radii and 0 costs,
    P the most costly classes of any example: kappa(eps) needs no Python loop over examples.
    """

    label: np.ndarray
    predict: np.ndarray
    radius: np.ndarray
    correct: np.ndarray
    sensitive: np.ndarray
    cs_certified: np.ndarray  # sensitive, not abstained, prediction outside Omega_y
    cs_costly: np.ndarray     # the candidate c_A lies in Omega_y
    r1: np.ndarray
    cs_radius: np.ndarray
    clean_cost: np.ndarray
    cs_cost: np.ndarray       # C[y][c_A]; NaN where the file has no cost columns
    pair_radii: np.ndarray
    pair_costs: np.ndarray

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> ResultArrays:
        column = {key: [row.get(key, "") for row in rows] for key in
                  ("label", "predict", "radius", "correct", "sensitive", "cs_predict",
                   "cs_costly", "r1", "cs_radius", "clean_cost", "cs_cost", "pair_radii",
                   "pair_costs")}
        sensitive = _ints(column["sensitive"], 0).astype(bool)
        cs_predict = _ints(column["cs_predict"])
        cs_costly = _ints(column["cs_costly"], 1).astype(bool)
        radii, costs = _pairs(column["pair_radii"]), _pairs(column["pair_costs"])
        width = max((len(r) for r in radii), default=0)
        pair_radii = np.full((len(rows), width), np.inf)
        pair_costs = np.zeros((len(rows), width))
        for i, (row_radii, row_costs) in enumerate(zip(radii, costs, strict=True)):
            for j, k in enumerate(row_radii):
                pair_radii[i, j], pair_costs[i, j] = row_radii[k], row_costs.get(k, np.nan)
        return cls(label=_ints(column["label"]), predict=_ints(column["predict"]),
                   radius=_floats(column["radius"]),
                   correct=_ints(column["correct"], 0).astype(bool), sensitive=sensitive,
                   cs_certified=sensitive & (cs_predict >= 0) & ~cs_costly,
                   cs_costly=sensitive & cs_costly,
                   r1=_floats(column["r1"]), cs_radius=_floats(column["cs_radius"]),
                   clean_cost=_floats(column["clean_cost"]), cs_cost=_floats(column["cs_cost"]),
                   pair_radii=pair_radii, pair_costs=pair_costs)

    def __len__(self) -> int:
        return self.label.size


def _fraction(hits: np.ndarray, group: np.ndarray) -> float:
    return float(hits[group].mean()) if group.any() else float("nan")


def certified_costs(results: ResultArrays, eps: float) -> np.ndarray:
    """Return kappa(eps) of each example (:func:`csrs.stats.certified_cost`, vectorised):
    C[y][c_A] where R1 > eps, else the largest of C[y][c_A] and the costs of the classes whose
    pairwise radius is <= eps. Non-sensitive examples: 0."""
    with np.errstate(invalid="ignore"):
        reachable = np.where(results.pair_radii <= eps, results.pair_costs, 0.0)
        worst = np.maximum(results.cs_cost, reachable.max(axis=1, initial=0.0))
        kappa = np.where(results.r1 > eps, results.cs_cost, worst)
    return np.where(results.sensitive, kappa, 0.0)


def _mean(values: np.ndarray, group: np.ndarray) -> float:
    return float(values[group].mean()) if group.any() else float("nan")


def _metrics_at(results: ResultArrays, eps: float) -> dict[str, float]:
    everyone = np.ones(len(results), dtype=bool)
    kappa = certified_costs(results, eps)
    with np.errstate(invalid="ignore"):
        standard_ok = results.correct & (results.predict >= 0)
        return {
            "acc": _fraction(standard_ok & (results.radius > 0), everyone),
            "rob_cs": _fraction(results.cs_certified & (results.cs_radius > eps),
                                results.sensitive),
            "rob_cs_std": _fraction((results.predict >= 0) & ~results.cs_costly
                                    & (results.radius > eps), results.sensitive),
            "rob_non_std": _fraction(standard_ok & (results.radius > eps), ~results.sensitive),
            "cert_cost": _mean(kappa, everyone),
            "cert_cost_sensitive": _mean(kappa, results.sensitive),
        }


def _seed_class_rates(results: ResultArrays) -> dict[str, float]:
    """Recall and precision of the costly seed class of a two-class task (else NaN): the
    sensitive class whose errors cost most."""
    labels = np.unique(results.label)
    nan = {"seed_class": -1, "recall": float("nan"), "precision": float("nan")}
    sensitive_labels = np.unique(results.label[results.sensitive])
    if labels.size != 2 or not set(labels) <= {0, 1} or sensitive_labels.size == 0:
        return nan

    def worst_cost(label: int) -> float:
        rows = results.label == label
        costs = results.pair_costs[rows]
        return float(np.nanmax(costs)) if costs.size else 0.0

    seed = int(max(sensitive_labels, key=lambda label: (worst_cost(label), -label)))
    truly, predicted = results.label == seed, results.predict == seed
    return {"seed_class": seed, "recall": _fraction(predicted, truly),
            "precision": _fraction(truly, predicted)}


def summarize(rows: Sequence[Mapping[str, Any]] | ResultArrays, eps: float) -> dict[str, Any]:
    """Return Acc, Rob_cs, Rob_cs^(std), Rob_non^(std), the clean and certified costs at
    ``eps``, the seed class's recall and precision (two-class tasks) and the group sizes."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0; got {eps}")
    results = rows if isinstance(rows, ResultArrays) else ResultArrays.from_rows(rows)
    return {**_metrics_at(results, eps), "clean_cost": _mean(results.clean_cost,
                                                             np.ones(len(results), dtype=bool)),
            **_seed_class_rates(results), "eps": eps, "examples": len(results),
            "sensitive": int(results.sensitive.sum()),
            "non_sensitive": int((~results.sensitive).sum())}


def curves(rows: Sequence[Mapping[str, Any]] | ResultArrays,
           eps_grid: Sequence[float] | np.ndarray) -> dict[str, np.ndarray]:
    """Return each metric as an array over ``eps_grid`` (the certified-accuracy curves)."""
    results = rows if isinstance(rows, ResultArrays) else ResultArrays.from_rows(rows)
    grid = np.asarray(eps_grid, dtype=float)
    points = [_metrics_at(results, float(eps)) for eps in grid]
    return {"eps": grid, **{name: np.array([p[name] for p in points]) for name in METRICS}}


def per_class(rows: Sequence[Mapping[str, Any]] | ResultArrays,
              eps: float) -> list[dict[str, Any]]:
    """Return one dict per true class: its size, whether it is sensitive, and the metrics."""
    results = rows if isinstance(rows, ResultArrays) else ResultArrays.from_rows(rows)
    table = []
    for label in np.unique(results.label):
        mask = results.label == label
        subset = ResultArrays(**{name: getattr(results, name)[mask]
                                 for name in ResultArrays.__dataclass_fields__})
        table.append({"label": int(label), "examples": int(mask.sum()),
                      "sensitive": bool(subset.sensitive.any()),
                      **_metrics_at(subset, eps),
                      "clean_cost": _mean(subset.clean_cost, np.ones(int(mask.sum()), bool))})
    return table


def summarize_decisions(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Return Acc, Rob_cs and Rob_non^(std) from rows that hold decisions at one eps.

    Adaptive (sequential) and convex certification decide "certified at eps" per example
    instead of reporting a radius: ``certified`` is the cost-sensitive decision for sensitive
    examples and the standard one for the others; ``correct`` is the accuracy decision. Rob_cs^(std)
    needs radii and is NaN here. With a ``samples`` column, the mean and median samples too.
    """
    sensitive = _ints([row.get("sensitive", "") for row in rows], 0).astype(bool)
    certified = _ints([row.get("certified", "") for row in rows], 0).astype(bool)
    correct = _ints([row.get("correct", "") for row in rows], 0).astype(bool)
    samples = _floats([row.get("samples", "") for row in rows])
    eps_values = sorted({str(row.get("eps", "")) for row in rows} - {""})
    everyone = np.ones(len(rows), dtype=bool)
    has_samples = bool(len(rows)) and not np.isnan(samples).any()
    return {
        "eps": float(eps_values[0]) if len(eps_values) == 1 else float("nan"),
        "examples": len(rows), "sensitive": int(sensitive.sum()),
        "non_sensitive": int((~sensitive).sum()),
        "acc": _fraction(correct, everyone),
        "rob_cs": _fraction(certified, sensitive),
        "rob_cs_std": float("nan"),
        "rob_non_std": _fraction(certified & correct, ~sensitive),
        "mean_samples": float(samples.mean()) if has_samples else float("nan"),
        "median_samples": float(np.median(samples)) if has_samples else float("nan"),
    }
