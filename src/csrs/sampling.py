"""The sampling engine: keyed noise streams and one batcher for every way of counting votes.

**Noise.** Each example has one noise stream per sampling stage: ``SELECTION`` (the n0 samples
that pick the candidate class), ``ESTIMATION`` (the samples the bounds use) and ``PREDICTION``
(Cohen's PREDICT). A stream of planned length L is cut into blocks of min(noise_block, L)
samples, and block b is drawn from a generator keyed by a hash of (seed, example index, stage, b)
alone (:mod:`csrs.rng` uses every bit of the key). Sample i of a stream is therefore a function of
(seed, index, stage, L, i) and of nothing else: not of the batch size, the order of the examples,
which examples share a batch, how many processes split the data, or where a sequential test
looks. Fixed-n certification reads the stream of length n in one look; a sequential test with
budget n_max reads prefixes of the stream of length n_max, so with a single look at n_max it sees
exactly the samples of fixed n = n_max. (The block size must be fixed per stream: torch's normal
sampler does not give the same numbers for one draw of 2m as for two draws of m.)

**Batching.** A :class:`Job` is one example's work. Its ``advance`` callback names the next
request, "stage s up to a cumulative count of t samples", or None when the example is done; it is
called once at the start and again whenever the previous request has been counted, so a plan may
depend on the counts so far (a sequential test) or not (fixed n: selection, then one look at n).
:class:`Engine` packs the samples of many jobs' requests into full batches of ``batch_size``
regardless of example boundaries, keeps new examples coming while fewer than a batch of samples
wait, and counts the votes on the device. It reads counts back to the host only when a request is
complete (one transfer for all requests completed by a batch), never per batch otherwise.
Memory holds one batch plus one noise block, plus one cached block per example whose requests end
inside a block (sequential looks), whatever n is.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from csrs.rng import noise_key, reseed
from csrs.sequential import SequentialTest

__all__ = ["ESTIMATION", "PREDICTION", "SELECTION", "Classifier", "Engine", "Job",
           "ModelOutputError", "block_size", "draw_noise", "fixed_job", "sequential_job"]

# Sampling stages: independent noise streams for the same example.
SELECTION, ESTIMATION, PREDICTION = 0, 1, 2
STAGE_NAMES = {SELECTION: "selection", ESTIMATION: "estimation", PREDICTION: "prediction"}


class ModelOutputError(ValueError):
    """The base classifier returned logits of the wrong shape, or NaN / infinite logits."""


class Classifier(Protocol):
    """What the engine needs of a smoothed classifier
    (:class:`csrs.smoothing.SmoothedClassifier`)."""

    device: torch.device
    num_classes: int
    sigma: float
    seed: int
    noise_block: int

    def classify_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def block_size(noise_block: int, length: int) -> int:
    """The block size of a stream of planned length ``length``."""
    return max(1, min(noise_block, length))


def draw_noise(classifier: Classifier, out: torch.Tensor, index: int, stage: int,
               block: int) -> torch.Tensor:
    """Fill ``out`` (one whole block) with block ``block`` of the stream (index, stage):
    N(0, sigma^2) numbers from a generator keyed by (seed, index, stage, block)."""
    generator = reseed(torch.Generator(device=classifier.device),
                       noise_key(classifier.seed, index, stage, block))
    # sigma inside normal_ saves a pass over the block (a few % of an MLP batch).
    return out.normal_(0.0, classifier.sigma, generator=generator)


Request = tuple[int, int]  # (stage, cumulative samples of that stage to reach)


@dataclass(eq=False)
class Job:
    """One example's work: ``advance(job)`` returns the next request (stage, cumulative count)
    or None when done. ``lengths[stage]`` is the planned length of each stream (it sets the block
    size); ``counts[stage]`` the votes counted so far. ``seconds`` is its share of the forward
    passes' time; ``state`` is free for the plan (e.g. its sequential tests)."""

    index: int
    x: torch.Tensor
    lengths: dict[int, int]
    advance: Callable[[Job], Request | None]
    state: object = None
    counts: dict[int, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    _cache: dict[int, tuple[int, torch.Tensor]] = field(default_factory=dict, repr=False)

    def drawn(self, stage: int) -> int:
        """Samples of ``stage`` counted so far."""
        counts = self.counts.get(stage)
        return 0 if counts is None else int(counts.sum())

    @property
    def samples(self) -> int:
        """Forward passes spent on this example, every stage included."""
        return sum(int(counts.sum()) for counts in self.counts.values())


def fixed_job(index: int, x: torch.Tensor, steps: Iterable[Request]) -> Job:
    """A job that draws each (stage, n) of ``steps`` in one look: fixed-n sampling."""
    steps = tuple(steps)

    def advance(job: Job) -> Request | None:
        return next(((stage, n) for stage, n in steps if job.drawn(stage) < n), None)

    return Job(index, x, {stage: n for stage, n in steps}, advance)


TestFactory = Callable[[np.ndarray], list[SequentialTest]]


def sequential_job(index: int, x: torch.Tensor, *, n0: int, n_max: int,
                   make_tests: TestFactory) -> Job:
    """A job for sequential tests: the n0 selection samples, then ``make_tests(selection
    counts)`` (tests sharing one look schedule), then each look of the tests still running, on
    prefixes of the estimation stream of length n_max. ``job.state`` holds the tests."""

    def advance(job: Job) -> Request | None:
        if job.drawn(SELECTION) < n0:
            return SELECTION, n0
        if job.state is None:
            job.state = make_tests(job.counts[SELECTION])
        else:
            for test in job.state:
                if test.decision is None:
                    test.update(job.counts[ESTIMATION])
        looks = {test.next_look for test in job.state if test.decision is None}
        if len(looks) > 1:
            raise ValueError("the tests of one example must share one look schedule")
        return (ESTIMATION, looks.pop()) if looks else None

    return Job(index, x, {SELECTION: n0, ESTIMATION: n_max}, advance)


@dataclass(eq=False)
class _Request:
    job: Job
    stage: int
    first: int       # the stream's sample this request starts at
    start: int       # next sample of the stream to write into the batch
    stop: int
    slot: int        # row of the device count table
    unforwarded: int  # samples written or still to write, not yet through the model


class Engine:
    """Runs jobs through a smoothed classifier in full batches; see the module docstring. One
    :meth:`run` at a time: a second engine runs beside it."""

    def __init__(self, classifier: Classifier, batch_size: int = 1000) -> None:
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        self.classifier = classifier
        self.batch_size = int(batch_size)

    @torch.inference_mode()
    def run(self, jobs: Iterable[Job]) -> Iterator[Job]:
        """Yield each job once its ``advance`` returns None, in the order they finish.

        An example whose model outputs are NaN or infinite raises :class:`ModelOutputError`
        naming it, after the examples already in flight have finished and been yielded."""
        self._pending = iter(jobs)
        self._exhausted = False
        self._queue: deque[_Request] = deque()
        self._queued = 0          # samples of queued requests not yet written into the batch
        self._segments: deque[list] = deque()  # [request, samples] in the batch, in order
        self._filled = 0
        self._batch: torch.Tensor | None = None
        self._shape: tuple[int, ...] | None = None
        self._classes = self.classifier.num_classes
        self._free: list[int] = []
        self._capacity = 0
        self._counts = torch.zeros(0, dtype=torch.int64, device=self.classifier.device)
        self._broken = torch.zeros_like(self._counts)
        self._done: deque[Job] = deque()
        self._failure: ModelOutputError | None = None
        while True:
            self._admit()
            if self._queue:
                self._write_segment()
                if self._filled >= self.batch_size:
                    done = 0
                    while self._filled - done >= self.batch_size:
                        self._forward(done, self.batch_size)
                        done += self.batch_size
                    self._shift(done)
            elif self._filled:
                self._forward(0, self._filled)
                self._shift(self._filled)
            else:
                break
            while self._done:
                yield self._done.popleft()
        self._batch = None
        if self._failure is not None:
            raise self._failure

    # -- queue ------------------------------------------------------------------------------
    def _admit(self) -> None:
        """Start new jobs while fewer than a batch of samples wait to be written (none after a
        failure: the jobs in flight finish, then the failure is raised)."""
        while self._queued < self.batch_size and not self._exhausted and self._failure is None:
            job = next(self._pending, None)
            if job is None:
                self._exhausted = True
                return
            if self._shape is None:
                self._allocate(job.x)
            elif tuple(job.x.shape) != self._shape:
                raise ValueError(f"example {job.index} has shape {tuple(job.x.shape)}; the "
                                 f"examples before it have {self._shape}")
            job.x = job.x.to(self.classifier.device, dtype=self._batch.dtype)
            self._follow(job)

    def _follow(self, job: Job) -> None:
        """Queue the job's next request, or finish it."""
        request = job.advance(job)
        if request is None:
            job._cache.clear()
            self._done.append(job)
            return
        stage, stop = request
        start = job.drawn(stage)
        if stage not in job.lengths or not start < stop <= job.lengths[stage]:
            raise ValueError(f"example {job.index}: a request for samples {start}..{stop} of "
                             f"stage {stage} does not fit its stream of "
                             f"{job.lengths.get(stage)} samples")
        job.counts.setdefault(stage, np.zeros(self._classes, dtype=np.int64))
        self._queue.append(_Request(job, stage, start, start, stop, self._slot(), stop - start))
        self._queued += stop - start

    def _slot(self) -> int:
        if not self._free:
            grown = max(64, 2 * self._capacity)
            for name in ("_counts", "_broken"):
                table = torch.zeros(grown * self._classes, dtype=torch.int64,
                                    device=self.classifier.device)
                table[:len(getattr(self, name))] = getattr(self, name)
                setattr(self, name, table)
            self._free = list(range(grown - 1, self._capacity - 1, -1))
            self._capacity = grown
        return self._free.pop()

    def _allocate(self, x: torch.Tensor) -> None:
        self._shape = tuple(x.shape)
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        # A batch plus the largest block, so that a block is always drawn whole in place.
        largest = self.classifier.noise_block
        self._batch = torch.empty((self.batch_size + largest, *self._shape), dtype=dtype,
                                  device=self.classifier.device)
        self._owners = torch.empty(len(self._batch), dtype=torch.int64,
                                   device=self.classifier.device)

    # -- writing noisy inputs ----------------------------------------------------------------
    def _write_segment(self) -> None:
        """Write the head request's samples up to the end of the current block."""
        request = self._queue[0]
        job, stage = request.job, request.stage
        size = block_size(self.classifier.noise_block, job.lengths[stage])
        block, offset = divmod(request.start, size)
        stop = min(request.stop, (block + 1) * size)
        count = stop - request.start
        target = self._batch[self._filled:self._filled + count]
        if offset == 0 and count == size:  # a whole block: drawn in place
            draw_noise(self.classifier, target, job.index, stage, block)
        else:  # part of a block: the job keeps the block until it moves past it
            cached = job._cache.get(stage)
            if cached is None or cached[0] != block:
                noise = torch.empty((size, *self._shape), dtype=self._batch.dtype,
                                    device=self.classifier.device)
                cached = (block, draw_noise(self.classifier, noise, job.index, stage, block))
                job._cache[stage] = cached
            target.copy_(cached[1][offset:offset + count])
            if stop == (block + 1) * size:
                del job._cache[stage]
        target.add_(job.x)
        self._owners[self._filled:self._filled + count].fill_(request.slot * self._classes)
        self._segments.append([request, count])
        self._filled += count
        self._queued -= count
        request.start = stop
        if stop == request.stop:
            self._queue.popleft()

    # -- counting ----------------------------------------------------------------------------
    def _forward(self, start: int, count: int) -> None:
        """Classify ``count`` samples of the batch from ``start``, count their votes, and
        advance the jobs whose requests they complete."""
        started = time.perf_counter()
        try:
            labels, finite = self.classifier.classify_batch(self._batch[start:start + count])
        except ModelOutputError as error:
            raise ModelOutputError(f"example {self._segments[0][0].job.index}: {error}") from None
        owners = self._owners[start:start + count]
        self._counts.scatter_add_(0, labels.add_(owners), torch.ones_like(labels))
        self._broken.scatter_add_(0, owners, (~finite).long())
        seconds = time.perf_counter() - started
        completed = []
        left = count
        while left:
            segment = self._segments[0]
            request, samples = segment
            take = min(samples, left)
            request.job.seconds += seconds * take / count
            request.unforwarded -= take
            left -= take
            if take == samples:
                self._segments.popleft()
                if request.unforwarded == 0:
                    completed.append(request)
            else:
                segment[1] = samples - take
        if completed:
            self._complete(completed)

    def _shift(self, done: int) -> None:
        """Move the samples past the ``done`` classified ones (fewer than a batch, so never
        overlapping them) to the front of the batch."""
        rest = self._filled - done
        if rest:
            self._batch[:rest] = self._batch[done:self._filled]
            self._owners[:rest] = self._owners[done:self._filled]
        self._filled = rest

    def _complete(self, completed: list[_Request]) -> None:
        """Read back the votes of completed requests (one transfer) and advance their jobs."""
        rows = torch.tensor([request.slot for request in completed],
                            device=self.classifier.device)
        counts = self._counts.view(-1, self._classes)
        broken = self._broken.view(-1, self._classes)
        both = torch.stack([counts[rows], broken[rows]]).cpu().numpy()
        counts[rows] = 0
        broken[rows] = 0
        followed = []
        for request, votes, failures in zip(completed, both[0], both[1], strict=True):
            self._free.append(request.slot)
            if failures[0]:
                # The jobs in flight still finish (their rows are kept); this one stops here.
                self._failure = self._failure or ModelOutputError(
                    f"example {request.job.index}: the model returned NaN or infinite logits "
                    f"for {int(failures[0])} of its {request.stop - request.first} "
                    f"noisy inputs ({STAGE_NAMES[request.stage]}); no certificate for it")
                continue
            request.job.counts[request.stage] += votes
            followed.append(request.job)
        for job in followed:
            self._follow(job)
