"""Certification and training throughput beside the model's own forward pass, and peak memory.

    python -m benchmarks.run [--quick] [--out BENCHMARKS.json] [--device cpu|cuda] [--amp]
                             [--threads N] [--rounds N] [--clock wall|cpu] [--skip PART ...]

Everything is measured in one run on the current machine. Repetitions are interleaved (each
contender once per round, the order rotating from round to round) and medians reported, so that
a machine busy with other work slows all contenders alike. Rates are taken both per wall-clock
second and per CPU second of the process (``--clock`` picks the one printed; the JSON has both):
on a CPU machine shared with other work the second is the steadier.

On CPU, glibc's malloc hands the large activation buffers of a ResNet back to the system after
every batch, and page faults then take about a third of the forward pass and vary from run to
run, for every contender alike. ``MALLOC_MMAP_THRESHOLD_=4294967296
MALLOC_TRIM_THRESHOLD_=4294967296`` in the environment keeps them; the report records whether
they were set.

1. Certification, in noisy samples per second (n0 + n per example): ``csrs.certify.
   certify_dataset`` (both certificates, the Clopper-Pearson bounds and the TSV included) on
   random inputs, divided by the raw forward pass ``model(x).argmax(1)`` (argmax included) of the
   same model under ``inference_mode`` over the same batches (each example's n0 + n samples in
   batches of B), cut from one preallocated batch of noisy inputs; then the same against the
   per-example loop of :mod:`benchmarks.baseline` and, where the
   ``adversarial-robustness-toolbox`` package is installed, its
   ``PyTorchRandomizedSmoothing.certify`` (same model, n0, n and batch size).
2. Training, in examples per second: each randomized-smoothing objective of
   ``csrs.objectives.OBJECTIVES`` (cohen, cohen-r, macer, csrs) plus an SGD step, divided by a
   plain cross-entropy SGD step on B * k preallocated inputs (k the method's noise draws per
   example), same model and optimizer.
3. Peak memory of certifying one example at n = 10,000 and n = 100,000 at the same batch size,
   each in a fresh process: the peak resident set (CPU) or CUDA allocation above what the
   process held before.

``--quick`` uses n = 10,000 (MLP, CNN) and n = 2,000 (ResNets) with n0 = 100 and 3 rounds; the
full run n = 100,000 and n = 10,000 and 5 rounds. ``--amp`` runs csrs, the raw pass and the
baseline under bfloat16 autocast (ART has no such option and stays in float32).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks import baseline, record
from csrs.certify import CertifySettings, certify_dataset
from csrs.costs import CostMatrix
from csrs.models import build_model
from csrs.objectives import OBJECTIVES, resolve_hparams
from csrs.smoothing import SmoothedClassifier

NUM_CLASSES = 10
SIGMA = 0.5
ALPHA = 0.001
N0 = 100
COST = "3"
DIGITS, CIFAR = (1, 8, 8), (3, 32, 32)
CLOCKS = ("wall", "cpu")
MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")
# The randomized-smoothing objectives: each trains on noisy copies of its batch.
METHODS = ("cohen", "cohen-r", "macer", "csrs")


@dataclass(frozen=True)
class CertifyCase:
    """One model certified at one batch size: ``examples`` inputs of n0 + n samples each."""

    label: str
    arch: str
    input_shape: tuple[int, ...]
    batch_size: int
    n: int
    examples: int


def certify_cases(quick: bool) -> list[CertifyCase]:
    """Return the models of the certification table, with their batch size and n."""
    small, large = (10_000, 2_000) if quick else (100_000, 10_000)
    return [
        CertifyCase("MLP (1,8,8)", "mlp", DIGITS, 1000, small, 10 if quick else 2),
        CertifyCase("digits-cnn (1,8,8)", "digits-cnn", DIGITS, 1000, small, 2 if quick else 1),
        CertifyCase("cifar-resnet20 (3,32,32)", "cifar-resnet20", CIFAR, 400, large, 1),
        CertifyCase("cifar-resnet56 (3,32,32)", "cifar-resnet56", CIFAR, 200, large, 1),
    ]


# -- timing -----------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: bool) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()


def interleaved(contenders: dict[str, Callable[[], dict[str, float]]],
                rounds: int) -> dict[str, dict[str, float]]:
    """Return, per clock, each contender's median rate over ``rounds`` rounds.

    A contender returns its rate per clock (:func:`_timed`). Every round runs each contender
    once, starting one further along the list each time.
    """
    names = list(contenders)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(contenders[name]())
    return {clock: {name: statistics.median(run[clock] for run in runs[name]) for name in names}
            for clock in CLOCKS}


def _timed(device: torch.device, work: Callable[[], Any], amount: float) -> dict[str, float]:
    """Return ``amount`` divided by the seconds ``work()`` takes: wall-clock seconds, and the
    CPU seconds of this process (all its threads), which other processes hardly change."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    _sync(device)
    return {"wall": amount / (time.perf_counter() - wall),
            "cpu": amount / (time.process_time() - cpu)}


