"""The smoothed classifier g(x) = argmax_k P(f(x + delta) = k), delta ~ N(0, sigma^2 I).

This is the only torch-heavy hot path of certification: draw noise, run the base classifier,
count its votes. Counts stay on the model's device until all batches of a request are done (one
host transfer per request, none per batch).

Determinism by design: the noise of example ``index`` in sampling stage ``stage`` is cut into
blocks of ``noise_block`` samples, and block ``b`` is drawn from a generator seeded with a hash of
(seed, index, stage, b) alone. The same example therefore sees the same noise whatever the batch
size, the order of examples, how examples are packed into batches or how a dataset is split
across processes. (Drawing one long stream instead would not do: torch's normal sampler does not
give the same numbers for one draw of 2n as for two draws of n.)
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from csrs.stats import (
    Bounds,
    Certificate,
    StandardCertificate,
    certify_counts,
    cohen_certify_counts,
    cohen_predict_counts,
)

__all__ = ["SELECTION", "ESTIMATION", "PREDICTION", "SmoothedClassifier", "noise_seed"]

# Sampling stages: independent noise streams for the same example.
SELECTION, ESTIMATION, PREDICTION = 0, 1, 2
_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def noise_seed(seed: int, index: int, stage: int, block: int) -> int:
    """Return the generator seed of one noise block: a SplitMix64 hash of its coordinates."""
    state = 0
    for part in (seed, index, stage, block):
        state = _splitmix64(state ^ (int(part) & _MASK64))
    return state & ((1 << 63) - 1)


class SmoothedClassifier:
    """A base classifier under Gaussian noise, with Cohen's and Algorithm 1's certificates.

    ``model`` maps a batch of inputs (in the space where the noise is added, [0, 1] pixels for
    the bundled models) to ``num_classes`` logits; normalisation belongs inside the model.
    """

    def __init__(self, model: nn.Module, num_classes: int, sigma: float, *,
                 device: str | torch.device | None = None, seed: int = 0,
                 noise_block: int = 1000, amp: bool = False,
                 channels_last: bool = False, compile: bool = False) -> None:
        if not sigma > 0:
            raise ValueError(f"sigma must be positive; got {sigma!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2; got {num_classes}")
        if noise_block < 1:
            raise ValueError(f"noise_block must be >= 1; got {noise_block}")
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
        self.sigma = float(sigma)
        self.seed = int(seed)
        self.noise_block = int(noise_block)
        self.amp = amp
        self.channels_last = channels_last

    # -- sampling -----------------------------------------------------------------------------
    def _noise(self, index: int, stage: int, block: int, size: int, shape: torch.Size,
               dtype: torch.dtype) -> torch.Tensor:
        """Return noise block ``block`` of (index, stage), N(0, sigma^2 I): the numbers
        :meth:`sample_counts_many` draws for it."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(noise_seed(self.seed, index, stage, block))
        noise = torch.empty((size, *shape), device=self.device, dtype=dtype)
        return noise.normal_(0.0, self.sigma, generator=generator)

    def _classify(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp
                    else nullcontext())
        with autocast:
            return self._forward(batch).argmax(dim=1)

    @torch.inference_mode()
    def sample_counts_many(self, inputs: torch.Tensor, requests: Sequence[tuple[int, int, int]],
                           *, batch_size: int = 1000) -> np.ndarray:
        """Return vote counts, shape (len(requests), num_classes), for many inputs at once.

        ``requests[r] = (row, index, stage, n)``: n noisy samples of ``inputs[row]``, with the
        noise of example ``index`` in ``stage``. Requests are packed into full batches of
        ``batch_size`` regardless of example boundaries, so small n still keeps the model busy.
        Memory holds one batch plus one noise block, whatever n.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        inputs = inputs.to(self.device)
        counts = torch.zeros(len(requests) * self.num_classes, dtype=torch.int64,
                             device=self.device)
        # Each block is drawn whole straight into the buffer behind the samples waiting there,
        # so the buffer holds a batch plus the largest block; samples past a full batch wait
        # for the next one. Nothing here reads a device value back: no host sync per batch.
        largest_block = max((min(self.noise_block, n) for *_, n in requests), default=0)
        batch = torch.empty((batch_size + largest_block, *inputs.shape[1:]), dtype=inputs.dtype,
                            device=self.device)
        # The slot of each waiting sample, times num_classes: its row of counts.
        owners = torch.empty(len(batch), dtype=torch.int64, device=self.device)
        ones = torch.ones(batch_size, dtype=torch.int64, device=self.device)
        generator = torch.Generator(device=self.device)
        filled = 0
        for slot, (row, index, stage, n) in enumerate(requests):
            # Blocks hold min(noise_block, n) samples; the last one may be cut short.
            block_size = min(self.noise_block, n)
            for block, start in enumerate(range(0, n, block_size)):
                used = min(block_size, n - start)
                generator.manual_seed(noise_seed(self.seed, index, stage, block))
                # sigma inside normal_ saves a pass over the block (a few % of an MLP batch).
                noise = batch[filled:filled + block_size].normal_(0.0, self.sigma,
                                                                  generator=generator)
                noise[:used].add_(inputs[row])
                owners[filled:filled + used].fill_(slot * self.num_classes)
                filled += used
                done = 0
                while filled - done >= batch_size:
                    self._count(batch[done:done + batch_size], owners[done:done + batch_size],
                                counts, ones)
                    done += batch_size
                if done:  # move the waiting samples (fewer than a batch) to the front
                    batch[:filled - done] = batch[done:filled]
                    owners[:filled - done] = owners[done:filled]
                    filled -= done
        if filled:
            self._count(batch[:filled], owners[:filled], counts, ones[:filled])
        return counts.view(len(requests), self.num_classes).cpu().numpy()

    def _count(self, batch: torch.Tensor, owners: torch.Tensor, counts: torch.Tensor,
               ones: torch.Tensor) -> None:
        # scatter_add_, not bincount: CUDA's bincount reads its input's maximum back to the host.
        counts.scatter_add_(0, self._classify(batch).add_(owners), ones)

    def sample_counts(self, x: torch.Tensor, n: int, *, batch_size: int = 1000, index: int = 0,
                      stage: int = ESTIMATION) -> np.ndarray:
        """Return the vote counts of ``n`` noisy copies of one input ``x`` (no batch dim)."""
        _check_n(n, "n")
        return self.sample_counts_many(x.unsqueeze(0), [(0, index, stage, n)],
                                       batch_size=batch_size)[0]

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

    def decide(self, x: torch.Tensor, *, eps: float, costly: Sequence[int] | None = None,
               alpha: float = 0.001, n0: int = 100, n_max: int = 100_000,
               batch_size: int = 1000, index: int = 0, method: str = "looks"):
        """Return the sequential decision "is ``x`` certified at radius ``eps``?" (a
        :class:`csrs.sequential.Decision`), spending samples only until the answer is known.

        For every input, P(certified and R*(p) < eps) <= alpha whatever the stopping time;
        ``costly=None`` is the standard certificate. See :func:`csrs.adaptive.decide`.
        """
        from csrs.adaptive import decide  # adaptive builds on this module

        return decide(self, x, eps=eps, costly=costly, alpha=alpha, n0=n0, n_max=n_max,
                      batch_size=batch_size, index=index, method=method)

    def _selection_and_estimation(self, x: torch.Tensor, n0: int, n: int, batch_size: int,
                                  index: int) -> tuple[np.ndarray, np.ndarray]:
        _check_n(n0, "n0")
        _check_n(n, "n")
        counts = self.sample_counts_many(
            x.unsqueeze(0), [(0, index, SELECTION, n0), (0, index, ESTIMATION, n)],
            batch_size=batch_size)
        return counts[0], counts[1]


def _check_n(n: int, name: str) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive integer; got {n!r}")

