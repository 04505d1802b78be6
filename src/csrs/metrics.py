"""Acc, Rob_cs, Rob_cs^(std), Rob_non^(std), the costs and their curves: pure functions of rows.

Definitions (docs/theory.md#metrics), at a radius eps, from the per-example results:

- Acc: fraction of all examples whose standard certificate is correct with radius > 0;
- Rob_cs: fraction of sensitive examples with a non-costly prediction and max(R1, R2) > eps;
- Rob_cs^(std): the same with the standard radius (Cohen's CERTIFY at alpha) instead;
- Rob_non^(std): fraction of non-sensitive examples that are correct with standard radius > eps;

and, for real-valued costs, lower being better:

- clean cost: mean over all examples of C[y][prediction] (an abstention costs max_k C[y][k]);
- certified cost Cost_cert(eps): mean over all examples of kappa(eps) (non-sensitive examples
  contribute 0), and over the sensitive examples alone;
- for two-class tasks, the recall and precision of the costly seed class (what a clinician reads:
  the fraction of true malignant predicted malignant, and of predicted malignant truly so).

Each kind of results file (:mod:`csrs.results`) becomes arrays that hold what it knows:
:class:`ResultArrays` hold radii (fixed n, and Cohen's logs read with a cost matrix) and give
every metric at every eps; :class:`DecisionArrays` hold decisions at the eps of a grid
(sequential, convex) and give the metrics at those eps only, refusing any other. A metric a
file cannot give is NaN (shown "-"), never a guess: Rob_cs^(std) of a convex file, Cost_cert of
real-valued costs decided sequentially (it needs pairwise radii), any cost of a file without one.
An abstention is never correct or robust. A fraction over an empty group is NaN.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from csrs.costs import CostMatrix
from csrs.results import (
    COHEN_LOG,
    CONVEX,
    FIXED,
    SEQUENTIAL,
    ResultsFile,
    ResultsFileError,
    eps_column,
)

__all__ = ["METRICS", "DecisionArrays", "ResultArrays", "arrays_of", "certified_costs",
           "curves", "per_class", "summarize", "summarize_decisions"]

METRICS = ("acc", "rob_cs", "rob_cs_std", "rob_non_std", "cert_cost", "cert_cost_sensitive")
_NAN = float("nan")


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


def _mean(values: np.ndarray, group: np.ndarray | None = None) -> float:
    """Mean of ``values`` over ``group`` (a fraction for booleans); NaN over an empty group."""
    chosen = values if group is None else values[group]
    return float(np.mean(chosen)) if chosen.size else _NAN


def _subset(arrays: Any, mask: np.ndarray) -> Any:
    """The same arrays restricted to the examples of ``mask``."""
    return replace(arrays, **{f.name: getattr(arrays, f.name)[mask] for f in fields(arrays)
                              if isinstance(getattr(arrays, f.name), np.ndarray)})


def _row_max(cost: CostMatrix | None, labels: np.ndarray) -> np.ndarray:
    """max_k C[y][k] per example; NaN without a cost matrix."""
    if cost is None:
        return np.full(labels.size, np.nan)
    return cost.matrix.max(axis=1)[labels]


def _cost_of(settings: Mapping[str, Any]) -> CostMatrix | None:
    """The cost matrix a settings file recorded, if any."""
    rows = settings.get("cost_matrix")
    return CostMatrix(rows, settings.get("class_names")) if rows else None


@dataclass(frozen=True)
class ResultArrays:
    """Per-example radii as arrays (missing cost-sensitive fields of non-sensitive rows are
    NaN/-1).

    ``pair_radii``/``pair_costs`` are (examples, P) arrays padded with +inf radii and 0 costs,
    P the most costly classes of any example: kappa(eps) needs no Python loop over examples.
    ``cost_r1`` is the cost certificate's own R1 (at alpha/2), which kappa uses; ``r1`` is
    Algorithm 1's (at alpha with bounds "paper"), which Rob_cs's max(R1, R2) uses.
    """

    label: np.ndarray
    predict: np.ndarray
    radius: np.ndarray
    correct: np.ndarray
    sensitive: np.ndarray
    cs_certified: np.ndarray  # sensitive, not abstained, prediction outside Omega_y
    cs_costly: np.ndarray     # the candidate c_A lies in Omega_y
    cs_radius: np.ndarray
    clean_cost: np.ndarray
    cost_r1: np.ndarray
    cs_cost: np.ndarray       # C[y][c_A]; NaN where the file has no costs
    pair_radii: np.ndarray
    pair_costs: np.ndarray
    row_max: np.ndarray       # max_k C[y][k]

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> ResultArrays:
        """Arrays of the rows of a fixed-n results file (:data:`csrs.results.COLUMNS`)."""
        column = {key: [row.get(key, "") for row in rows] for key in
                  ("label", "predict", "radius", "correct", "sensitive", "cs_predict",
                   "cs_costly", "cs_radius", "clean_cost", "cost_r1", "cs_cost", "pair_radii",
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
        cs_cost = _floats(column["cs_cost"])
        # Every costly class but c_A is a pair; with C[y][c_A] that is the whole row.
        row_max = np.maximum(cs_cost, pair_costs.max(axis=1, initial=0.0))
        return cls(label=_ints(column["label"]), predict=_ints(column["predict"]),
                   radius=_floats(column["radius"]),
                   correct=_ints(column["correct"], 0).astype(bool), sensitive=sensitive,
                   cs_certified=sensitive & (cs_predict >= 0) & ~cs_costly,
                   cs_costly=sensitive & cs_costly, cs_radius=_floats(column["cs_radius"]),
                   clean_cost=_floats(column["clean_cost"]),
                   cost_r1=_floats(column["cost_r1"]), cs_cost=cs_cost,
                   pair_radii=pair_radii, pair_costs=pair_costs, row_max=row_max)

    @classmethod
    def from_cohen_log(cls, rows: Sequence[Mapping[str, Any]],
                       cost: CostMatrix | None) -> ResultArrays:
        """Arrays of a log of Cohen et al.'s ``certify.py`` (``idx label predict radius correct
        time``), for the cost matrix ``cost`` (None: no example is sensitive, no costs).

        The log holds the standard radius alone, which serves as R1: Rob_cs from it is a lower
        bound (R2 needs the class counts the log lacks). The certified cost follows from it:
        C[y][predict] within the radius, the row's largest cost beyond it and on abstention; it
        holds with the log's probability 1 - alpha.
        """
        label = _ints([row["label"] for row in rows])
        predict = _ints([row["predict"] for row in rows])
        radius = np.where(predict >= 0, _floats([row["radius"] for row in rows]), 0.0)
        count = len(rows)
        if cost is None:
            nothing = np.zeros(count, dtype=bool)
            nan = np.full(count, np.nan)
            return cls(label=label, predict=predict, radius=radius, correct=predict == label,
                       sensitive=nothing, cs_certified=nothing, cs_costly=nothing,
                       cs_radius=nan, clean_cost=nan, cost_r1=nan, cs_cost=nan,
                       pair_radii=np.zeros((count, 0)), pair_costs=np.zeros((count, 0)),
                       row_max=nan)
        if int(label.max(initial=0)) >= cost.num_classes or \
                int(predict.max(initial=0)) >= cost.num_classes:
            raise ResultsFileError(f"the log has classes up to "
                                   f"{int(max(label.max(), predict.max()))}; the cost matrix "
                                   f"has {cost.num_classes}")
        matrix = cost.matrix
        row_max = matrix.max(axis=1)[label]
        sensitive = row_max > 0
        abstained = predict < 0
        candidate_cost = np.where(abstained, row_max, matrix[label, np.maximum(predict, 0)])
        costly = sensitive & ~abstained & (candidate_cost > 0)
        certified = sensitive & ~abstained & ~costly
        return cls(label=label, predict=predict, radius=radius, correct=predict == label,
                   sensitive=sensitive, cs_certified=certified, cs_costly=costly,
                   cs_radius=np.where(certified, radius, 0.0), clean_cost=candidate_cost,
                   cost_r1=np.where(abstained, -np.inf, radius), cs_cost=candidate_cost,
                   # Beyond R1 every class may be reached: radius -inf for all of them.
                   pair_radii=np.full((count, 1), -np.inf), pair_costs=row_max[:, None],
                   row_max=row_max)

    def __len__(self) -> int:
        return self.label.size


@dataclass(frozen=True)
class DecisionArrays:
    """Per-example decisions at each eps of ``grid`` (sequential and convex files).

    ``standard[i, j]``: the standard certificate of example i holds at grid[j] (the prediction
    is constant within it); ``certified[i, j]``: the cost-sensitive one does (sensitive examples
    only). ``exact_cost``: the decisions give kappa exactly (a 0/1 cost matrix decided without a
    cost threshold: kappa is 0 when certified and 1 otherwise). ``samples`` may be NaN.
    """

    grid: tuple[float, ...]
    label: np.ndarray
    predict: np.ndarray
    correct: np.ndarray
    sensitive: np.ndarray
    costly: np.ndarray
    standard: np.ndarray
    certified: np.ndarray
    clean_cost: np.ndarray
    row_max: np.ndarray
    samples: np.ndarray
    exact_cost: bool = False
    has_standard: bool = True

    @classmethod
    def from_sequential(cls, rows: Sequence[Mapping[str, Any]], grid: Sequence[float],
                        settings: Mapping[str, Any]) -> DecisionArrays:
        """Arrays of a sequential results file with its settings."""
        cost = _cost_of(settings)
        label = _ints([row["label"] for row in rows])

        def table(prefix: str) -> np.ndarray:
            return np.stack([_ints([row[eps_column(prefix, eps)] for row in rows], 0)
                             for eps in grid], axis=1).astype(bool)

        sensitive = _ints([row["sensitive"] for row in rows], 0).astype(bool)
        return cls(grid=tuple(grid), label=label, predict=_ints([row["predict"] for row in rows]),
                   correct=_ints([row["correct"] for row in rows], 0).astype(bool),
                   sensitive=sensitive,
                   costly=sensitive & _ints([row["costly"] for row in rows], 0).astype(bool),
                   standard=table("standard"), certified=table("certified") & sensitive[:, None],
                   clean_cost=_floats([row["clean_cost"] for row in rows]),
                   row_max=_row_max(cost, label),
                   samples=_floats([row["samples"] for row in rows]),
                   exact_cost=cost is not None and cost.is_binary
                   and settings.get("max_cost") is None)

    @classmethod
    def from_convex(cls, rows: Sequence[Mapping[str, Any]],
                    settings: Mapping[str, Any]) -> DecisionArrays:
        """Arrays of a convex (Zhang & Evans) results file: ``certified`` is the cost-sensitive
        decision of sensitive examples and the standard one of the others; ``predict`` is the
        clean argmax, so Acc is clean accuracy; the standard decision of sensitive examples is
        not computed (Rob_cs^(std) NaN)."""
        cost = _cost_of(settings)
        label = _ints([row["label"] for row in rows])
        predict = _ints([row["predict"] for row in rows])
        sensitive = _ints([row["sensitive"] for row in rows], 0).astype(bool)
        decided = _ints([row["certified"] for row in rows], 0).astype(bool)[:, None]
        grid = tuple(sorted({float(row["eps"]) for row in rows}))
        clean = (cost.matrix[label, predict] if cost is not None
                 else np.full(label.size, np.nan))
        return cls(grid=grid, label=label, predict=predict,
                   correct=_ints([row["correct"] for row in rows], 0).astype(bool),
                   sensitive=sensitive, costly=np.zeros(label.size, dtype=bool),
                   standard=decided & ~sensitive[:, None], certified=decided & sensitive[:, None],
                   clean_cost=clean, row_max=_row_max(cost, label),
                   samples=np.full(label.size, np.nan),
                   exact_cost=cost is not None and cost.is_binary, has_standard=False)

    def column(self, eps: float) -> int:
        """The grid position of ``eps``; refuses an eps the file did not decide."""
        for j, value in enumerate(self.grid):
            if abs(value - eps) <= 1e-12 * max(1.0, abs(eps)):
                return j
        raise ResultsFileError(f"eps {eps:g} was not decided: these decisions are at eps "
                               f"{', '.join(f'{e:g}' for e in self.grid)} only (the sequential "
                               f"test decides the eps it is given)")

    def __len__(self) -> int:
        return self.label.size


def arrays_of(results: ResultsFile, cost: CostMatrix | None = None
              ) -> ResultArrays | DecisionArrays:
    """The arrays of a results file by its kind; ``cost`` is for Cohen's logs, which hold none
    (any other file was certified for a cost matrix, and another one is refused)."""
    if cost is not None and results.kind != COHEN_LOG:
        raise ResultsFileError(f"--cost is for Cohen's logs, which hold no costs; "
                               f"'{results.path}' was certified for cost "
                               f"'{results.settings.get('cost', '?')}'")
    if results.kind == FIXED:
        return ResultArrays.from_rows(results.rows)
    if results.kind == COHEN_LOG:
        return ResultArrays.from_cohen_log(results.rows, cost)
    if results.kind == SEQUENTIAL:
        return DecisionArrays.from_sequential(results.rows, results.grid, results.settings)
    if results.kind == CONVEX:
        return DecisionArrays.from_convex(results.rows, results.settings)
    raise ResultsFileError(f"'{results.path}': unknown kind '{results.kind}'")


def certified_costs(results: ResultArrays, eps: float) -> np.ndarray:
    """Return kappa(eps) of each example (:func:`csrs.stats.certified_cost`, vectorised):
    C[y][c_A] where the cost certificate's R1 > eps, else the largest of C[y][c_A] and the costs
    of the classes whose pairwise radius is <= eps. Non-sensitive examples: 0."""
    with np.errstate(invalid="ignore"):
        reachable = np.where(results.pair_radii <= eps, results.pair_costs, 0.0)
        worst = np.maximum(results.cs_cost, reachable.max(axis=1, initial=0.0))
        kappa = np.where(results.cost_r1 > eps, results.cs_cost, worst)
    return np.where(results.sensitive, kappa, 0.0)


def _radius_metrics(results: ResultArrays, eps: float) -> dict[str, float]:
    kappa = certified_costs(results, eps)
    if np.isnan(results.row_max).all():  # a file without costs (a Cohen log read without one)
        kappa = np.full(len(results), np.nan)
    with np.errstate(invalid="ignore"):
        standard_ok = results.correct & (results.predict >= 0)
        return {
            "acc": _mean(standard_ok & (results.radius > 0)),
            "rob_cs": _mean(results.cs_certified & (results.cs_radius > eps), results.sensitive),
            "rob_cs_std": _mean((results.predict >= 0) & ~results.cs_costly
                                & (results.radius > eps), results.sensitive),
            "rob_non_std": _mean(standard_ok & (results.radius > eps), ~results.sensitive),
            "cert_cost": _mean(kappa),
            "cert_cost_sensitive": _mean(kappa, results.sensitive),
        }


def _decision_metrics(results: DecisionArrays, eps: float) -> dict[str, float]:
    j = results.column(eps)
    standard, certified = results.standard[:, j], results.certified[:, j]
    if results.exact_cost:
        kappa = np.where(results.sensitive & ~certified, results.row_max, 0.0)
        costs = {"cert_cost": _mean(kappa), "cert_cost_sensitive": _mean(kappa,
                                                                         results.sensitive)}
    else:
        costs = {"cert_cost": _NAN, "cert_cost_sensitive": _NAN}
    return {
        "acc": _mean(results.correct),
        "rob_cs": _mean(certified, results.sensitive),
        "rob_cs_std": (_mean(standard & ~results.costly, results.sensitive)
                       if results.has_standard else _NAN),
        "rob_non_std": _mean(standard & results.correct, ~results.sensitive),
        **costs,
    }


def _metrics_at(results: ResultArrays | DecisionArrays, eps: float) -> dict[str, float]:
    if isinstance(results, DecisionArrays):
        return _decision_metrics(results, eps)
    return _radius_metrics(results, eps)


def _seed_class_rates(results: ResultArrays | DecisionArrays) -> dict[str, Any]:
    """Recall and precision of the costly seed class of a two-class task (else NaN): the
    sensitive class whose errors cost most."""
    nan = {"seed_class": -1, "recall": _NAN, "precision": _NAN}
    labels = np.unique(results.label)
    sensitive_labels = np.unique(results.label[results.sensitive])
    if labels.size != 2 or not set(labels.tolist()) <= {0, 1} or sensitive_labels.size == 0:
        return nan
    worst = {int(label): float(np.nanmax(results.row_max[results.label == label], initial=0))
             for label in sensitive_labels}
    if any(np.isnan(value) for value in worst.values()):
        return nan
    seed = max(worst, key=lambda label: (worst[label], -label))
    truly, predicted = results.label == seed, results.predict == seed
    return {"seed_class": seed, "recall": _mean(predicted, truly),
            "precision": _mean(truly, predicted)}


def _as_arrays(rows: Sequence[Mapping[str, Any]] | ResultArrays | DecisionArrays
               ) -> ResultArrays | DecisionArrays:
    return rows if isinstance(rows, (ResultArrays, DecisionArrays)) else \
        ResultArrays.from_rows(rows)


def summarize(rows: Sequence[Mapping[str, Any]] | ResultArrays | DecisionArrays,
              eps: float) -> dict[str, Any]:
    """Return Acc, Rob_cs, Rob_cs^(std), Rob_non^(std), the clean and certified costs at
    ``eps``, the seed class's recall and precision (two-class tasks), the group sizes and, for
    sequential decisions, the mean and median samples per example.

    ``rows`` are fixed-n result rows or the arrays of any kind of file (:func:`arrays_of`);
    decisions give the metrics at the eps they decided only.
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0; got {eps}")
    results = _as_arrays(rows)
    samples = getattr(results, "samples", np.full(len(results), np.nan))
    known = samples[~np.isnan(samples)]
    return {**_metrics_at(results, eps), "clean_cost": _mean(results.clean_cost),
            **_seed_class_rates(results), "eps": eps, "examples": len(results),
            "sensitive": int(results.sensitive.sum()),
            "non_sensitive": int((~results.sensitive).sum()),
            "mean_samples": float(known.mean()) if known.size == samples.size and known.size
            else _NAN,
            "median_samples": float(np.median(known)) if known.size == samples.size
            and known.size else _NAN}


