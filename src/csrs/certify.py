"""Certify a dataset: stream one TSV row per example, resume after a kill, shard over processes.

Two modes share one path (the sampling engine of :mod:`csrs.sampling`, one results stream):

- **fixed n** (:class:`CertifySettings`): each example gets every certificate from the same
  noise samples: Cohen's standard CERTIFY (``predict radius correct``, for Acc and Rob_non),
  Algorithm 1's cost-sensitive certificate for sensitive examples (``cs_predict r1 r2
  cs_radius``, for Rob_cs) and the certified cost of its real-valued cost row (``cost_r1 cs_cost
  pair_radii pair_costs``, from which kappa(eps) follows at every eps: one file serves every
  radius);
- **sequential** (:class:`SequentialSettings`): each example is decided at every eps of a grid
  by sequential tests that stop as soon as the answers are known (:mod:`csrs.sequential`): the
  standard test at radius 0 and at each eps, and for sensitive examples the cost-sensitive one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from csrs import distributed
from csrs.costs import CostMatrix, format_cost
from csrs.metrics import DecisionArrays
from csrs.results import (
    COLUMNS,
    FIXED,
    SEQUENTIAL,
    ResultsStream,
    eps_column,
    format_float,
    prepare_results,
    sequential_columns,
)
from csrs.sampling import ESTIMATION, SELECTION, Engine, Job, fixed_job, sequential_job
from csrs.sequential import (
    DEFAULT_METHOD,
    LOOK_FIRST,
    LOOK_GROWTH,
    METHODS,
    SequentialTest,
    check_grid,
    look_schedule,
)
from csrs.smoothing import SmoothedClassifier
from csrs.stats import (
    ABSTAIN,
    Bounds,
    certify_cost_counts,
    certify_counts,
    check_alpha,
    check_n,
    cohen_certify_counts,
)

__all__ = ["CertifySettings", "SequentialSettings", "certify_dataset", "decisions_of",
           "model_fingerprint", "select_indices"]


def model_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """Return a short hash of a model's weights (names, shapes, dtypes and values), which a
    results file records so that it is never resumed with another model."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class CertifySettings:
    """Fixed-n certification: n0 selection and n estimation samples per example, failure
    probability ``alpha`` per certificate, Algorithm 1's ``bounds`` ("sound", or "paper": as
    printed, whose max(R1, R2) holds only at 1 - 1.5 alpha). The noise level, seed and noise
    blocks are the smoothed classifier's."""

    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    bounds: Bounds = "sound"

    def __post_init__(self) -> None:
        check_n(self.n0, "n0")
        check_n(self.n, "n")
        check_alpha(self.alpha)
        if self.bounds not in ("sound", "paper"):
            raise ValueError(f"bounds must be 'sound' or 'paper'; got {self.bounds!r}")


@dataclass(frozen=True)
class SequentialSettings:
    """Sequential certification at every radius of the increasing grid ``eps``, with at most
    ``n_max`` estimation samples per example (after n0 selection samples), looks at ``first_look``
    samples growing by ``look_growth``, the test ``method``, and failure probability ``alpha``
    per test, whatever the grid's length. With ``max_cost`` = T the cost-sensitive decision is
    "kappa(eps) <= T": no class costing more than T reachable within eps."""

    eps: tuple[float, ...]
    alpha: float = 0.001
    n0: int = 100
    n_max: int = 100_000
    method: str = DEFAULT_METHOD
    max_cost: float | None = None
    first_look: int = LOOK_FIRST
    look_growth: float = LOOK_GROWTH

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", check_grid(self.eps))
        check_alpha(self.alpha)
        check_n(self.n0, "n0")
        check_n(self.n_max, "n_max")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.max_cost is not None and not (isinstance(self.max_cost, (int, float))
                                              and 0 <= self.max_cost < math.inf):
            raise ValueError(f"max_cost must be a finite number >= 0; got {self.max_cost!r}")
        self.looks()

    def looks(self) -> tuple[int, ...]:
        """The look schedule: cumulative estimation samples at which the tests look."""
        return look_schedule(self.n_max, first=self.first_look, growth=self.look_growth)


