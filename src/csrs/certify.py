"""Certify a dataset: stream one TSV row per example, resume after a kill.

Each example gets every certificate from the same noise samples: Cohen's standard CERTIFY (the
columns ``predict radius correct``, used for Acc and Rob_non) and, for sensitive examples,
Algorithm 1's cost-sensitive certificate (``cs_predict r1 r2 cs_radius``, used for Rob_cs) and
the certified cost of the real-valued cost row (``cs_cost pair_radii pair_costs``, from which
kappa(eps) follows at every eps: one file serves every radius).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from csrs import distributed
from csrs.costs import CostMatrix, format_cost
from csrs.results import COLUMNS, ResultsStream, prepare_results
from csrs.smoothing import ESTIMATION, SELECTION, SmoothedClassifier
from csrs.stats import (
    ABSTAIN,
    Bounds,
    certify_cost_counts,
    certify_counts,
    cohen_certify_counts,
)

__all__ = ["CertifySettings", "certify_dataset", "model_fingerprint", "select_indices"]


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
    """What a results file was computed with; a resumed run must use the same."""

    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    bounds: Bounds = "sound"
    sigma: float = 0.5
    seed: int = 0
    cost: str = ""
    noise_block: int = 1000

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def select_indices(size: int, *, skip: int = 1, max_examples: int | None = None) -> list[int]:
    """Return every ``skip``-th example index (Cohen's --skip), at most ``max_examples`` of them."""
    if skip < 1:
        raise ValueError(f"--skip must be >= 1; got {skip}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"--max must be >= 1; got {max_examples}")
    indices = list(range(0, size, skip))
    return indices[:max_examples] if max_examples is not None else indices


def _fmt(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else ("-inf" if value < 0 else "inf")


def _rows_for_chunk(smoothed: SmoothedClassifier, inputs: torch.Tensor, labels: Sequence[int],
                    indices: Sequence[int], cost_matrix: CostMatrix,
                    settings: CertifySettings, batch_size: int) -> list[dict[str, Any]]:
    requests = []
    for row, index in enumerate(indices):
        requests.append((row, index, SELECTION, settings.n0))
        requests.append((row, index, ESTIMATION, settings.n))
    start = time.perf_counter()
    counts = smoothed.sample_counts_many(inputs, requests, batch_size=batch_size)
    seconds = (time.perf_counter() - start) / len(indices)
    rows = []
    for row, (index, label) in enumerate(zip(indices, labels, strict=True)):
        selection, estimation = counts[2 * row], counts[2 * row + 1]
        standard = cohen_certify_counts(selection, estimation, sigma=settings.sigma,
                                        alpha=settings.alpha)
        costs = cost_matrix.row(label)
        clean_cost = costs.max() if standard.prediction == ABSTAIN else costs[standard.prediction]
        result: dict[str, Any] = {
            "idx": index, "label": label, "predict": standard.prediction,
            "radius": _fmt(standard.radius), "correct": int(standard.prediction == label),
            "sensitive": int(cost_matrix.is_sensitive(label)),
            "cs_predict": "", "cs_costly": "", "r1": "", "r2": "", "cs_radius": "",
            "p_a_lower": _fmt(standard.p_a_lower), "p_b_upper": "",
            "clean_cost": format_cost(clean_cost), "cs_cost": "0", "pair_radii": "",
            "pair_costs": "", "time": f"{seconds:.4f}",
        }
        if result["sensitive"]:
            omega = cost_matrix.costly(label)
            cert = certify_counts(selection, estimation, sigma=settings.sigma,
                                  alpha=settings.alpha, costly=omega, bounds=settings.bounds)
            # cs_costly: whether the candidate c_A is costly, even where Algorithm 1 abstains
            # (the standard certificate at alpha may still predict c_A: Rob_cs^(std) needs it).
            candidate = int(selection.argmax())
            result.update(cs_predict=cert.prediction, cs_costly=int(candidate in omega),
                          r1=_fmt(cert.r1), r2=_fmt(cert.r2), cs_radius=_fmt(cert.radius),
                          p_b_upper=_fmt(cert.p_b_upper))
            # Always the sound allocation (bounds="paper" concerns Algorithm 1's columns only).
            cost = certify_cost_counts(selection, estimation, sigma=settings.sigma,
                                       alpha=settings.alpha, cost_row=costs)
            result.update(
                cs_cost=format_cost(cost.candidate_cost),
                pair_radii=",".join(f"{k}:{_fmt(r)}" for k, r in cost.pair_radius.items()),
                pair_costs=",".join(f"{k}:{format_cost(c)}" for k, c in cost.costs.items()))
        rows.append(result)
    return rows


def certify_dataset(smoothed: SmoothedClassifier, dataset: Dataset, cost_matrix: CostMatrix, *,
                    settings: CertifySettings, indices: Iterable[int] | None = None,
                    batch_size: int = 1000, out: str | Path | None = None,
                    progress: bool = True, fingerprint: str | None = None
                    ) -> list[dict[str, Any]]:
    """Certify ``dataset[i]`` for each index and return one result row (a dict) per example.

    With ``out``, rows are appended to a TSV as they are computed (flushed per chunk), and an
    existing file is resumed: its finished examples are skipped, a torn last line is dropped, and
    the finished file equals an uninterrupted run except for the ``time`` column. The settings
    are kept beside the file (``<out>.json``), with the model's ``fingerprint`` when given
    (:func:`model_fingerprint`); resuming with other settings or another model is an error, and
    so is a second process writing the same file at once (a lock, ``<out>.lock``).

    A model whose output has the wrong shape, or NaN / infinite logits for an example, stops
    the run with :class:`csrs.smoothing.ModelOutputError` naming the example; the rows already
    written stay.

    Several examples are packed into one batch when n0 + n is small, which keeps the model busy;
    their noise is still a function of (seed, example index) alone.

    Inside a process group (``torchrun``, :mod:`csrs.distributed`) every process calls this with
    the same arguments: the examples are shared out, rank 0 alone checks, repairs and appends to
    ``out`` (in the order of one process), and every process returns all rows. Since the noise
    depends on the example alone, the file equals a one-process run's, and a killed run resumes
    with any number of processes.
    """
    if cost_matrix.num_classes != smoothed.num_classes:
        raise ValueError(f"cost matrix has {cost_matrix.num_classes} classes; the model has "
                         f"{smoothed.num_classes}")
    if abs(settings.sigma - smoothed.sigma) > 1e-12:
        raise ValueError(f"settings.sigma {settings.sigma} differs from the smoothed "
                         f"classifier's {smoothed.sigma}")
    indices = list(range(len(dataset)) if indices is None else indices)
    context = distributed.current()
    rows: list[dict[str, Any]] = []
    failure: Exception | None = None
    if out is not None and context.is_main:
        try:
            rows = prepare_results(out, COLUMNS, settings.as_dict(), "a fixed-n certify run",
                                   fingerprint=fingerprint)
        except (ValueError, OSError) as error:
            failure = error
    # The others wait here for the file to be checked and repaired; all stop if it failed.
    failure, rows = distributed.broadcast_object((failure, rows))
    if failure is not None:
        raise failure
    per_chunk = max(1, min(256, (4 * batch_size) // (settings.n0 + settings.n)))
    writes = out is not None and context.is_main
    with ResultsStream(out if writes else None, COLUMNS, rows, indices, desc="certify",
                       progress=progress and context.is_main) as stream:
        # Each round, every process certifies its own consecutive part of the next examples;
        # gathered in rank order, the parts are those examples in their original order.
        for round_ in _chunks(stream.todo, per_chunk * context.world_size):
            share = math.ceil(len(round_) / context.world_size)
            chunk = round_[context.rank * share:(context.rank + 1) * share]
            mine = _certify_chunk(smoothed, dataset, chunk, cost_matrix, settings, batch_size)
            stream.add([row for part in distributed.all_gather_object(mine) for row in part])
    return stream.select()


def _certify_chunk(smoothed: SmoothedClassifier, dataset: Dataset, chunk: list[int],
                   cost_matrix: CostMatrix, settings: CertifySettings,
                   batch_size: int) -> list[dict[str, Any]]:
    """Returns the rows of the examples ``chunk`` (none for an empty chunk)."""
    if not chunk:
        return []
    items = [dataset[index] for index in chunk]
    inputs = torch.stack([torch.as_tensor(x) for x, _ in items])
    labels = [int(y) for _, y in items]
    return _rows_for_chunk(smoothed, inputs, labels, chunk, cost_matrix, settings, batch_size)


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
