"""Test oracles: values computed another way than the code under test, from known truths."""

from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import ndtri

from csrs.sequential import Decision, SequentialTest
from csrs.stats import certified_cost


def run_test(test: SequentialTest, draw: Callable[[int, int], np.ndarray]) -> Decision:
    """Drive ``test`` to its decision; ``draw(start, stop)`` returns the class counts of
    estimation samples start..stop-1."""
    counts = np.zeros(test.num_classes, dtype=np.int64)
    done = 0
    while test.decision is None:
        counts = counts + np.asarray(draw(done, test.next_look), dtype=np.int64)
        done = test.next_look
        test.update(counts)
    return test.decision


def true_cost(probabilities: Sequence[float], cost_row: Sequence[float], candidate: int,
              sigma: float, eps: float) -> float:
    """The oracle kappa(eps): the certified-cost formula on the true probabilities with the
    same candidate and the true probabilities (scipy.special.ndtri: scipy.stats.norm.ppf gives
    the same values at ~50x the cost per call, which made these simulations minutes long)."""
    p = np.asarray(probabilities, dtype=float)
    row = np.asarray(cost_row, dtype=float)
    others = [int(k) for k in np.flatnonzero(row > 0) if k != candidate]
    radii = [sigma / 2 * (ndtri(p[candidate]) - ndtri(p[k])) for k in others]
    return certified_cost(eps, float(row[candidate]), sigma * ndtri(p[candidate]),
                          [float(row[k]) for k in others], radii)