def select_indices(size: int, *, skip: int = 1, max_examples: int | None = None) -> list[int]:
    """Return every ``skip``-th example index (Cohen's --skip), at most ``max_examples`` of them."""
    if skip < 1:
        raise ValueError(f"--skip must be >= 1; got {skip}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"--max must be >= 1; got {max_examples}")
    indices = list(range(0, size, skip))
    return indices[:max_examples] if max_examples is not None else indices


# -- one row per example ----------------------------------------------------------------------
def _clean_cost(costs: np.ndarray, prediction: int) -> str:
    """C[y][prediction]; an abstention costs the row's largest cost."""
    return format_cost(costs.max() if prediction == ABSTAIN else costs[prediction])


def _fixed_row(job: Job, label: int, cost_matrix: CostMatrix, settings: CertifySettings,
               sigma: float) -> dict[str, Any]:
    """One :data:`csrs.results.COLUMNS` row from an example's counts (values as strings, as
    read back from a file)."""
    selection, estimation = job.counts[SELECTION], job.counts[ESTIMATION]
    standard = cohen_certify_counts(selection, estimation, sigma=sigma, alpha=settings.alpha)
    costs = cost_matrix.row(label)
    row: dict[str, Any] = {
        "idx": job.index, "label": label, "predict": standard.prediction,
        "radius": format_float(standard.radius), "correct": int(standard.prediction == label),
        "sensitive": int(cost_matrix.is_sensitive(label)),
        "cs_predict": "", "cs_costly": "", "r1": "", "r2": "", "cs_radius": "",
        "p_a_lower": format_float(standard.p_a_lower), "p_b_upper": "",
        "clean_cost": _clean_cost(costs, standard.prediction), "cost_r1": "", "cs_cost": "0",
        "pair_radii": "", "pair_costs": "", "time": f"{job.seconds:.4f}",
    }
    if row["sensitive"]:
        omega = cost_matrix.costly(label)
        cert = certify_counts(selection, estimation, sigma=sigma, alpha=settings.alpha,
                              costly=omega, bounds=settings.bounds)
        # cs_costly: whether the candidate c_A is costly, even where Algorithm 1 abstains
        # (the standard certificate at alpha may still predict c_A: Rob_cs^(std) needs it).
        row.update(cs_predict=cert.prediction, cs_costly=int(int(selection.argmax()) in omega),
                   r1=format_float(cert.r1), r2=format_float(cert.r2),
                   cs_radius=format_float(cert.radius), p_b_upper=format_float(cert.p_b_upper))
        # The certified cost from its own certificate, whatever ``bounds`` says: its R1 (at
        # alpha/2) is not Algorithm 1's column r1 (at alpha with bounds="paper"), and mixing the
        # two was measured unsound.
        cost = certify_cost_counts(selection, estimation, sigma=sigma, alpha=settings.alpha,
                                   cost_row=costs)
        row.update(
            cost_r1=format_float(cost.r1), cs_cost=format_cost(cost.candidate_cost),
            pair_radii=",".join(f"{k}:{format_float(r)}" for k, r in cost.pair_radius.items()),
            pair_costs=",".join(f"{k}:{format_cost(c)}" for k, c in cost.costs.items()))
    return {column: str(row[column]) for column in COLUMNS}


def _costly(cost_matrix: CostMatrix, label: int, settings: SequentialSettings) -> list[int]:
    """The classes the cost-sensitive test keeps out: Omega_y, or those costing more than
    ``max_cost``."""
    if settings.max_cost is None:
        return cost_matrix.costly(label)
    return cost_matrix.costly_above(label, settings.max_cost)


def _standard_grid(grid: tuple[float, ...]) -> tuple[float, ...]:
    """The standard test's radii: 0 (for Acc) and the grid."""
    return grid if grid[0] == 0 else (0.0, *grid)


def _sequential_job(smoothed: SmoothedClassifier, index: int, x: torch.Tensor, costly: list[int],
                    settings: SequentialSettings) -> Job:
    looks = settings.looks()
    common = dict(sigma=smoothed.sigma, alpha=settings.alpha, n_max=settings.n_max,
                  method=settings.method, looks=looks)

    def make_tests(selection: np.ndarray) -> list[SequentialTest]:
        tests = [SequentialTest(selection, eps=_standard_grid(settings.eps), **common)]
        if costly:
            tests.append(SequentialTest(selection, eps=settings.eps, costly=costly, **common))
        return tests

    return sequential_job(index, x, n0=settings.n0, n_max=settings.n_max, make_tests=make_tests)


def _sequential_row(job: Job, label: int, cost_matrix: CostMatrix, costly: list[int],
                    settings: SequentialSettings) -> dict[str, Any]:
    """One :func:`csrs.results.sequential_columns` row from an example's finished tests (values
    as strings)."""
    standard = job.state[0].decision
    at_zero = standard.certified[0]
    offset = len(standard.certified) - len(settings.eps)
    candidate = job.state[0].candidate
    predict = candidate if at_zero else ABSTAIN
    sensitive = bool(costly)
    cs = job.state[1].decision if sensitive else None
    outcomes = [*standard.stopped, *(cs.stopped if cs else ())]
    row: dict[str, Any] = {
        "idx": job.index, "label": label, "predict": predict, "correct": int(predict == label),
        "sensitive": int(sensitive), "candidate": candidate,
        "costly": int(candidate in costly) if sensitive else "",
        "clean_cost": _clean_cost(cost_matrix.row(label), predict), "samples": job.samples,
        "radius_lower": format_float(cs.radius_lower) if cs else "",
        "radius_upper": format_float(cs.radius_upper) if cs else "",
        "std_radius_lower": format_float(standard.radius_lower),
        "std_radius_upper": format_float(standard.radius_upper),
        "stopped": "budget" if "budget" in outcomes else "decided",
        "time": f"{job.seconds:.4f}",
    }
    for i, eps in enumerate(settings.eps):
        row[eps_column("standard", eps)] = int(standard.certified[offset + i])
        row[eps_column("certified", eps)] = int(cs.certified[i]) if cs else ""
    return {column: str(row[column]) for column in sequential_columns(settings.eps)}


# -- the dataset ------------------------------------------------------------------------------
def _check_cost_matrix(cost_matrix: CostMatrix, smoothed: SmoothedClassifier) -> None:
    if cost_matrix.num_classes != smoothed.num_classes:
        raise ValueError(f"cost matrix has {cost_matrix.num_classes} classes; the model has "
                         f"{smoothed.num_classes}")


def _file_settings(settings: CertifySettings | SequentialSettings, smoothed: SmoothedClassifier,
                   cost_matrix: CostMatrix, checkpoint: str | Path | None) -> dict[str, Any]:
    """What the settings file beside the results records: the mode's settings, the smoothed
    classifier's sigma, seed and noise blocks, the cost matrix (spec, words and rows) and the
    checkpoint the model came from."""
    values = asdict(settings)
    if isinstance(settings, SequentialSettings):
        values["eps"] = list(settings.eps)
    return {**values, "sigma": smoothed.sigma, "seed": smoothed.seed,
            "noise_block": smoothed.noise_block, "cost": cost_matrix.spec(),
            "cost_description": str(cost_matrix), "cost_matrix": cost_matrix.to_list(),
            "class_names": cost_matrix.class_names,
            "checkpoint": None if checkpoint is None else str(checkpoint)}


def certify_dataset(smoothed: SmoothedClassifier, dataset: Dataset, cost_matrix: CostMatrix, *,
                    settings: CertifySettings | SequentialSettings,
                    indices: Iterable[int] | None = None, batch_size: int = 1000,
                    out: str | Path | None = None, progress: bool = True,
                    fingerprint: str | None = None,
                    checkpoint: str | Path | None = None) -> list[dict[str, Any]]:
    """Certify ``dataset[i]`` for each index and return one result row (a dict of strings, as
    in the file) per example, in the order of ``indices``.

    ``settings`` chooses the mode: :class:`CertifySettings` (fixed n; columns
    :data:`csrs.results.COLUMNS`) or :class:`SequentialSettings` (the decisions at every eps of a
    grid; columns :func:`csrs.results.sequential_columns`). The noise is the smoothed
    classifier's: its sigma, seed and noise blocks, which the results record.

    With ``out``, rows are appended to a TSV as examples finish, and an existing file is
    resumed: its finished examples are kept and skipped, a torn last line is dropped, and the
    finished file equals an uninterrupted run's except for the ``time`` column (rows are put in
    the order of ``indices`` once all are done). The settings are kept beside the file
    (``<out>.json``, with the model's ``fingerprint`` (:func:`model_fingerprint`) and the
    ``checkpoint`` path when given); resuming with other settings, another noise or another model
    is an error, and so is a second process writing the same file at once (a lock,
    ``<out>.lock``).

    A model whose output has the wrong shape, or NaN / infinite logits for an example, stops
    the run with :class:`csrs.sampling.ModelOutputError` naming the example; the rows already
    written stay.

    Inside a process group (``torchrun``, :mod:`csrs.distributed`) every process calls this with
    the same arguments: the examples are shared out, rank 0 alone checks, repairs and appends to
    ``out``, and every process returns all rows. Since the noise depends on the example alone,
    the file equals a one-process run's, and a killed run resumes with any number of processes.
    """
    _check_cost_matrix(cost_matrix, smoothed)
    if not isinstance(settings, (CertifySettings, SequentialSettings)):
        raise ValueError(f"settings must be CertifySettings (fixed n) or SequentialSettings; "
                         f"got {type(settings).__name__}")
    sequential = isinstance(settings, SequentialSettings)
    kind, columns = ((SEQUENTIAL, sequential_columns(settings.eps)) if sequential
                     else (FIXED, COLUMNS))
    indices = list(range(len(dataset)) if indices is None else indices)
    context = distributed.current()
    rows: list[dict[str, Any]] = []
    failure: Exception | None = None
    if out is not None and context.is_main:
        try:
            rows = prepare_results(out, columns, _file_settings(settings, smoothed, cost_matrix,
                                                                checkpoint),
                                   kind, fingerprint=fingerprint)
        except (ValueError, OSError) as error:
            failure = error
    # The others wait here for the file to be checked and repaired; all stop if it failed.
    failure, rows = distributed.broadcast_object((failure, rows))
    if failure is not None:
        raise failure
    labels: dict[int, int] = {}
    costly: dict[int, list[int]] = {}

    def jobs(todo: list[int]) -> Iterator[Job]:
        for index in todo:
            x, label = dataset[index]
            labels[index] = int(label)
            x = torch.as_tensor(x)
            if sequential:
                costly[index] = _costly(cost_matrix, int(label), settings)
                yield _sequential_job(smoothed, index, x, costly[index], settings)
            else:
                yield fixed_job(index, x, [(SELECTION, settings.n0), (ESTIMATION, settings.n)])

    def row_of(job: Job) -> dict[str, Any]:
        label = labels.pop(job.index)
        if sequential:
            return _sequential_row(job, label, cost_matrix, costly.pop(job.index), settings)
        return _fixed_row(job, label, cost_matrix, settings, smoothed.sigma)

    engine = Engine(smoothed, batch_size)
    desc = ("certify --adaptive eps " + ",".join(f"{e:g}" for e in settings.eps) if sequential
            else "certify")
    writes = out is not None and context.is_main
    with ResultsStream(out if writes else None, columns, rows, indices, desc=desc,
                       progress=progress and context.is_main) as stream:
        if not context.distributed:
            for job in engine.run(jobs(stream.todo)):
                stream.add([row_of(job)])
        else:
            # Each round, every process certifies its own consecutive part of the next examples;
            # gathered in rank order, the parts are those examples in their original order.
            # Fixed n: a few batches' worth of examples; sequential: enough examples in flight
            # to fill batches while their tests stop at different looks.
            per_process = (32 if sequential else
                           max(1, min(256, (4 * batch_size) // (settings.n0 + settings.n))))
            for round_ in _chunks(stream.todo, per_process * context.world_size):
                share = math.ceil(len(round_) / context.world_size)
                mine = round_[context.rank * share:(context.rank + 1) * share]
                done = {job.index: row_of(job) for job in engine.run(jobs(mine))}
                ordered = [done[index] for index in mine]
                stream.add([row for part in distributed.all_gather_object(ordered)
                            for row in part])
    return stream.select()


def decisions_of(rows: list[dict[str, Any]], cost_matrix: CostMatrix,
                 settings: SequentialSettings) -> DecisionArrays:
    """The decisions of sequential result rows that :func:`certify_dataset` returned, for the
    metrics, without reading their file back."""
    return DecisionArrays.from_sequential(rows, settings.eps, {
        "cost_matrix": cost_matrix.to_list(), "class_names": cost_matrix.class_names,
        "max_cost": settings.max_cost})


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
