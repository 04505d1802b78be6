"""GPU checks at the field's model sizes: certification, the sequential test, training, torchrun.

    python -m benchmarks.gpu [--device cuda] [--out DIR] [--tiny] [--configs C,...]
                             [--nproc N] [--skip PART ...] [--threads N]

On synthetic inputs of CIFAR-10's shape (3x32x32, ResNet-110) and ImageNet's (3x224x224,
ResNet-50), with random weights, in one run of under 8 minutes on one GPU:

1. certify: noisy samples per second of ``SmoothedClassifier.sample_counts_many`` (noise, forward
   pass, counting) beside the raw forward pass ``model(x).argmax(1)`` of the same model on a
   preallocated batch, under each configuration of the classifier's options: fp32, ``amp``
   (bf16 autocast), ``channels_last``, both, and both with ``compile`` (torch.compile, as
   ``compile=True`` does, once for both contenders; the warm-up pays for compilation, the timed
   runs do not). Medians of interleaved rounds.
2. sequential: samples and seconds per image of the sequential test at eps = 0.5, and of the
   4-point curve eps = 0.25, 0.5, 0.75, 1.0 decided by one test per image
   (``csrs.certify.certify_dataset`` with ``SequentialSettings``, n_max = 100,000, amp +
   channels_last). Random weights vote for few classes, so the test stops early: samples per
   second is the number that carries over to a trained model, samples per image is not.
3. training: steps per second of every objective in ``csrs.objectives.OBJECTIVES`` (the
   registry, so methods added later are measured too) on ResNet-110 at MACER's batch of 64,
   fp32; a method that cannot train this architecture (zhang-evans needs a convex one) is
   listed with the reason.
4. torchrun: a small ``csrs certify`` (ResNet-110) launched with ``torchrun
   --nproc_per_node=N`` (nccl on CUDA, gloo otherwise) beside the same run in one process, and
   whether both wrote the same rows. Skipped with a note without CUDA or with fewer than 2 GPUs,
   unless ``--nproc`` asks for it.

Writes ``gpu.json`` and ``gpu.md`` (tables for BENCHMARKS.md) to ``--out``. ``--tiny`` shrinks
every size (and leaves out compile) so that the whole run takes seconds on a CPU: it checks the
script; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from benchmarks.run import _timed, interleaved, machine
from csrs.certify import SequentialSettings, certify_dataset
from csrs.checkpoint import save_checkpoint
from csrs.costs import CostMatrix
from csrs.models import build_model
from csrs.objectives import OBJECTIVES, resolve_hparams
from csrs.smoothing import ESTIMATION, SmoothedClassifier

SIGMA = 0.5
EPS = 0.5
CURVE = (0.25, 0.5, 0.75, 1.0)  # the 4-point curve of the sequential part
ALPHA = 0.001
# The classifier's options per configuration; "compile" runs with amp and channels_last.
CONFIGS: dict[str, dict[str, bool]] = {
    "fp32": {},
    "amp": {"amp": True},
    "channels_last": {"channels_last": True},
    "amp+channels_last": {"amp": True, "channels_last": True},
    "compile": {"amp": True, "channels_last": True, "compile": True},
}
PARTS = ("certify", "sequential", "training", "torchrun")


@dataclass(frozen=True)
class Case:
    """One model on one input shape and the sizes it is measured at."""

    label: str
    arch: str
    input_shape: tuple[int, ...]
    num_classes: int
    batch_size: int
    examples: int  # certify: examples per timed run, each of ``samples`` noisy samples
    samples: int
    sequential_images: int
    n0: int
    n_max: int


@dataclass(frozen=True)
class Sizes:
    """Everything the run's duration depends on."""

    cases: tuple[Case, ...]
    rounds: int
    train_batch: int
    train_steps: int
    # Hyperparameters that set a method's cost, overridden where the method has them (the
    # noise draws k and the attack steps); empty: each method's defaults.
    train_hparams: dict[str, int]
    torchrun_examples: int
    torchrun_n: int


