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
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
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
from csrs.smoothing import ESTIMATION, SELECTION, SmoothedClassifier

__all__ = ["AdaptiveSettings", "certify_dataset_adaptive", "decide"]

TestFactory = Callable[[np.ndarray], list[SequentialTest]]


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

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mode": "adaptive"}


def decide(smoothed: SmoothedClassifier, x: torch.Tensor, *, eps: float,
           costly: Sequence[int] | None = None, alpha: float = 0.001, n0: int = 100,
           n_max: int = 100_000, batch_size: int = 1000, index: int = 0,
           method: Method = DEFAULT_METHOD) -> Decision:
    """Return the sequential decision "is ``x`` certified at radius ``eps``?".

    ``costly=None`` is the standard certificate (Omega = every class but the prediction);
    otherwise the cost-sensitive one for Omega_y = ``costly``, where a costly prediction is never
    certified. Whatever the stopping time, P(certified and R*(p) <= eps) <= alpha over the noise
    (csrs.sequential.SequentialTest states the alpha accounting of each ``method``).
    ``samples`` counts every forward pass, the n0 selection samples included.
    """
    looks = look_schedule(n_max)

    def make_tests(selection: np.ndarray) -> list[SequentialTest]:
        return [SequentialTest(selection, eps=eps, sigma=smoothed.sigma, alpha=alpha,
                               costly=costly, n_max=n_max, method=method, looks=looks)]

    finished = next(_decide_many(smoothed, [(index, torch.as_tensor(x), make_tests)],
                                 n0=n0, n_max=n_max, batch_size=batch_size))
    return finished.tests[0].decision


def certify_dataset_adaptive(smoothed: SmoothedClassifier, dataset: Dataset,
                             cost_matrix: CostMatrix, *, eps: float, alpha: float = 0.001,
                             n0: int = 100, n_max: int = 100_000, batch_size: int = 1000,
                             indices: Iterable[int] | None = None,
                             out: str | Path | None = None, progress: bool = True,
                             method: Method = DEFAULT_METHOD) -> list[dict[str, str]]:
    """Decide every example at ``eps`` sequentially; return one row (``ADAPTIVE_COLUMNS``,
    values as strings) per example, in the order of ``indices``.

    Each example runs two tests on the same samples: the standard certificate at radius 0
    (``predict``/``correct``, for Acc) and the decision at ``eps`` (``certified``: cost-sensitive
    for sensitive examples, standard for the others). ``samples`` is the example's forward
    passes, selection included, until both tests stopped; ``time`` its share of the batches.

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
                                cost=cost_matrix.spec(), noise_block=smoothed.noise_block)
    # Validate eps, alpha and method here rather than at the first example.
    SequentialTest(np.eye(smoothed.num_classes, dtype=np.int64)[0], eps=eps,
                   sigma=smoothed.sigma, alpha=alpha, n_max=n_max, method=method, looks=looks)
    indices = list(range(len(dataset)) if indices is None else indices)
    rows = (prepare_results(out, ADAPTIVE_COLUMNS, settings.as_dict(), "an adaptive certify run")
            if out is not None else [])
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
            yield index, torch.as_tensor(x), tests_for(cost_matrix.costly(int(label)) or None)

    with ResultsStream(out, ADAPTIVE_COLUMNS, rows, indices, desc=f"adaptive eps={eps:g}",
                       progress=progress) as stream:
        for finished in _decide_many(smoothed, items(stream.todo), n0=n0, n_max=n_max,
                                     batch_size=batch_size):
            label = labels.pop(finished.index)
            stream.add([_row(finished, label, cost_matrix.costly(label), eps)])
    return stream.select()


# -- the scheduler --------------------------------------------------------------------------------
@dataclass
class _Example:
    """One example in flight: its counts so far and its tests (made once selection is done)."""

    index: int
    x: torch.Tensor
    make_tests: TestFactory
    selection: np.ndarray
    estimation: np.ndarray
    tests: list[SequentialTest] = field(default_factory=list)
    done: int = 0          # estimation samples counted
    outstanding: int = 0   # samples requested, not yet counted
    seconds: float = 0.0
    block: tuple[int, torch.Tensor] | None = None  # the cached current estimation noise block

    @property
    def samples(self) -> int:
        return int(self.selection.sum()) + self.done


def _decide_many(smoothed: SmoothedClassifier,
                 items: Iterable[tuple[int, torch.Tensor, TestFactory]], *, n0: int,
                 n_max: int, batch_size: int) -> Iterator[_Example]:
    """Run the tests of many examples, yielding each example when all its tests have stopped.

    A queue of pieces (example, stage, start, stop) of noise streams feeds full batches of
    ``batch_size``; when a queue holds less than a batch, new examples are admitted (selection
    first, then the first look). A finished piece updates its example's tests, which either
    stop or queue the samples up to their next look.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if not isinstance(n0, (int, np.integer)) or n0 < 1:
        raise ValueError(f"n0 must be a positive integer; got {n0!r}")
    classes = smoothed.num_classes
    estimation_block = min(smoothed.noise_block, n_max)  # the fixed-n stream of n = n_max
    pending = iter(items)
    queue: deque[tuple[_Example, int, int, int]] = deque()
    queued = 0
    exhausted = False
    while True:
        while queued < batch_size and not exhausted:
            item = next(pending, None)
            if item is None:
                exhausted = True
                break
            index, x, make_tests = item
            example = _Example(index, x.to(smoothed.device), make_tests,
                               np.zeros(classes, np.int64), np.zeros(classes, np.int64),
                               outstanding=n0)
            queue.append((example, SELECTION, 0, n0))
            queued += n0
        if not queue:
            return
        start_time = time.perf_counter()
        pieces, filled = [], 0
        while queue and filled < batch_size:
            example, stage, start, stop = queue.popleft()
            take = min(stop - start, batch_size - filled)
            if start + take < stop:
                queue.appendleft((example, stage, start + take, stop))
            pieces.append((example, stage, start, start + take))
            filled += take
        queued -= filled
        counts = _count_pieces(smoothed, pieces, n0, estimation_block)
        finished, follow_ups = [], []
        for (example, stage, start, stop), piece_counts in zip(pieces, counts, strict=True):
            if stage == SELECTION:
                example.selection += piece_counts
            else:
                example.estimation += piece_counts
                example.done += stop - start
            example.outstanding -= stop - start
            if example.outstanding == 0:
                next_look = _advance(example)
                if next_look is None:
                    finished.append(example)
                else:
                    follow_ups.append((example, ESTIMATION, example.done, next_look))
        for example, stage, start, stop in follow_ups:
            example.outstanding = stop - start
            queue.append((example, stage, start, stop))
            queued += stop - start
        seconds = time.perf_counter() - start_time
        for example, _, start, stop in pieces:
            example.seconds += seconds * (stop - start) / filled
        for example in finished:
            example.block = None
            yield example


