"""Acc, Rob_cs, Rob_cs^(std), Rob_non^(std) and their curves over eps: pure functions of rows.

Definitions (NOTES.md, "Metrics"), at a radius eps, from the per-example results:

- Acc: fraction of all examples whose standard certificate is correct with radius > 0;
- Rob_cs: fraction of sensitive examples with a non-costly prediction and max(R1, R2) > eps;
- Rob_cs^(std): the same with R1 alone;
- Rob_non^(std): fraction of non-sensitive examples that are correct with standard radius > eps.

An abstention is never correct or robust. A fraction over an empty group is NaN.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ResultArrays", "curves", "per_class", "summarize", "summarize_decisions"]

METRICS = ("acc", "rob_cs", "rob_cs_std", "rob_non_std")


def _floats(values: Iterable[Any]) -> np.ndarray:
    return np.array([float(v) if v not in ("", None) else np.nan for v in values], dtype=float)


def _ints(values: Iterable[Any], empty: int = -1) -> np.ndarray:
    return np.array([int(v) if v not in ("", None) else empty for v in values], dtype=np.int64)


@dataclass(frozen=True)
class ResultArrays:
    """Result rows as arrays (missing cost-sensitive fields of non-sensitive rows are NaN/-1)."""

    label: np.ndarray
    predict: np.ndarray
    radius: np.ndarray
    correct: np.ndarray
    sensitive: np.ndarray
    cs_certified: np.ndarray  # sensitive, not abstained, prediction outside Omega_y
    r1: np.ndarray
    cs_radius: np.ndarray

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]]) -> ResultArrays:
        column = {key: [row.get(key, "") for row in rows] for key in
                  ("label", "predict", "radius", "correct", "sensitive", "cs_predict",
                   "cs_costly", "r1", "cs_radius")}
        sensitive = _ints(column["sensitive"], 0).astype(bool)
        cs_predict = _ints(column["cs_predict"])
        cs_costly = _ints(column["cs_costly"], 1).astype(bool)
        return cls(label=_ints(column["label"]), predict=_ints(column["predict"]),
                   radius=_floats(column["radius"]),
                   correct=_ints(column["correct"], 0).astype(bool), sensitive=sensitive,
                   cs_certified=sensitive & (cs_predict >= 0) & ~cs_costly,
                   r1=_floats(column["r1"]), cs_radius=_floats(column["cs_radius"]))

    def __len__(self) -> int:
        return self.label.size


def _fraction(hits: np.ndarray, group: np.ndarray) -> float:
    return float(hits[group].mean()) if group.any() else float("nan")


def _metrics_at(results: ResultArrays, eps: float) -> dict[str, float]:
    everyone = np.ones(len(results), dtype=bool)
    with np.errstate(invalid="ignore"):
        standard_ok = results.correct & (results.predict >= 0)
        return {
            "acc": _fraction(standard_ok & (results.radius > 0), everyone),
            "rob_cs": _fraction(results.cs_certified & (results.cs_radius > eps),
                                results.sensitive),
            "rob_cs_std": _fraction(results.cs_certified & (results.r1 > eps),
                                    results.sensitive),
            "rob_non_std": _fraction(standard_ok & (results.radius > eps), ~results.sensitive),
        }


def summarize(rows: Sequence[Mapping[str, Any]] | ResultArrays, eps: float) -> dict[str, Any]:
    """Return Acc, Rob_cs, Rob_cs^(std), Rob_non^(std) at ``eps`` and the group sizes."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0; got {eps}")
    results = rows if isinstance(rows, ResultArrays) else ResultArrays.from_rows(rows)
    return {**_metrics_at(results, eps), "eps": eps, "examples": len(results),
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
                      **_metrics_at(subset, eps)})
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