def sizes(tiny: bool) -> Sizes:
    """Returns the full sizes (under 8 minutes on one GPU) or the tiny ones (seconds on CPU,
    with ResNet-20 in place of ResNet-110 and ResNet-50 on 32x32 images)."""
    if tiny:
        return Sizes((Case("ResNet-20, CIFAR shape (tiny)", "cifar-resnet20", (3, 32, 32), 10,
                           4, 1, 4, 1, 4, 8),
                      Case("ResNet-50, 32x32 (tiny)", "resnet50", (3, 32, 32), 1000,
                           2, 1, 2, 1, 2, 4)),
                     rounds=1, train_batch=2, train_steps=1,
                     train_hparams={"num_noise": 2, "steps": 1},
                     torchrun_examples=2, torchrun_n=8)
    return Sizes((Case("ResNet-110, CIFAR shape", "cifar-resnet110", (3, 32, 32), 10,
                       1000, 5, 10_000, 20, 100, 100_000),
                  Case("ResNet-50, ImageNet shape", "resnet50", (3, 224, 224), 1000,
                       256, 4, 1024, 4, 100, 100_000)),
                 rounds=3, train_batch=64, train_steps=20, train_hparams={},
                 torchrun_examples=64, torchrun_n=10_000)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@cache
def _initial_model(case: Case) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(case.arch, num_classes=case.num_classes, input_shape=case.input_shape,
                       mean=(0.5,), std=(0.25,))


def _model(case: Case, device: torch.device) -> torch.nn.Module:
    """A fresh copy of the case's random model (options such as channels_last change it)."""
    return copy.deepcopy(_initial_model(case)).to(device).eval()


