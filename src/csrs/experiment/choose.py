"""Choosing one candidate of a tuning grid from its validation scores: a pure function.

Every rule first keeps the candidates whose validation Acc is within ``max_acc_drop`` of the
reference (Cohen's validation Acc for the same setting and seed; without Cohen in the config, the
grid's own most accurate candidate), since the claim under test is robustness *without* giving up
accuracy. Among those:

- ``rob_cs`` (the 2023 paper's goal): the highest validation Rob_cs;
- ``cert_cost`` (matched accuracy, for real-valued costs): the lowest validation certified cost
  Cost_cert(eps).

Ties go to the more accurate candidate, then to the first. A NaN score (an empty group, a file
without costs) never wins; when no candidate qualifies, the most accurate one is chosen and the
rule says so. The test split is never looked at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Choice", "choose"]


@dataclass(frozen=True)
class Choice:
    """The chosen candidate's index and the sentence that says why it was chosen."""

    index: int
    reason: str


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def choose(scores: Sequence[Mapping[str, Any]], *, reference_acc: float | None,
           max_acc_drop: float, select: str = "rob_cs") -> Choice:
    """Returns the candidate that ``select`` picks among ``scores`` (one validation summary per
    candidate, with ``acc``, ``rob_cs`` and ``cert_cost``); see the module doc."""
    if select not in ("rob_cs", "cert_cost"):
        raise ValueError(f"select must be 'rob_cs' or 'cert_cost'; got {select!r}")
    if not scores:
        raise ValueError("no candidates to choose from")
    if len(scores) == 1:
        return Choice(0, "the only candidate")
    accurate = [i for i, score in enumerate(scores) if _finite(score["acc"])]
    if not accurate:
        raise ValueError("no candidate has a validation accuracy (empty validation split?)")
    best_acc = max(scores[i]["acc"] for i in accurate)
    if reference_acc is None or not _finite(reference_acc):
        reference_acc, against = best_acc, "the grid's best"
    else:
        against = "Cohen's"
    # A hair of tolerance: 0.654 - 0.03 must admit 0.624 despite binary floating point.
    floor = reference_acc - max_acc_drop - 1e-12
    eligible = [i for i in accurate if scores[i]["acc"] >= floor
                and _finite(scores[i][select])]
    if not eligible:
        most = min(accurate, key=lambda i: (-scores[i]["acc"], i))
        return Choice(most, f"the most accurate: no candidate with a finite {select} has an Acc "
                            f"within {max_acc_drop:g} of {against} {reference_acc:.3f}")
    sign = 1.0 if select == "rob_cs" else -1.0
    best = min(eligible, key=lambda i: (-sign * scores[i][select], -scores[i]["acc"], i))
    word = "highest" if select == "rob_cs" else "lowest"
    return Choice(best, f"the {word} {select} among the candidates with an Acc within "
                        f"{max_acc_drop:g} of {against} {reference_acc:.3f}")
