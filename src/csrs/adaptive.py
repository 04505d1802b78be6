"""Adaptive certification: sequential tests (csrs.sequential) fed by the smoothed classifier.

Each example draws samples only until its test stops, and examples whose tests are still running
share batches, refilled from the queue as others finish, so the model always sees full batches and
samples saved become time saved.

Determinism: example ``i`` draws its selection samples exactly as fixed-n certification does, and
its estimation samples as the prefix of the fixed-n noise stream of n = n_max (blocks seeded by
(seed, i, stage, block), see csrs.smoothing). Its looks are a fixed schedule of its own sample
count. Its decision therefore depends on (seed, i) alone, not on the batch size nor on which
other examples shared its batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from csrs.costs import CostMatrix
from csrs.results import ResultsStream, prepare_results
from csrs.sequential import (
    ADAPTIVE_COLUMNS,
    DEFAULT_METHOD,
    LOOK_FIRST,
    LOOK_GROWTH,
    Decision,
    Method,
    SequentialTest,
    look_schedule,
)
from csrs.smoothing import ExampleTests, SmoothedClassifier, TestFactory, decide_many

__all__ = ["AdaptiveSettings", "certify_dataset_adaptive", "decide"]


@dataclass(frozen=True)
class AdaptiveSettings:
    """What an adaptive results file was computed with; a resumed run must use the same."""

    eps: float
    alpha: float = 0.001
    n0: int = 100
    n_max: int = 100_000
    method: str = DEFAULT_METHOD
    first_look: int = LOOK_FIRST
    look_growth: float = LOOK_GROWTH
    sigma: float = 0.5
    seed: int = 0
    cost: str = ""
    noise_block: int = 1000
    max_cost: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mode": "adaptive"}


def decide(smoothed: SmoothedClassifier, x: torch.Tensor, *, eps: float,
           costly: Sequence[int] | None = None, alpha: float = 0.001, n0: int = 100,
           n_max: int = 100_000, batch_size: int = 1000, index: int = 0,
           method: Method = DEFAULT_METHOD) -> Decision:
    """Return the sequential decision "is ``x`` certified at radius ``eps``?"; see
    :meth:`csrs.smoothing.SmoothedClassifier.decide`."""
    return smoothed.decide(x, eps=eps, costly=costly, alpha=alpha, n0=n0, n_max=n_max,
                           batch_size=batch_size, index=index, method=method)


def certify_dataset_adaptive(smoothed: SmoothedClassifier, dataset: Dataset,
                             cost_matrix: CostMatrix, *, eps: float, alpha: float = 0.001,
                             n0: int = 100, n_max: int = 100_000, batch_size: int = 1000,
                             indices: Iterable[int] | None = None,
                             out: str | Path | None = None, progress: bool = True,
                             method: Method = DEFAULT_METHOD, max_cost: float | None = None,
                             fingerprint: str | None = None) -> list[dict[str, str]]:
    """Decide every example at ``eps`` sequentially; return one row (``ADAPTIVE_COLUMNS``,
    values as strings) per example, in the order of ``indices``.

    Each example runs two tests on the same samples: the standard certificate at radius 0
    (``predict``/``correct``, for Acc) and the decision at ``eps`` (``certified``: cost-sensitive
    for sensitive examples, standard for the others). ``samples`` is the example's forward
    passes, selection included, until both tests stopped; ``time`` its share of the batches.

    With ``max_cost`` = T, the decision at ``eps`` is "kappa(eps) <= T" for a real-valued cost
    matrix: the binary decision for the classes {k : C[y][k] > T} (an example none of whose
    errors costs more than T is decided on the standard certificate, like a non-sensitive one).
    The guarantee is the binary one: P(certified and the claim is false) <= alpha.

    With ``out``, rows are appended to a TSV as examples finish (so in finishing order), and an
    existing file is resumed like csrs.certify.certify_dataset: finished examples are skipped,
    a torn last line is dropped, the result equals an uninterrupted run except ``time``; the
    settings are kept in ``<out>.json`` and resuming with other settings is an error.
    """
    if cost_matrix.num_classes != smoothed.num_classes:
        raise ValueError(f"cost matrix has {cost_matrix.num_classes} classes; the model has "
                         f"{smoothed.num_classes}")
    looks = look_schedule(n_max)
    settings = AdaptiveSettings(eps=eps, alpha=alpha, n0=n0, n_max=n_max, method=method,
                                sigma=smoothed.sigma, seed=smoothed.seed,
                                cost=cost_matrix.spec(), noise_block=smoothed.noise_block,
                                max_cost=None if max_cost is None else float(max_cost))

    def costly(label: int) -> list[int]:
        if max_cost is None:
            return cost_matrix.costly(label)
        return cost_matrix.costly_above(label, max_cost)

    if max_cost is not None:
        costly(0)  # validates max_cost before any sampling
    # Validate eps, alpha and method here rather than at the first example.
    SequentialTest(np.eye(smoothed.num_classes, dtype=np.int64)[0], eps=eps,
                   sigma=smoothed.sigma, alpha=alpha, n_max=n_max, method=method, looks=looks)
    indices = list(range(len(dataset)) if indices is None else indices)
    rows = (prepare_results(out, ADAPTIVE_COLUMNS, settings.as_dict(), "an adaptive certify run",
                            fingerprint=fingerprint) if out is not None else [])
    labels: dict[int, int] = {}

    def tests_for(costly: list[int] | None) -> TestFactory:
        def make_tests(selection: np.ndarray) -> list[SequentialTest]:
            common = dict(sigma=smoothed.sigma, alpha=alpha, n_max=n_max, method=method,
                          looks=looks)
            return [SequentialTest(selection, eps=0.0, **common),
                    SequentialTest(selection, eps=eps, costly=costly, **common)]
        return make_tests

    def items(todo: list[int]) -> Iterator[tuple[int, torch.Tensor, TestFactory]]:
        for index in todo:
            x, label = dataset[index]
            labels[index] = int(label)
            yield index, torch.as_tensor(x), tests_for(costly(int(label)) or None)

    with ResultsStream(out, ADAPTIVE_COLUMNS, rows, indices, desc=f"adaptive eps={eps:g}",
                       progress=progress) as stream:
        for finished in decide_many(smoothed, items(stream.todo), n0=n0, n_max=n_max,
                                    batch_size=batch_size):
            label = labels.pop(finished.index)
            stream.add([_row(finished, label, costly(label), eps)])
    return stream.select()


# -- rows and files -------------------------------------------------------------------------------
def _fmt(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else ("-inf" if value < 0 else "inf")


def _row(example: ExampleTests, label: int, costly: list[int], eps: float) -> dict[str, str]:
    """One ADAPTIVE_COLUMNS row (all values strings, as read back from the file)."""
    standard, at_eps = (test.decision for test in example.tests)
    candidate = example.tests[0].candidate
    values: dict[str, Any] = {
        "idx": example.index, "label": label, "predict": standard.prediction,
        "correct": int(standard.certified and standard.prediction == label),
        "sensitive": int(bool(costly)), "certified": int(at_eps.certified),
        "samples": example.samples, "eps": _fmt(eps), "candidate": candidate,
        "costly": int(candidate in costly), "p_a_lower": _fmt(at_eps.p_a_lower),
        "p_b_upper": _fmt(at_eps.p_b_upper), "radius_lower": _fmt(at_eps.radius_lower),
        "radius_upper": _fmt(at_eps.radius_upper), "stopped": at_eps.stopped,
        "time": f"{example.seconds:.4f}",
    }
    return {column: str(values[column]) for column in ADAPTIVE_COLUMNS}