def _advance(example: _Example) -> int | None:
    """Update the example's tests with its counts; return the next look, or None when done."""
    if not example.tests:
        example.tests = example.make_tests(example.selection)
    else:
        for test in example.tests:
            if test.decision is None:
                test.update(example.estimation)
    looks = {test.next_look for test in example.tests if test.decision is None}
    if not looks:
        return None
    if len(looks) > 1:
        raise ValueError("the tests of one example must share one look schedule")
    return looks.pop()


@torch.inference_mode()
def _count_pieces(smoothed: SmoothedClassifier, pieces: list[tuple[_Example, int, int, int]],
                  n0: int, estimation_block: int) -> np.ndarray:
    """Classify one batch made of the given pieces; return the class counts of each piece."""
    noises, inputs = [], []
    for example, stage, start, stop in pieces:
        noise = (_selection_noise(smoothed, example, n0)[start:stop] if stage == SELECTION
                 else _estimation_noise(smoothed, example, start, stop, estimation_block))
        noises.append(noise)
        inputs.append(example.x.expand(stop - start, *example.x.shape))
    labels = smoothed._classify(torch.cat(inputs) + torch.cat(noises))
    sizes = torch.tensor([stop - start for _, _, start, stop in pieces], device=labels.device)
    owners = torch.repeat_interleave(torch.arange(len(pieces), device=labels.device), sizes)
    classes = smoothed.num_classes
    counts = torch.bincount(owners * classes + labels, minlength=len(pieces) * classes)
    return counts.view(len(pieces), classes).cpu().numpy()


def _selection_noise(smoothed: SmoothedClassifier, example: _Example, n0: int) -> torch.Tensor:
    """The n0 selection noise draws, exactly as fixed-n certification's."""
    block = min(smoothed.noise_block, n0)
    return torch.cat([smoothed._noise(example.index, SELECTION, number, block, example.x.shape,
                                      example.x.dtype)
                      for number in range(math.ceil(n0 / block))])[:n0]


def _estimation_noise(smoothed: SmoothedClassifier, example: _Example, start: int, stop: int,
                      block_size: int) -> torch.Tensor:
    """Estimation noise draws start..stop-1 of the example's stream, keeping the
    last block it touches (the next look usually continues inside it)."""
    parts = []
    for number in range(start // block_size, (stop - 1) // block_size + 1):
        if example.block is None or example.block[0] != number:
            example.block = (number, smoothed._noise(example.index, ESTIMATION, number,
                                                     block_size, example.x.shape,
                                                     example.x.dtype))
        offset = number * block_size
        parts.append(example.block[1][max(start, offset) - offset:
                                      min(stop, offset + block_size) - offset])
    return torch.cat(parts) if len(parts) > 1 else parts[0]


# -- rows and files -------------------------------------------------------------------------------
def _fmt(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else ("-inf" if value < 0 else "inf")


def _row(example: _Example, label: int, costly: list[int], eps: float) -> dict[str, str]:
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