# -- 1. certification -------------------------------------------------------------------------
def _art_classifier(model: nn.Module, case: CertifyCase, device: torch.device) -> Any | None:
    try:
        from art.estimators.certification.randomized_smoothing import (
            PyTorchRandomizedSmoothing,
        )
    except ImportError:
        return None
    return PyTorchRandomizedSmoothing(
        model=model, loss=nn.CrossEntropyLoss(), input_shape=case.input_shape,
        nb_classes=NUM_CLASSES, device_type="gpu" if device.type == "cuda" else "cpu",
        sample_size=N0, scale=SIGMA, alpha=ALPHA)


def _art_certify(classifier: Any, dataset: TensorDataset, n: int, batch_size: int,
                 out: Path) -> None:
    with open(out, "w", encoding="utf-8") as handle:
        print("idx\tlabel\tpredict\tradius", file=handle, flush=True)
        for index in range(len(dataset)):
            x, label = dataset[index]
            prediction, radius = classifier.certify(x[None].numpy(), n=n, batch_size=batch_size)
            print(f"{index}\t{int(label)}\t{int(prediction[0])}\t{float(radius[0]):.6g}",
                  file=handle, flush=True)


def benchmark_certify(case: CertifyCase, device: torch.device, amp: bool,
                      rounds: int) -> dict[str, Any]:
    """Return the samples/s of the raw forward pass, csrs, the baseline and ART on one case."""
    torch.manual_seed(0)
    model = build_model(case.arch, num_classes=NUM_CLASSES, input_shape=case.input_shape)
    model = model.to(device).eval()
    generator = torch.Generator().manual_seed(1)
    dataset = TensorDataset(torch.rand(case.examples, *case.input_shape, generator=generator),
                            torch.randint(NUM_CLASSES, (case.examples,), generator=generator))
    samples = case.examples * (N0 + case.n)
    # The batches certification runs for one example: its n0 + n samples in batches of B.
    full, rest = divmod(N0 + case.n, case.batch_size)
    sizes = [case.batch_size] * full + ([rest] if rest else [])
    smoothed = SmoothedClassifier(model, NUM_CLASSES, SIGMA, device=device, amp=amp)
    settings = CertifySettings(n0=N0, n=case.n, alpha=ALPHA)
    cost_matrix = CostMatrix.parse(COST, NUM_CLASSES)
    # Noisy inputs, like those the model sees in certification (speed can depend on values).
    batch = torch.rand(case.batch_size, *case.input_shape, generator=generator)
    batch = (batch + SIGMA * torch.randn(batch.shape, generator=generator)).to(device)
    art = _art_classifier(model, case, device)

    def raw() -> dict[str, float]:
        def work() -> None:
            with torch.inference_mode(), _autocast(device, amp):
                for _ in range(case.examples):
                    for size in sizes:
                        model(batch[:size]).argmax(1)
        return _timed(device, work, samples)

    def with_out(run: Callable[[Path], None]) -> Callable[[], dict[str, float]]:
        def timed() -> dict[str, float]:
            with tempfile.TemporaryDirectory() as folder:
                return _timed(device, lambda: run(Path(folder) / "out.tsv"), samples)
        return timed

    contenders = {
        "raw": raw,
        "csrs": with_out(lambda out: certify_dataset(
            smoothed, dataset, cost_matrix, settings=settings, batch_size=case.batch_size,
            out=out, progress=False)),
        "baseline": with_out(lambda out: baseline.certify_dataset(
            model, dataset, range(case.examples), out, num_classes=NUM_CLASSES, sigma=SIGMA,
            n0=N0, n=case.n, alpha=ALPHA, batch_size=case.batch_size, device=device, amp=amp)),
    }
    if art is not None:
        contenders["art"] = with_out(lambda out: _art_certify(art, dataset, case.n,
                                                              case.batch_size, out))
    with torch.inference_mode(), _autocast(device, amp):  # warm-up: lazy inits, kernel choice
        model(batch).argmax(1)
    rates = interleaved(contenders, rounds)
    return {"case": asdict(case), "n0": N0, "samples": samples, "rates": rates}