def summarize_decisions(results: DecisionArrays, eps: float | None = None) -> dict[str, Any]:
    """:func:`summarize` for decisions; ``eps`` defaults to the grid's only point."""
    if eps is None:
        if len(results.grid) != 1:
            raise ValueError(f"these decisions are at eps {results.grid}; name one")
        eps = results.grid[0]
    return summarize(results, eps)


def curves(rows: Sequence[Mapping[str, Any]] | ResultArrays | DecisionArrays,
           eps_grid: Sequence[float] | np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Return each metric as an array over ``eps_grid`` (the certified-accuracy curves); for
    decisions, over their own grid (``eps_grid`` must be None or that grid)."""
    results = _as_arrays(rows)
    if isinstance(results, DecisionArrays):
        grid = np.asarray(results.grid if eps_grid is None else eps_grid, dtype=float)
    elif eps_grid is None:
        raise ValueError("radii need an eps grid to draw curves on")
    else:
        grid = np.asarray(eps_grid, dtype=float)
    points = [_metrics_at(results, float(eps)) for eps in grid]
    return {"eps": grid, **{name: np.array([p[name] for p in points]) for name in METRICS}}


def per_class(rows: Sequence[Mapping[str, Any]] | ResultArrays | DecisionArrays,
              eps: float) -> list[dict[str, Any]]:
    """Return one dict per true class: its size, whether it is sensitive, and the metrics."""
    results = _as_arrays(rows)
    table = []
    for label in np.unique(results.label):
        subset = _subset(results, results.label == label)
        table.append({"label": int(label), "examples": len(subset),
                      "sensitive": bool(subset.sensitive.any()),
                      **_metrics_at(subset, eps), "clean_cost": _mean(subset.clean_cost)})
    return table
