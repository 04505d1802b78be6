"""What bounds certification of the digits MLP on a CPU: the Gaussian sampler beside the forward.

    python -m benchmarks.sampler [--threads 1] [--repeats 300]

Times, per CPU second of this process, one batch of 1000 samples of shape (1, 8, 8): seeding a
noise block's generator from its 64-bit key (``csrs.rng.reseed``), torch's ``uniform_`` (the
mt19937 draws alone) and ``normal_`` on it, the MLP's forward + argmax, and one step of csrs's
sampling loop as ``csrs.sampling.Engine`` runs it for a whole block (seed, draw with sigma, add
the input, classify, count the votes and the non-finite rows). Prints ns per float and the
loop's cost relative to the forward alone.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import torch

from benchmarks import record
from csrs.models import build_model
from csrs.rng import noise_key, reseed

BATCH, SHAPE, SIGMA, CLASSES = 1000, (1, 8, 8), 0.5, 10


def _per_call_us(work: Callable[[], object], repeats: int) -> float:
    work()  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        work()
    return (time.process_time() - start) / repeats * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--record", action="store_true",
                        help="write docs/results/benchmarks_sampler.csv and its provenance")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=CLASSES, input_shape=SHAPE).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(SHAPE, generator=generator)
    batch = torch.empty(BATCH, *SHAPE)
    owners = torch.zeros(BATCH, dtype=torch.int64)
    ones = torch.ones(BATCH, dtype=torch.int64)
    counts = torch.zeros(CLASSES, dtype=torch.int64)
    floats = batch.numel()

    broken = torch.zeros(CLASSES, dtype=torch.int64)
    key = noise_key(0, 12345, 1, 0)

    def loop_step() -> None:  # what csrs.sampling.Engine does for one whole block
        reseed(generator, key)
        batch.normal_(0.0, SIGMA, generator=generator).add_(x)
        largest, labels = model(batch).max(dim=1)
        counts.scatter_add_(0, labels.add_(owners), ones)
        broken.scatter_add_(0, owners, (~torch.isfinite(largest)).long())

    with torch.inference_mode():
        batch.normal_(0.0, SIGMA, generator=generator).add_(x)
        times = {
            "reseed": _per_call_us(lambda: reseed(generator, key), args.repeats),
            "uniform_": _per_call_us(lambda: batch.uniform_(generator=generator), args.repeats),
            "normal_": _per_call_us(lambda: batch.normal_(generator=generator), args.repeats),
            "forward": _per_call_us(lambda: model(batch).argmax(1), args.repeats),
            "loop step": _per_call_us(loop_step, args.repeats),
        }
    print(f"batch {BATCH} x {SHAPE}, {args.threads} thread(s), CPU time per call:")
    for name, micros in times.items():
        per_float = f", {micros * 1e3 / floats:.2f} ns per float" if name.endswith("_") else ""
        print(f"  {name:10s} {micros:8.1f} us{per_float}")
    print(f"normal_ / forward: {times['normal_'] / times['forward']:.3f}; "
          f"loop step / forward: {times['loop step'] / times['forward']:.3f} "
          f"(caps certification / raw near {times['forward'] / times['loop step']:.2f})")
    if args.record:
        rows = [{"operation": name, "us_per_batch": micros,
                 "ns_per_float": micros * 1e3 / floats if name.endswith("_") else float("nan"),
                 "per_forward": micros / times["forward"]} for name, micros in times.items()]
        record.write("benchmarks_sampler.csv", rows, list(rows[0]), module="benchmarks.sampler",
                     wall_s=time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