# -- 2. training ------------------------------------------------------------------------------
def benchmark_training(arch: str, device: torch.device, amp: bool, batch_size: int, steps: int,
                       rounds: int) -> list[dict[str, Any]]:
    """Return, per method, the examples/s of its objective + SGD step and of a plain CE step."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=NUM_CLASSES, input_shape=DIGITS).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    costly_table = torch.tensor(CostMatrix.parse(COST, NUM_CLASSES).mask.copy(), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch_size, *DIGITS, device=device)
    y = torch.randint(NUM_CLASSES, (batch_size,), device=device)

    def step(loss: Callable[[], torch.Tensor]) -> Callable[[], dict[str, float]]:
        def work() -> None:
            for _ in range(steps):
                with _autocast(device, amp):
                    total = loss()
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
        return lambda: _timed(device, work, steps * batch_size)

    results = []
    for method in METHODS:
        objective, hparams = OBJECTIVES[method], resolve_hparams(method)
        copies = hparams.get("num_noise", 1)
        x_raw = x.repeat_interleave(copies, dim=0)
        x_raw += SIGMA * torch.randn(x_raw.shape, generator=generator, device=device)
        y_raw = y.repeat_interleave(copies)
        contenders = {
            "raw": step(lambda x_raw=x_raw, y_raw=y_raw: F.cross_entropy(model(x_raw), y_raw)),
            "method": step(lambda objective=objective, hparams=hparams: objective(
                model, x, y, costly_table[y], sigma=SIGMA, generator=generator,
                **hparams).total),
        }
        contenders["raw"]()  # warm-up
        contenders["method"]()
        rates = interleaved(contenders, rounds)
        results.append({"arch": arch, "method": method, "batch_size": batch_size,
                        "copies": copies, "rates": rates})
    return results


# -- 3. memory --------------------------------------------------------------------------------
def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_memory(method: str, arch: str, n: int, batch_size: int, device_name: str,
                 threads: int) -> float:
    """Return the MiB that certifying one example adds at its peak (run in a fresh process)."""
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=NUM_CLASSES, input_shape=DIGITS).to(device).eval()
    x = torch.rand(*DIGITS)
    case = CertifyCase(arch, arch, DIGITS, batch_size, n, 1)
    smoothed = SmoothedClassifier(model, NUM_CLASSES, SIGMA, device=device)
    art = _art_classifier(model, case, device) if method == "art" else None
    runs = {
        "csrs": lambda: smoothed.certify(x, costly=[0, 1], n0=N0, n=n, alpha=ALPHA,
                                         batch_size=batch_size),
        "baseline": lambda: baseline.certify(model, x.to(device), num_classes=NUM_CLASSES,
                                             sigma=SIGMA, n0=N0, n=n, alpha=ALPHA,
                                             batch_size=batch_size),
        "art": lambda: art.certify(x[None].numpy(), n=n, batch_size=batch_size),
    }
    with torch.inference_mode():  # warm-up: one batch through the model
        model(torch.rand(batch_size, *DIGITS, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        runs[method]()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS, to VmRSS
    runs[method]()
    return (_status_bytes("VmHWM") - before) / 2**20


def benchmark_memory(methods: Sequence[str], device: torch.device, threads: int,
                     batch_size: int = 1000) -> list[dict[str, Any]]:
    """Return the peak memory of one example's certification per method and n (MLP)."""
    if not Path("/proc/self/clear_refs").exists() and device.type != "cuda":
        return []
    context = multiprocessing.get_context("spawn")
    results = []
    with context.Pool(1, maxtasksperchild=1) as pool:
        for method in methods:
            for n in (10_000, 100_000):
                mib = pool.apply(_peak_memory, (method, "mlp", n, batch_size, str(device),
                                                threads))
                results.append({"method": method, "arch": "mlp", "n": n,
                                "batch_size": batch_size, "peak_mib": mib})
    return results


