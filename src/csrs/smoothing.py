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

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from csrs.rng import reseed
from csrs.sequential import DEFAULT_METHOD, Decision, Method, SequentialTest, look_schedule
from csrs.stats import (
    Bounds,
    Certificate,
    CostCertificate,
    StandardCertificate,
    certify_cost_counts,
    certify_counts,
    cohen_certify_counts,
    cohen_predict_counts,
)

__all__ = ["ESTIMATION", "PREDICTION", "SELECTION", "ExampleTests", "ModelOutputError",
           "SmoothedClassifier", "decide_many", "noise_seed"]

# Sampling stages: independent noise streams for the same example.
SELECTION, ESTIMATION, PREDICTION = 0, 1, 2
_MASK64 = (1 << 64) - 1


class ModelOutputError(ValueError):
    """The base classifier returned logits of the wrong shape, or NaN / infinite logits."""


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def noise_seed(seed: int, index: int, stage: int, block: int) -> int:
    """Return the 64-bit key of one noise block: a SplitMix64 hash of its coordinates (every
    bit of it seeds the block's generator, see :mod:`csrs.rng`)."""
    state = 0
    for part in (seed, index, stage, block):
        state = _splitmix64(state ^ (int(part) & _MASK64))
    return state


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
        generator = reseed(torch.Generator(device=self.device),
                           noise_seed(self.seed, index, stage, block))
        noise = torch.empty((size, *shape), device=self.device, dtype=dtype)
        return noise.normal_(0.0, self.sigma, generator=generator)

    def _logits(self, batch: torch.Tensor, example: int) -> torch.Tensor:
        """Return the model's logits for ``batch`` (noisy copies that include example
        ``example``), refusing any output that is not (len(batch), num_classes)."""
        if self.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp
                    else nullcontext())
        with autocast:
            logits = self._forward(batch)
        expected = (len(batch), self.num_classes)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ModelOutputError(f"example {example}: the model returned output of shape "
                                   f"{shape} for {len(batch)} noisy inputs; expected {expected} "
                                   f"({self.num_classes} classes)")
        return logits

    def _classify(self, batch: torch.Tensor, example: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (argmax class, whether the logits are all finite) of each noisy input.

        A NaN or infinite logit makes argmax meaningless (fp16 overflow, a broken model): the
        callers refuse to certify the example rather than count a vote for whichever class
        argmax happens to pick.
        """
        logits = self._logits(batch, example)
        # One NaN or inf logit makes the row's sum non-finite: one check per row, not per logit
        # (finite logits whose sum overflows, beyond ~1e37, are refused too; they are broken).
        return logits.argmax(dim=1), torch.isfinite(logits.sum(dim=1))

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
        # Non-finite outputs per request, at the same offsets as its counts (no host sync).
        broken = torch.zeros_like(counts)
        # Each block is drawn whole straight into the buffer behind the samples waiting there,
        # so the buffer holds a batch plus the largest block; samples past a full batch wait
        # for the next one. Nothing here reads a device value back: no host sync per batch.
        largest_block = max((min(self.noise_block, n) for *_, n in requests), default=0)
        batch = torch.empty((batch_size + largest_block, *inputs.shape[1:]), dtype=inputs.dtype,
                            device=self.device)
        # The slot of each waiting sample, times num_classes: its row of counts.
        owners = torch.empty(len(batch), dtype=torch.int64, device=self.device)
        generator = torch.Generator(device=self.device)
        filled = 0
        for slot, (row, index, stage, n) in enumerate(requests):
            # Blocks hold min(noise_block, n) samples; the last one may be cut short.
            block_size = min(self.noise_block, n)
            for block, start in enumerate(range(0, n, block_size)):
                used = min(block_size, n - start)
                reseed(generator, noise_seed(self.seed, index, stage, block))
                # sigma inside normal_ saves a pass over the block (a few % of an MLP batch).
                noise = batch[filled:filled + block_size].normal_(0.0, self.sigma,
                                                                  generator=generator)
                noise[:used].add_(inputs[row])
                owners[filled:filled + used].fill_(slot * self.num_classes)
                filled += used
                done = 0
                while filled - done >= batch_size:
                    self._count(batch[done:done + batch_size], owners[done:done + batch_size],
                                counts, broken, index)
                    done += batch_size
                if done:  # move the waiting samples (fewer than a batch) to the front
                    batch[:filled - done] = batch[done:filled]
                    owners[:filled - done] = owners[done:filled]
                    filled -= done
        if filled:
            self._count(batch[:filled], owners[:filled], counts, broken,
                        requests[-1][1] if requests else 0)
        both = torch.stack([counts, broken]).view(2, len(requests), self.num_classes).cpu()
        bad = np.flatnonzero(both[1, :, 0].numpy())
        if bad.size:
            _, index, stage, n = requests[int(bad[0])]
            raise ModelOutputError(f"example {index}: the model returned NaN or infinite logits "
                                   f"for {int(both[1, bad[0], 0])} of its {n} noisy inputs "
                                   f"(stage {stage}); no certificate for it")
        return both[0].numpy()

    def _count(self, batch: torch.Tensor, owners: torch.Tensor, counts: torch.Tensor,
               broken: torch.Tensor, example: int) -> None:
        labels, finite = self._classify(batch, example)
        # scatter_add_, not bincount: CUDA's bincount reads its input's maximum back to the host.
        counts.scatter_add_(0, labels.add_(owners), torch.ones_like(labels))
        broken.scatter_add_(0, owners, (~finite).long())

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

    def decide(self, x: torch.Tensor, *, eps: float, costly: Sequence[int] | None = None,
               alpha: float = 0.001, n0: int = 100, n_max: int = 100_000,
               batch_size: int = 1000, index: int = 0, method: Method = DEFAULT_METHOD
               ) -> Decision:
        """Return the sequential decision "is ``x`` certified at radius ``eps``?", spending
        samples only until the answer is known.

        ``costly=None`` is the standard certificate (Omega = every class but the prediction);
        otherwise the cost-sensitive one for Omega_y = ``costly``, where a costly prediction is
        never certified. Whatever the stopping time, P(certified and R*(p) <= eps) <= alpha over
        the noise (:class:`csrs.sequential.SequentialTest` states the alpha accounting of each
        ``method``). ``samples`` counts every forward pass, the n0 selection samples included.
        """
        looks = look_schedule(n_max)

        def make_tests(selection: np.ndarray) -> list[SequentialTest]:
            return [SequentialTest(selection, eps=eps, sigma=self.sigma, alpha=alpha,
                                   costly=costly, n_max=n_max, method=method, looks=looks)]

        finished = next(decide_many(self, [(index, torch.as_tensor(x), make_tests)], n0=n0,
                                    n_max=n_max, batch_size=batch_size))
        return finished.tests[0].decision

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


TestFactory = Callable[[np.ndarray], list[SequentialTest]]


# -- sequential tests of many examples: the scheduler ----------------------------------------
@dataclass
class ExampleTests:
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


def decide_many(smoothed: SmoothedClassifier,
                 items: Iterable[tuple[int, torch.Tensor, TestFactory]], *, n0: int,
                 n_max: int, batch_size: int) -> Iterator[ExampleTests]:
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
    queue: deque[tuple[ExampleTests, int, int, int]] = deque()
    queued = 0
    exhausted = False
    while True:
        while queued < batch_size and not exhausted:
            item = next(pending, None)
            if item is None:
                exhausted = True
                break
            index, x, make_tests = item
            example = ExampleTests(index, x.to(smoothed.device), make_tests,
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


def _advance(example: ExampleTests) -> int | None:
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
def _count_pieces(smoothed: SmoothedClassifier, pieces: list[tuple[ExampleTests, int, int, int]],
                  n0: int, estimation_block: int) -> np.ndarray:
    """Classify one batch made of the given pieces; return the class counts of each piece."""
    noises, inputs = [], []
    for example, stage, start, stop in pieces:
        noise = (_selection_noise(smoothed, example, n0)[start:stop] if stage == SELECTION
                 else _estimation_noise(smoothed, example, start, stop, estimation_block))
        noises.append(noise)
        inputs.append(example.x.expand(stop - start, *example.x.shape))
    labels, finite = smoothed._classify(torch.cat(inputs) + torch.cat(noises), pieces[0][0].index)
    sizes = torch.tensor([stop - start for _, _, start, stop in pieces], device=labels.device)
    owners = torch.repeat_interleave(torch.arange(len(pieces), device=labels.device), sizes)
    classes = smoothed.num_classes
    if not bool(finite.all()):
        example = pieces[int(owners[~finite][0])][0]
        raise ModelOutputError(f"example {example.index}: the model returned NaN or infinite "
                               f"logits for {int((~finite).sum())} noisy inputs; no "
                               f"certificate for it")
    counts = torch.bincount(owners * classes + labels, minlength=len(pieces) * classes)
    return counts.view(len(pieces), classes).cpu().numpy()


def _selection_noise(smoothed: SmoothedClassifier, example: ExampleTests, n0: int) -> torch.Tensor:
    """The n0 selection noise draws, exactly as fixed-n certification's."""
    block = min(smoothed.noise_block, n0)
    return torch.cat([smoothed._noise(example.index, SELECTION, number, block, example.x.shape,
                                      example.x.dtype)
                      for number in range(math.ceil(n0 / block))])[:n0]


def _estimation_noise(smoothed: SmoothedClassifier, example: ExampleTests, start: int, stop: int,
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
