"""Adaptive (sequential) vs fixed-n certification, side by side, on the same noise.

    python -m benchmarks.adaptive [CHECKPOINT ...] [--eps 0.5] [--quick]

For each checkpoint (default: a linear digits model trained here in a few seconds), certify the
test split with fixed n (Algorithm 1, sound bounds, n = 100,000) and decide it adaptively with
each sequential construction at the same alpha; print Acc, Rob_cs, Rob_non^(std), the samples
per example and the wall time as a markdown table. ``--quick`` cuts the budget for a smoke run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from csrs.adaptive import certify_dataset_adaptive
from csrs.certify import CertifySettings, certify_dataset, select_indices
from csrs.checkpoint import load_checkpoint, save_checkpoint
from csrs.costs import CostMatrix
from csrs.data import load_dataset
from csrs.metrics import summarize, summarize_decisions
from csrs.models import build_model
from csrs.sequential import METHODS
from csrs.smoothing import SmoothedClassifier


def train_quick_digits(path: Path, *, steps: int = 300, sigma: float = 0.5,
                       cost: str = "3") -> Path:
    """Train a linear digits model under Gaussian noise with Adam (as tests/conftest.py does)
    and save it as a checkpoint; return its path."""
    digits = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = build_model("linear", num_classes=10, input_shape=digits.input_shape)
    inputs, labels = digits.train.tensors[0], torch.as_tensor(digits.train.tensors[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        noisy = inputs + sigma * torch.randn_like(inputs)
        torch.nn.functional.cross_entropy(model(noisy), labels).backward()
        optimizer.step()
    matrix = CostMatrix.parse(cost, 10)
    meta = {"arch": "linear", "num_classes": 10, "class_names": digits.class_names,
            "input_shape": list(digits.input_shape), "mean": None, "std": None,
            "dataset": "digits", "data_dir": None, "data_options": {}, "sigma": sigma,
            "cost_matrix": matrix.to_list(), "cost_spec": matrix.spec(), "method": "cohen",
            "hparams": {"steps": steps}, "epoch": 1, "epochs": 1, "seed": 0}
    return save_checkpoint(path, model, meta)


def benchmark(checkpoint_path: Path, args: argparse.Namespace) -> list[dict[str, object]]:
    """Return one table row per mode (fixed n, then each sequential method)."""
    checkpoint = load_checkpoint(checkpoint_path)
    meta = checkpoint.meta
    cost = (CostMatrix.parse(args.cost, checkpoint.num_classes, checkpoint.class_names)
            if args.cost else checkpoint.cost_matrix())
    splits = load_dataset(meta["dataset"], args.data_dir or meta.get("data_dir"),
                          seed=int(meta.get("data_seed", meta.get("seed", 0))),
                          **dict(meta.get("data_options") or {}))
    dataset = splits.test
    indices = select_indices(len(dataset), skip=args.skip, max_examples=args.max)

    def smoothed() -> SmoothedClassifier:
        return SmoothedClassifier(checkpoint.build_model(args.device), checkpoint.num_classes,
                                  checkpoint.sigma, device=args.device, seed=args.seed)

    name = checkpoint_path.stem
    settings = CertifySettings(n0=args.n0, n=args.n, alpha=args.alpha, sigma=checkpoint.sigma,
                               seed=args.seed, cost=cost.spec())
    start = time.perf_counter()
    fixed_rows = certify_dataset(smoothed(), dataset, cost, settings=settings, indices=indices,
                                 batch_size=args.batch, progress=args.progress)
    fixed_seconds = time.perf_counter() - start
    fixed = summarize(fixed_rows, args.eps)
    table = [{"model": name, "mode": f"fixed n={args.n}", "acc": fixed["acc"],
              "rob_cs": fixed["rob_cs"], "rob_non_std": fixed["rob_non_std"],
              "mean": args.n0 + args.n, "median": args.n0 + args.n, "seconds": fixed_seconds,
              "examples": len(indices)}]
    for method in args.methods:
        start = time.perf_counter()
        rows = certify_dataset_adaptive(smoothed(), dataset, cost, eps=args.eps,
                                        alpha=args.alpha, n0=args.n0, n_max=args.n,
                                        batch_size=args.batch, indices=indices,
                                        progress=args.progress, method=method)
        seconds = time.perf_counter() - start
        summary = summarize_decisions(rows)
        table.append({"model": name, "mode": f"adaptive {method}", "acc": summary["acc"],
                      "rob_cs": summary["rob_cs"], "rob_non_std": summary["rob_non_std"],
                      "mean": summary["mean_samples"],
                      "median": statistics.median(int(r["samples"]) for r in rows),
                      "seconds": seconds, "examples": len(indices)})
    for row in table:
        row["sample_ratio"] = (args.n0 + args.n) / row["mean"]
        row["speedup"] = fixed_seconds / row["seconds"]
    return table


def markdown(table: Sequence[dict[str, object]], args: argparse.Namespace) -> str:
    """Return the results as a markdown table."""
    lines = [f"eps = {args.eps}, alpha = {args.alpha}, n0 = {args.n0}, n (n_max) = {args.n}, "
             f"batch {args.batch}, device {args.device}", "",
             "| model | mode | examples | Acc | Rob_cs | Rob_non^std | mean samples "
             "| median samples | fewer samples | wall s | speedup |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in table:
        lines.append(f"| {row['model']} | {row['mode']} | {row['examples']} | {row['acc']:.3f} "
                     f"| {row['rob_cs']:.3f} | {row['rob_non_std']:.3f} | {row['mean']:.0f} "
                     f"| {row['median']:.0f} | {row['sample_ratio']:.1f}x "
                     f"| {row['seconds']:.1f} | {row['speedup']:.1f}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adaptive",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", type=Path,
                        help="csrs checkpoints (default: train a quick digits model)")
    parser.add_argument("--eps", type=float, default=0.5, help="radius (default 0.5)")
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=100_000, help="fixed n and adaptive n_max")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--skip", type=int, default=1, help="every skip-th test example")
    parser.add_argument("--max", type=int, default=None, help="at most this many examples")
    parser.add_argument("--cost", default=None, help="cost spec (default: the checkpoint's)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"sequential constructions, comma-separated ({', '.join(METHODS)})")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true",
                        help="small budget: n = 10,000 and at most 100 examples")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.quick:
        args.n, args.max = min(args.n, 10_000), args.max or 100
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoints = args.checkpoints or [train_quick_digits(Path(scratch) / "digits-quick.pt")]
        table = [row for path in checkpoints for row in benchmark(path, args)]
    print(markdown(table, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