# -- machine and report -----------------------------------------------------------------------
def machine(device: torch.device, amp: bool) -> dict[str, Any]:
    """Return what the numbers were measured on."""
    info = {"cpu": record.cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(device), "amp": amp,
            "python": platform.python_version(), "load_average": os.getloadavg(),
            "malloc": {name: os.environ[name] for name in MALLOC_SETTINGS if name in os.environ}}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import art
        info["art"] = art.__version__
    except ImportError:
        info["art"] = None
    return info


def _ratio(numerator: float | None, denominator: float | None) -> str:
    return f"{numerator / denominator:.2f}" if numerator and denominator else "-"


def _rate(value: float | None) -> str:
    return f"{value:,.0f}" if value else "-"


def markdown(report: dict[str, Any], clock: str = "wall") -> str:
    """Return the report as markdown tables, rates by ``clock`` ("wall" or "cpu" seconds)."""
    info = report["machine"]
    per = "wall-clock second" if clock == "wall" else "CPU second of the process"
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
             f"{info['threads']} threads, device {info['device']}"
             + (f" ({info['gpu']})" if "gpu" in info else "")
             + (", bf16 autocast" if info["amp"] else "")
             + "".join(f", {name}={value}" for name, value in info["malloc"].items())
             + f"; load average at start {info['load_average'][0]:.1f}.", "",
             f"Certification, noisy samples per {per} (raw = `model(x).argmax(1)` on a "
             "preallocated batch; csrs = `certify_dataset` with bounds and TSV):", "",
             "| model | batch | n0 + n | raw | csrs | csrs / raw | baseline | csrs / baseline "
             "| ART | csrs / ART |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["certify"]:
        case, rates = row["case"], row["rates"][clock]
        art = rates.get("art")
        lines.append(
            f"| {case['label']} | {case['batch_size']} | {row['n0']:,} + {case['n']:,} "
            f"x {case['examples']} | {_rate(rates['raw'])} | {_rate(rates['csrs'])} "
            f"| {_ratio(rates['csrs'], rates['raw'])} | {_rate(rates['baseline'])} "
            f"| {_ratio(rates['csrs'], rates['baseline'])} | {_rate(art)} "
            f"| {_ratio(rates['csrs'], art)} |")
    if info["art"] is None:
        lines += ["", "ART: not installed (pip install adversarial-robustness-toolbox "
                  "statsmodels), skipped."]
    lines += ["", f"Training, examples per {per} (raw = cross-entropy SGD step on the B * k "
              "inputs, preallocated, no noise):", "",
              "| model | method | B x k | raw | method | method / raw |",
              "|---|---|---:|---:|---:|---:|"]
    for row in report["training"]:
        rates = row["rates"][clock]
        lines.append(f"| {row['arch']} | {row['method']} | {row['batch_size']} x {row['copies']} "
                     f"| {_rate(rates['raw'])} | {_rate(rates['method'])} "
                     f"| {_ratio(rates['method'], rates['raw'])} |")
    if report["memory"]:
        lines += ["", "Peak memory of certifying one example, MiB above the process's "
                  "(MLP, batch 1000, fresh process each):", "",
                  "| method | n = 10,000 | n = 100,000 |", "|---|---:|---:|"]
        peaks: dict[str, dict[int, float]] = {}
        for row in report["memory"]:
            peaks.setdefault(row["method"], {})[row["n"]] = row["peak_mib"]
        for method, by_n in peaks.items():
            lines.append(f"| {method} | {by_n[10_000]:.1f} | {by_n[100_000]:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller n and fewer rounds")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default: 3, full: 5)")
    parser.add_argument("--clock", default="wall", choices=CLOCKS,
                        help="rates in the printed tables per wall-clock second or per CPU "
                             "second of this process (steadier on a busy CPU machine); the "
                             "JSON holds both")
    parser.add_argument("--skip", nargs="*", default=[], choices=["certify", "training", "memory"],
                        help="parts to leave out")
    parser.add_argument("--record", action="store_true",
                        help="write docs/results/benchmarks_{certify,training,memory}.csv (rates "
                             "per --clock) and their provenance")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    for name in ("threads", "rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; got {getattr(args, name)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds = args.rounds or (3 if args.quick else 5)
    report: dict[str, Any] = {"machine": machine(device, args.amp), "quick": args.quick,
                              "clock": args.clock, "rounds": rounds,
                              "certify": [], "training": [], "memory": []}
    if "certify" not in args.skip:
        for case in certify_cases(args.quick):
            report["certify"].append(benchmark_certify(case, device, args.amp, rounds))
    if "training" not in args.skip:
        for arch in ("mlp", "digits-cnn"):
            report["training"] += benchmark_training(arch, device, args.amp, batch_size=64,
                                                     steps=20 if args.quick else 100,
                                                     rounds=rounds)
    if "memory" not in args.skip:
        methods = ["csrs", "baseline"] + (["art"] if report["machine"]["art"] else [])
        report["memory"] = benchmark_memory(methods, device, torch.get_num_threads())
    text = markdown(report, args.clock)
    print(text)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.record:
        wall = time.perf_counter() - started
        for name, (rows, columns) in csv_tables(report, args.clock).items():
            if rows:
                record.write(name, rows, columns, module="benchmarks.run", wall_s=wall)
    return 0


def _per(numerator: float | None, denominator: float | None) -> float:
    return numerator / denominator if numerator and denominator else float("nan")


def _whole(rate: float | None) -> int | float:
    """A rate as a whole number of samples (or examples) per second."""
    return round(rate) if rate else float("nan")


def csv_tables(report: dict[str, Any], clock: str) -> dict[str, tuple[list[dict], list[str]]]:
    """The report's three tables as CSV rows (rates per ``clock`` second)."""
    certify = []
    for row in report["certify"]:
        case, rates = row["case"], row["rates"][clock]
        art = rates.get("art")
        certify.append({
            "model": case["label"], "batch": case["batch_size"],
            "n": f"{row['n0']} + {case['n']} x {case['examples']}",
            "raw": _whole(rates["raw"]), "csrs": _whole(rates["csrs"]),
            "csrs_per_raw": _per(rates["csrs"], rates["raw"]),
            "baseline": _whole(rates["baseline"]),
            "csrs_per_baseline": _per(rates["csrs"], rates["baseline"]),
            "art": _whole(art), "csrs_per_art": _per(rates["csrs"], art)})
    training = [{"model": row["arch"], "method": row["method"], "batch": row["batch_size"],
                 "draws": row["copies"], "raw": _whole(row["rates"][clock]["raw"]),
                 "rate": _whole(row["rates"][clock]["method"]),
                 "rate_per_raw": _per(row["rates"][clock]["method"], row["rates"][clock]["raw"])}
                for row in report["training"]]
    memory = [{"contender": row["method"], "n": row["n"], "peak_mib": row["peak_mib"]}
              for row in report["memory"]]
    return {"benchmarks_certify.csv": (certify, ["model", "batch", "n", "raw", "csrs",
                                                 "csrs_per_raw", "baseline",
                                                 "csrs_per_baseline", "art", "csrs_per_art"]),
            "benchmarks_training.csv": (training, ["model", "method", "batch", "draws", "raw",
                                                   "rate", "rate_per_raw"]),
            "benchmarks_memory.csv": (memory, ["contender", "n", "peak_mib"])}


if __name__ == "__main__":
    raise SystemExit(main())
