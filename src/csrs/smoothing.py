"""The smoothed classifier g(x) = argmax_k P(f(x + delta) = k), delta ~ N(0, sigma^2 I).

:class:`SmoothedClassifier` wraps a base classifier with its noise level and noise seed, and
states each certificate it can give one input (Algorithm 1, the certified cost, Cohen's CERTIFY
and PREDICT, the sequential decision). Every vote it counts comes from the sampling engine of
:mod:`csrs.sampling`, whose noise depends on (seed, example index, stage) alone: the same input
gets the same certificate whatever the batch size and whichever inputs share its batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from csrs.sampling import (
    ESTIMATION,
    PREDICTION,
    SELECTION,
    Engine,
    ModelOutputError,
    fixed_job,
    sequential_job,
)
from csrs.sequential import DEFAULT_METHOD, Decision, Method, SequentialTest, look_schedule
from csrs.stats import (
    Bounds,
    Certificate,
    CostCertificate,
    StandardCertificate,
    certify_cost_counts,
    certify_counts,
    check_n,
    check_sigma,
    cohen_certify_counts,
    cohen_predict_counts,
)

__all__ = ["ESTIMATION", "PREDICTION", "SELECTION", "ModelOutputError", "SmoothedClassifier"]


class SmoothedClassifier:
    """A base classifier under Gaussian noise, with Cohen's and Algorithm 1's certificates.

    ``model`` maps a batch of inputs (in the space where the noise is added, [0, 1] pixels for
    the bundled models) to ``num_classes`` logits; normalisation belongs inside the model.
    ``seed`` keys every noise stream (:mod:`csrs.sampling`); ``noise_block`` is the block size of
    the streams (a larger block draws noise in fewer calls and holds more memory).
    """

    def __init__(self, model: nn.Module, num_classes: int, sigma: float, *,
                 device: str | torch.device | None = None, seed: int = 0,
                 noise_block: int = 1000, amp: bool = False,
                 channels_last: bool = False, compile: bool = False) -> None:
        self.sigma = check_sigma(sigma)
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
                or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")
        self.noise_block = check_n(noise_block, "noise_block")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an integer; got {seed!r}")
        if device is None:
            parameter = next(model.parameters(), None)
            device = parameter.device if parameter is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Options for the GPU: amp = bf16 autocast, channels_last memory format, and
        # torch.compile of the forward pass (the first batches then pay for compilation).
        self._forward = torch.compile(self.model) if compile else self.model
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.amp = amp
        self.channels_last = channels_last

    # -- the base classifier on a batch -------------------------------------------------------
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Return the model's logits for ``batch``, refusing any output that is not
        (len(batch), num_classes)."""
        if self.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp
                    else nullcontext())
        with autocast:
            logits = self._forward(batch)
        expected = (len(batch), self.num_classes)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ModelOutputError(f"the model returned output of shape {shape} for "
                                   f"{len(batch)} noisy inputs; expected {expected} "
                                   f"({self.num_classes} classes)")
        return logits

    def classify_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (argmax class, whether that class's logit is finite) of each input of
        ``batch``.

        A NaN or +inf logit makes argmax meaningless (fp16 overflow, a broken model): the engine
        refuses to certify such an example rather than count a vote for whichever class argmax
        happens to pick. One max per row finds both (a NaN anywhere in a row makes its max NaN),
        and a row of -inf only; a single -inf logit, a class of probability 0, is no fault.
        """
        largest, labels = self.logits(batch).max(dim=1)
        return labels, torch.isfinite(largest)

    # -- sampling -----------------------------------------------------------------------------
    def sample_counts_many(self, inputs: torch.Tensor,
                           requests: Sequence[tuple[int, int, int, int]], *,
                           batch_size: int = 1000) -> np.ndarray:
        """Return vote counts, shape (len(requests), num_classes), for many inputs at once.

        ``requests[r] = (row, index, stage, n)``: n noisy samples of ``inputs[row]``, with the
        noise of example ``index`` in ``stage`` (its stream of length n). Samples of all requests
        are packed into full batches of ``batch_size`` regardless of example boundaries.
        """
        jobs = []
        for slot, (row, index, stage, n) in enumerate(requests):
            jobs.append(fixed_job(index, inputs[row], [(stage, check_n(n))]))
            jobs[-1].state = slot
        counts = np.zeros((len(requests), self.num_classes), dtype=np.int64)
        for job in Engine(self, batch_size).run(jobs):
            counts[job.state] = job.counts[requests[job.state][2]]
        return counts

    def sample_counts(self, x: torch.Tensor, n: int, *, batch_size: int = 1000, index: int = 0,
                      stage: int = ESTIMATION) -> np.ndarray:
        """Return the vote counts of ``n`` noisy copies of one input ``x`` (no batch dim)."""
        return self.sample_counts_many(x.unsqueeze(0), [(0, index, stage, n)],
                                       batch_size=batch_size)[0]

    def _selection_and_estimation(self, x: torch.Tensor, n0: int, n: int, batch_size: int,
                                  index: int) -> tuple[np.ndarray, np.ndarray]:
        job = fixed_job(index, x, [(SELECTION, check_n(n0, "n0")), (ESTIMATION, check_n(n))])
        finished = next(Engine(self, batch_size).run([job]))
        return finished.counts[SELECTION], finished.counts[ESTIMATION]

    # -- certificates -------------------------------------------------------------------------
    def certify(self, x: torch.Tensor, *, costly: Sequence[int], n0: int = 100,
                n: int = 100_000, alpha: float = 0.001, batch_size: int = 1000,
                bounds: Bounds = "sound", index: int = 0) -> Certificate:
        """Return Algorithm 1's cost-sensitive certificate of one input ``x``.

        With ``bounds="sound"``, with probability at least 1 - alpha over the noise, the returned
        prediction is not in ``costly`` anywhere within the returned radius (or the certificate
        abstains / is costly). See :func:`csrs.stats.certify_counts`.
        """
        selection, estimation = self._selection_and_estimation(x, n0, n, batch_size, index)
        return certify_counts(selection, estimation, sigma=self.sigma, alpha=alpha,
                              costly=costly, bounds=bounds)

    def certify_cost(self, x: torch.Tensor, *, cost_row: Sequence[float], n0: int = 100,
                     n: int = 100_000, alpha: float = 0.001, batch_size: int = 1000,
                     index: int = 0) -> CostCertificate:
        """Return the certified worst-case cost of one input for every radius: with probability
        at least 1 - alpha over the noise, for every eps, no perturbation of norm <= eps makes
        the smoothed classifier predict a class costing more than ``.cost_at(eps)``. See
        :func:`csrs.stats.certify_cost_counts`."""
        selection, estimation = self._selection_and_estimation(x, n0, n, batch_size, index)
        return certify_cost_counts(selection, estimation, sigma=self.sigma, alpha=alpha,
                                   cost_row=cost_row)

    def certify_standard(self, x: torch.Tensor, *, n0: int = 100, n: int = 100_000,
                         alpha: float = 0.001, batch_size: int = 1000,
                         index: int = 0) -> StandardCertificate:
        """Return Cohen et al.'s CERTIFY of one input: with probability >= 1 - alpha the smoothed
        classifier returns ``prediction`` within ``radius``."""
        selection, estimation = self._selection_and_estimation(x, n0, n, batch_size, index)
        return cohen_certify_counts(selection, estimation, sigma=self.sigma, alpha=alpha)

    def predict(self, x: torch.Tensor, *, n: int = 100_000, alpha: float = 0.001,
                batch_size: int = 1000, index: int = 0) -> int:
        """Return Cohen et al.'s PREDICT: the smoothed class, or ABSTAIN; it differs from the
        true smoothed prediction with probability at most alpha."""
        counts = self.sample_counts(x, n, batch_size=batch_size, index=index, stage=PREDICTION)
        return cohen_predict_counts(counts, alpha=alpha)

    def decide(self, x: torch.Tensor, *, eps: float | Sequence[float],
               costly: Sequence[int] | None = None, alpha: float = 0.001, n0: int = 100,
               n_max: int = 100_000, batch_size: int = 1000, index: int = 0,
               method: Method = DEFAULT_METHOD, looks: Sequence[int] | None = None
               ) -> Decision:
        """Return the sequential decision "is ``x`` certified at radius ``eps``?", spending
        samples only until the answer is known.

        ``eps`` is one radius or an increasing grid of them: one anytime-valid test then decides
        every listed eps at once (``.certified`` is a tuple aligned with ``eps``, nested) and
        stops when each is decided or at ``n_max``. ``costly=None`` is the standard certificate
        (Omega = every class but the prediction); otherwise the cost-sensitive one for Omega_y =
        ``costly``, where a costly prediction is never certified.

        Guarantee, at the same ``alpha`` for a grid as for one eps: with probability at least
        1 - alpha over the noise, no listed eps at or above the true radius R*(p) is certified,
        whatever the stopping time. Why no split over the eps is needed: every eps is read off
        the same sequence of radius bounds, and certifying any listed eps >= R*(p) means a bound
        exceeded the smallest listed eps >= R*(p), hence R*(p): one event
        (:class:`csrs.sequential.SequentialTest`; docs/theory.md#eps-grid).
        ``samples`` counts every forward pass, the n0 selection samples included. ``looks``
        replaces the default geometric schedule (it must end at ``n_max``).
        """
        check_n(n0, "n0")
        looks = look_schedule(n_max) if looks is None else tuple(looks)

        def make_tests(selection: np.ndarray) -> list[SequentialTest]:
            return [SequentialTest(selection, eps=eps, sigma=self.sigma, alpha=alpha,
                                   costly=costly, n_max=n_max, method=method, looks=looks)]

        # Refuse a bad eps, alpha or method before any sampling.
        make_tests(np.eye(self.num_classes, dtype=np.int64)[0])
        job = sequential_job(index, x, n0=n0, n_max=n_max, make_tests=make_tests)
        finished = next(Engine(self, batch_size).run([job]))
        return finished.state[0].decision