def _inputs(count: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(count, *shape, generator=torch.Generator().manual_seed(seed))


# -- 1. certification throughput --------------------------------------------------------------
def benchmark_certify(case: Case, config: str, device: torch.device,
                      rounds: int) -> dict[str, Any]:
    """Returns the samples/s of the raw forward pass and of sample_counts_many in one config."""
    options = dict(CONFIGS[config])
    model = _model(case, device)
    if options.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    if options.pop("compile", False):
        # What SmoothedClassifier(compile=True) does, done here once so that the raw pass runs
        # the same compiled model and compilation is paid once.
        model = torch.compile(model)
    smoothed = SmoothedClassifier(model, case.num_classes, SIGMA, device=device, **options)
    inputs = _inputs(case.examples, case.input_shape, seed=1).to(device)
    requests = [(row, row, ESTIMATION, case.samples) for row in range(case.examples)]
    total = case.examples * case.samples
    # The raw pass: the same model in the same configuration, on one preallocated noisy batch.
    noise = torch.randn(case.batch_size, *case.input_shape,
                        generator=torch.Generator().manual_seed(2))
    batch = inputs[:1] + SIGMA * noise.to(device)
    if options.get("channels_last"):
        batch = batch.contiguous(memory_format=torch.channels_last)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if options.get("amp")
                else nullcontext())

    def raw() -> None:
        with torch.inference_mode(), autocast:
            for _ in range(total // case.batch_size):
                model(batch).argmax(1)

    def csrs() -> None:
        smoothed.sample_counts_many(inputs, requests, batch_size=case.batch_size)

    started = time.perf_counter()
    raw()  # warm-up: lazy initialisation, kernel choice, compilation
    csrs()
    _sync(device)
    warmup = time.perf_counter() - started
    rates = interleaved({"raw": lambda: _timed(device, raw, total),
                         "csrs": lambda: _timed(device, csrs, total)}, rounds)["wall"]
    return {"case": case.label, "arch": case.arch, "input_shape": list(case.input_shape),
            "config": config, "batch_size": case.batch_size, "samples": total,
            "warmup_s": warmup, "raw": rates["raw"], "csrs": rates["csrs"],
            "ratio": rates["csrs"] / rates["raw"]}


# -- 2. the sequential test -------------------------------------------------------------------
def benchmark_sequential(case: Case, device: torch.device,
                         grid: tuple[float, ...] = (EPS,)) -> dict[str, Any]:
    """Returns samples and seconds per image of the sequential decisions at the eps of
    ``grid`` (one test per image decides them all)."""
    model = _model(case, device)
    smoothed = SmoothedClassifier(model, case.num_classes, SIGMA, device=device, amp=True,
                                  channels_last=True)
    images = case.sequential_images
    labels = torch.arange(images) % case.num_classes
    dataset = TensorDataset(_inputs(images, case.input_shape, seed=2), labels)
    cost = CostMatrix.seedwise(case.num_classes, [0])
    smoothed.sample_counts_many(dataset.tensors[0][:1], [(0, 0, ESTIMATION, case.batch_size)],
                                batch_size=case.batch_size)  # warm-up
    _sync(device)
    started = time.perf_counter()
    settings = SequentialSettings(eps=grid, alpha=ALPHA, n0=case.n0, n_max=case.n_max)
    rows = certify_dataset(smoothed, dataset, cost, settings=settings,
                           batch_size=case.batch_size, progress=False)
    _sync(device)
    seconds = time.perf_counter() - started
    samples = [int(row["samples"]) for row in rows]
    return {"case": case.label, "arch": case.arch, "input_shape": list(case.input_shape),
            "images": images, "eps": list(grid), "n0": case.n0, "n_max": case.n_max,
            "mean_samples": statistics.fmean(samples),
            "median_samples": statistics.median(samples),
            "standard_certified": [sum(row[f"standard@{eps}"] == "1" for row in rows)
                                   for eps in grid],
            "seconds_per_image": seconds / images, "samples_per_second": sum(samples) / seconds}


# -- 3. training ------------------------------------------------------------------------------
def benchmark_training(case: Case, device: torch.device, batch: int, steps: int,
                       overrides: dict[str, int]) -> list[dict[str, Any]]:
    """Returns the steps/s of each registered objective + SGD step (or why it was skipped)."""
    cost = CostMatrix.seedwise(case.num_classes, [3])
    cost_table = torch.tensor(cost.matrix, dtype=torch.float32, device=device)
    x = _inputs(batch, case.input_shape, seed=3).to(device)
    y = (torch.arange(batch) % case.num_classes).to(device)
    results = []
    for method, objective in OBJECTIVES.items():
        defaults = resolve_hparams(method)
        hparams = resolve_hparams(method, {key: value for key, value in overrides.items()
                                           if key in defaults})
        model = _model(case, device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        generator = torch.Generator(device=device).manual_seed(0)

        def step(model=model, optimizer=optimizer, objective=objective, hparams=hparams,
                 generator=generator) -> None:
            loss = objective(model, x, y, cost_table[y], sigma=SIGMA, generator=generator,
                             **hparams).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        row = {"case": case.label, "arch": case.arch, "method": method, "batch_size": batch,
               "copies": hparams.get("num_noise", 1)}
        try:
            step()  # warm-up, and the check that the method trains this architecture
        except (ValueError, TypeError, NotImplementedError, RuntimeError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            results.append({**row, "skipped": reason[:200]})
            continue

        def work(step=step) -> None:
            for _ in range(steps):
                step()

        rate = _timed(device, work, steps)["wall"]
        results.append({**row, "steps_per_second": rate, "examples_per_second": rate * batch})
    return results


# -- 4. torchrun ------------------------------------------------------------------------------
def _tiny_checkpoint(folder: Path, case: Case, examples: int) -> Path:
    """Writes random test inputs as an npz dataset and a random model's checkpoint for it."""
    data = folder / "data.npz"
    labels = np.arange(examples) % case.num_classes
    np.savez(data, x_train=_inputs(2, case.input_shape, 4).numpy(), y_train=labels[:2],
             x_test=_inputs(examples, case.input_shape, 5).numpy(), y_test=labels,
             class_names=np.array([str(k) for k in range(case.num_classes)]))
    model = _model(case, torch.device("cpu"))
    meta = {"arch": case.arch, "num_classes": case.num_classes, "class_names": None,
            "input_shape": list(case.input_shape), "mean": [0.5], "std": [0.25],
            "dataset": "npz", "data_dir": str(data), "data_options": {}, "sigma": SIGMA,
            "cost_matrix": CostMatrix.seedwise(case.num_classes, [3]).to_list()}
    return save_checkpoint(folder / "model.pt", model, meta)


def _certify(checkpoint: Path, out: Path, nproc: int, device: str, n: int,
             examples: int) -> dict[str, Any]:
    """Runs ``csrs certify`` in one process or under torchrun; returns its seconds and rows."""
    command = [sys.executable, "-m", "csrs.cli", "certify", str(checkpoint), "--out", str(out),
               "--n", str(n), "--max", str(examples), "--device", device, "--quiet"]
    if nproc > 1:
        # "--": torchrun would otherwise take --n and --max for abbreviations of its options.
        command[1:3] = ["-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={nproc}", "-m", "--", "csrs.cli"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {"processes": nproc, "seconds": seconds, "returncode": done.returncode}
    if done.returncode != 0:
        result["error"] = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
    return result


def _rows(path: Path) -> list[str]:
    """The results rows without their ``time`` column, sorted by index."""
    if not path.is_file():
        return []
    header, *rows = path.read_text().splitlines()
    keep = [i for i, name in enumerate(header.split("\t")) if name != "time"]
    return sorted("\t".join(row.split("\t")[i] for i in keep) for row in rows)


def benchmark_torchrun(case: Case, device: torch.device, nproc: int, examples: int,
                       n: int) -> dict[str, Any]:
    """Returns the seconds of a certify run in one process and in ``nproc`` under torchrun."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        checkpoint = _tiny_checkpoint(folder, case, examples)
        single = _certify(checkpoint, folder / "one.tsv", 1, device.type, n, examples)
        several = _certify(checkpoint, folder / "many.tsv", nproc, device.type, n, examples)
        same = bool(_rows(folder / "one.tsv")) and _rows(folder / "one.tsv") == _rows(
            folder / "many.tsv")
    return {"case": case.label, "arch": case.arch, "backend": backend, "examples": examples,
            "n": n, "runs": [single, several], "same_rows": same}


# -- report -----------------------------------------------------------------------------------
def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def markdown(report: dict[str, Any]) -> str:
    """Returns the report as markdown tables."""
    info = report["machine"]
    lines = [f"Machine: {info.get('gpu', info['cpu'])}, torch {info['torch']}, device "
             f"{info['device']}" + (" (tiny sizes: the numbers mean nothing)"
                                    if report["tiny"] else "")
             + f"; {report['seconds']:.0f} s in all.", ""]
    if report["certify"]:
        lines += ["Certification, noisy samples per second (raw = `model(x).argmax(1)` on a "
                  "preallocated batch; csrs = `sample_counts_many`: noise, forward, counts):", "",
                  "| model | batch | config | raw | csrs | csrs / raw | warm-up s |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        lines += [f"| {row['case']} | {row['batch_size']} | {row['config']} "
                  f"| {_number(row['raw'])} | {_number(row['csrs'])} | {row['ratio']:.2f} "
                  f"| {row['warmup_s']:.1f} |" for row in report["certify"]]
        lines.append("")
    if report["sequential"]:
        lines += ["Sequential test (amp + channels_last, random weights), one test per image "
                  "for all listed eps:", "",
                  "| model | eps | images | n_max | mean samples | median samples | s / image "
                  "| samples / s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {row['case']} | {', '.join(f'{e:g}' for e in row['eps'])} "
                  f"| {row['images']} | {row['n_max']:,} "
                  f"| {_number(row['mean_samples'])} | {_number(row['median_samples'])} "
                  f"| {row['seconds_per_image']:.3g} | {_number(row['samples_per_second'])} |"
                  for row in report["sequential"]]
        lines.append("")
    if report["training"]:
        lines += ["Training, fp32, one objective + SGD step:", "",
                  "| model | method | B x k | steps / s | examples / s |",
                  "|---|---|---:|---:|---:|"]
        for row in report["training"]:
            if "skipped" in row:
                lines.append(f"| {row['case']} | {row['method']} | - | skipped: "
                             f"{row['skipped']} | - |")
            else:
                lines.append(f"| {row['case']} | {row['method']} | {row['batch_size']} x "
                             f"{row['copies']} | {row['steps_per_second']:.3g} "
                             f"| {_number(row['examples_per_second'])} |")
        lines.append("")
    if report["torchrun"]:
        run = report["torchrun"]
        lines += [f"torchrun, `csrs certify` of {run['examples']} examples at n = {run['n']:,} "
                  f"({run['case']}, {run['backend']}):", "",
                  "| processes | seconds | exit status |", "|---:|---:|---:|"]
        lines += [f"| {one['processes']} | {one['seconds']:.1f} | {one['returncode']} |"
                  for one in run["runs"]]
        lines += ["", f"Same rows with {run['runs'][1]['processes']} processes as with one: "
                  f"{'yes' if run['same_rows'] else 'NO'}."]
        lines += [f"Error ({one['processes']} processes): {one['error']}" for one in run["runs"]
                  if "error" in one]
        lines.append("")
    if report["notes"]:
        lines += ["Notes:", "", *(f"- {note}" for note in report["notes"]), ""]
    return "\n".join(lines)


def run(device: torch.device, tiny: bool, configs: Sequence[str], nproc: int | None,
        skip: Sequence[str], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Returns the report of every part not in ``skip``."""
    started = time.perf_counter()
    chosen = sizes(tiny)
    report: dict[str, Any] = {"machine": machine(device, amp=False), "tiny": tiny,
                              "sizes": asdict(chosen), "certify": [], "sequential": [],
                              "training": [], "torchrun": None, "notes": []}
    if device.type == "cuda":
        report["machine"]["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                     "cudnn": torch.backends.cudnn.allow_tf32}
    if tiny and "compile" not in configs:
        report["notes"].append("compile: left out with --tiny (compilation takes minutes on a "
                               "CPU); name it in --configs to include it")
    if "certify" not in skip:
        for case in chosen.cases:
            for config in configs:
                log(f"certify: {case.label}, {config}")
                report["certify"].append(benchmark_certify(case, config, device, chosen.rounds))
    if "sequential" not in skip:
        for case in chosen.cases:
            log(f"sequential: {case.label}")
            for grid in ((EPS,), CURVE):
                report["sequential"].append(benchmark_sequential(case, device, grid))
    if "training" not in skip:
        log(f"training: {chosen.cases[0].label}, {', '.join(OBJECTIVES)}")
        report["training"] = benchmark_training(chosen.cases[0], device, chosen.train_batch,
                                                chosen.train_steps, chosen.train_hparams)
    if "torchrun" not in skip:
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        processes = nproc if nproc is not None else gpus
        if processes >= 2:
            log(f"torchrun: {processes} processes")
            report["torchrun"] = benchmark_torchrun(chosen.cases[0], device, processes,
                                                    chosen.torchrun_examples, chosen.torchrun_n)
        else:
            reason = "no CUDA" if device.type != "cuda" else f"{gpus} GPU"
            report["notes"].append(f"torchrun: skipped ({reason}; it needs 2 or more GPUs, or "
                                   f"--nproc N for N CPU processes with gloo)")
    report["seconds"] = time.perf_counter() - started
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda when available)")
    parser.add_argument("--out", type=Path, default=Path("benchmark-gpu"),
                        help="directory for gpu.json and gpu.md (default benchmark-gpu/)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny sizes, no compile: checks the script on a CPU in seconds")
    parser.add_argument("--configs", default=None,
                        help=f"comma-separated certification configs out of "
                             f"{', '.join(CONFIGS)} (default: all; --tiny: all but compile)")
    parser.add_argument("--nproc", type=int, default=None,
                        help="torchrun processes (default: the number of GPUs)")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts to leave out")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is fastest for --tiny on a "
                             "busy machine)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    default = [name for name in CONFIGS if not (args.tiny and name == "compile")]
    configs = default if args.configs is None else [c.strip() for c in args.configs.split(",")]
    unknown = [name for name in configs if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown config '{unknown[0]}'; choose from: {', '.join(CONFIGS)}")
    report = run(device, args.tiny, configs, args.nproc, args.skip,
                 log=lambda line: print(line, file=sys.stderr, flush=True))
    text = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu.md").write_text(text + "\n")
    print(text)
    print(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
