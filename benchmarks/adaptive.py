"""A grid of radii from one sequential test per example, against fixed n = 100,000.

    python -m benchmarks.adaptive [--quick] [--examples K] [--out DIR] [CHECKPOINT ...]

Two parts, both at alpha = 0.001, n_max = n = 100,000, for the grid eps = 0.25, 0.5, 0.75, 1.0:

1. **Simulated classifiers** whose smoothed probabilities are known: K examples with true radii
   R* spread uniformly over (0, 1.4] at sigma = 0.5, as a standard certificate of 10 classes
   (p_A = Phi(R*/sigma)) and as a pairwise cost-sensitive one (Omega = {1, 2}, p_A = 0.9, the
   costly class at Phi(PhiInv(0.9) - 2 R*/sigma); below R* = 0.64, p_A = Phi(R*/sigma) and
   p_B = 1 - p_A). Beyond about R* = 1.27, R2 at n = 100,000 is capped by the upper bound on
   a costly class never seen (for fixed n as for the grid test). Fixed n draws the 100,000
   votes at once and certifies as csrs does (Cohen's CERTIFY; Algorithm 1 with the sound
   bounds); the grid test draws votes look by look and stops when every eps is decided. Per
   eps: the certified fraction of both, the gap; and the samples per example.
2. **Digits models** (default: a linear model trained here in seconds; or the checkpoints
   given): ``csrs.certify.certify_dataset`` on the test split with fixed n and with the grid
   test (standard and cost-sensitive tests, as ``csrs certify --adaptive --eps ...``); per eps
   Acc, Rob_cs, Rob_cs^(std), Rob_non^(std) of both, the samples and the seconds per example.

Prints the tables; ``--record`` writes them to docs/results/benchmarks_grid.csv (simulated)
and benchmarks_grid_digits.csv (one row per model and eps, fixed n beside the grid test).
``--quick`` uses fewer examples for a smoke run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import ndtr, ndtri

from benchmarks import record
from csrs.certify import (
    CertifySettings,
    SequentialSettings,
    certify_dataset,
    decisions_of,
    select_indices,
)
from csrs.checkpoint import load_checkpoint, save_checkpoint
from csrs.costs import CostMatrix
from csrs.data import load_dataset
from csrs.metrics import summarize
from csrs.models import build_model
from csrs.sequential import SequentialTest
from csrs.smoothing import SmoothedClassifier
from csrs.stats import certify_counts, cohen_certify_counts

GRID = (0.25, 0.5, 0.75, 1.0)
ALPHA, N, N0, SIGMA = 0.001, 100_000, 100, 0.5


# -- 1. simulated classifiers -----------------------------------------------------------------
def _probabilities(kind: str, radius: float) -> tuple[np.ndarray, list[int] | None]:
    """Smoothed probabilities of 10 classes whose true radius is ``radius``."""
    p = np.zeros(10)
    if kind == "standard":
        p[0] = ndtr(radius / SIGMA)
        p[1:] = (1 - p[0]) / 9
        return p, None
    # p_A = 0.9 and the costly class of Omega = {1, 2} at Phi(PhiInv(p_A) - 2 R*/sigma), the
    # rest spread over 8 non-costly classes; small radii need p_B = 1 - p_A (then c = R*/sigma).
    center = min(float(ndtri(0.9)), radius / SIGMA)
    p[0] = ndtr(center)
    p[1] = ndtr(center - 2 * radius / SIGMA)
    p[3:] = max(0.0, 1 - p[0] - p[1]) / 7
    p[2] = max(0.0, 1 - p[0] - p[1] - p[3:].sum())
    return p / p.sum(), [1, 2]


def simulate(kind: str, examples: int, seed: int = 0) -> list[dict[str, Any]]:
    """Fixed n and the grid test on ``examples`` simulated inputs; rows for the table."""
    rng = np.random.default_rng(seed)
    radii = rng.uniform(0, 1.4, examples)
    fixed = np.zeros((examples, len(GRID)), dtype=bool)
    grid = np.zeros_like(fixed)
    samples, seconds = [], 0.0
    for i, radius in enumerate(radii):
        p, costly = _probabilities(kind, max(radius, 1e-9))
        selection = rng.multinomial(N0, p)
        counts = rng.multinomial(N, p)
        if costly is None:
            bound = cohen_certify_counts(selection, counts, sigma=SIGMA, alpha=ALPHA).radius
        else:
            bound = certify_counts(selection, counts, sigma=SIGMA, alpha=ALPHA,
                                   costly=costly).radius
        fixed[i] = [bound > eps for eps in GRID]
        started = time.process_time()
        test = SequentialTest(selection, eps=GRID, sigma=SIGMA, alpha=ALPHA, costly=costly,
                              n_max=N)
        drawn = np.zeros(10, dtype=np.int64)
        while test.decision is None:
            drawn += rng.multinomial(test.next_look - int(drawn.sum()), p)
            test.update(drawn)
        seconds += time.process_time() - started
        grid[i] = test.decision.certified
        samples.append(test.decision.samples)
    rows = []
    for mode, table, mean, per in (("fixed n", fixed, N0 + N, float("nan")),
                                   ("grid test", grid, float(np.mean(samples)),
                                    seconds / examples)):
        for j, eps in enumerate(GRID):
            rows.append({"part": "simulated", "model": kind, "mode": mode, "eps": eps,
                         "certified": float(table[:, j].mean()), "mean_samples": mean,
                         "saving": (N0 + N) / mean, "seconds_per_example": per,
                         "examples": examples})
    return rows


# -- 2. digits models -------------------------------------------------------------------------
def train_quick_digits(path: Path, *, steps: int = 300, cost: str = "3") -> Path:
    """Train a linear digits model under Gaussian noise with Adam and save it as a checkpoint."""
    digits = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = build_model("linear", num_classes=10, input_shape=digits.input_shape)
    inputs, labels = digits.train.tensors[0], torch.as_tensor(digits.train.tensors[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        noisy = inputs + SIGMA * torch.randn_like(inputs)
        torch.nn.functional.cross_entropy(model(noisy), labels).backward()
        optimizer.step()
    matrix = CostMatrix.parse(cost, 10)
    meta = {"arch": "linear", "num_classes": 10, "class_names": digits.class_names,
            "input_shape": list(digits.input_shape), "mean": None, "std": None,
            "dataset": "digits", "data_dir": None, "data_options": {}, "sigma": SIGMA,
            "cost_matrix": matrix.to_list(), "cost_spec": matrix.spec(), "method": "cohen",
            "hparams": {"steps": steps}, "epoch": 1, "epochs": 1, "seed": 0}
    return save_checkpoint(path, model, meta)


def digits_rows(checkpoint_path: Path, examples: int | None, batch: int) -> list[dict[str, Any]]:
    """Fixed n and the grid test on the test split of a digits checkpoint."""
    checkpoint = load_checkpoint(checkpoint_path)
    cost = checkpoint.cost_matrix()
    splits = load_dataset(checkpoint.meta["dataset"], seed=int(checkpoint.meta.get("data_seed",
                                                                                   0)))
    indices = select_indices(len(splits.test), max_examples=examples)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for mode, settings in (("fixed n", CertifySettings(n0=N0, n=N, alpha=ALPHA)),
                               ("grid test", SequentialSettings(eps=GRID, alpha=ALPHA, n0=N0,
                                                                n_max=N))):
            smoothed = SmoothedClassifier(checkpoint.build_model(), checkpoint.num_classes,
                                          checkpoint.sigma)
            out = Path(folder) / f"{mode.replace(' ', '-')}.tsv"
            started = time.perf_counter()
            result = certify_dataset(smoothed, splits.test, cost, settings=settings,
                                     indices=indices, batch_size=batch, out=out,
                                     progress=False)
            per = (time.perf_counter() - started) / len(indices)
            arrays = decisions_of(result, cost, settings) if mode == "grid test" else result
            for eps in GRID:
                summary = summarize(arrays, eps)
                mean = (summary["mean_samples"] if mode == "grid test" else N0 + N)
                rows.append({"part": "digits", "model": checkpoint_path.stem, "mode": mode,
                             "eps": eps, **{key: summary[key] for key in
                                            ("acc", "rob_cs", "rob_cs_std", "rob_non_std")},
                             "mean_samples": mean, "saving": (N0 + N) / mean,
                             "seconds_per_example": per, "examples": len(indices)})
    return rows


# -- output -----------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> str:
    columns = ["model", "mode", "eps", *metrics, "mean_samples", "saving", "seconds_per_example"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, float("nan"))) for c in columns) + " |"
              for row in rows]
    return "\n".join(lines)


def gaps(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[str]:
    """Per model: the saving and the worst per-eps gap of the grid test below fixed n."""
    lines = []
    for model in dict.fromkeys(row["model"] for row in rows):
        fixed = {row["eps"]: row for row in rows if row["model"] == model
                 and row["mode"] == "fixed n"}
        grid = {row["eps"]: row for row in rows if row["model"] == model
                and row["mode"] == "grid test"}
        worst = max((fixed[eps][m] - grid[eps][m], m, eps) for eps in GRID for m in metrics
                    if not np.isnan(fixed[eps][m]))
        saving = grid[GRID[0]]["saving"]
        lines.append(f"- {model}: {saving:.1f}x fewer samples; worst gap {worst[0]:+.4f} "
                     f"({worst[1]} at eps {worst[2]:g}; positive = grid test below fixed n)")
    return lines


def wide(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (model, eps) with fixed n's and the grid test's numbers side by side, the
    gap (the largest amount by which a grid-test metric falls below fixed n's), the samples
    and the seconds per example."""
    table = []
    for model in dict.fromkeys(row["model"] for row in rows):
        for eps in GRID:
            fixed, grid = (next(row for row in rows if row["model"] == model
                                and row["eps"] == eps and row["mode"] == mode)
                           for mode in ("fixed n", "grid test"))
            row = {"classifier": model, "eps": eps}
            for metric in metrics:
                row[f"fixed_{metric}"], row[f"grid_{metric}"] = fixed[metric], grid[metric]
            row |= {"gap": max(fixed[m] - grid[m] for m in metrics if not np.isnan(fixed[m])),
                    "fixed_samples": fixed["mean_samples"], "grid_samples": grid["mean_samples"],
                    "saving": grid["saving"],
                    "fixed_seconds_per_example": fixed["seconds_per_example"],
                    "seconds_per_example": grid["seconds_per_example"],
                    "examples": grid["examples"]}
            table.append(row)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path,
                        help="digits checkpoints (default: a linear model trained here)")
    parser.add_argument("--examples", type=int, default=1000,
                        help="simulated examples per kind (default 1000)")
    parser.add_argument("--quick", action="store_true", help="100 simulated and 40 digits "
                        "examples: a smoke run")
    parser.add_argument("--batch", type=int, default=1000, help="samples per forward pass")
    parser.add_argument("--record", action="store_true",
                        help="write docs/results/benchmarks_grid.csv and "
                             "benchmarks_grid_digits.csv and their provenance")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(1)
    simulated_examples = 100 if args.quick else args.examples
    rows = [row for kind in ("standard", "pairwise")
            for row in simulate(kind, simulated_examples)]
    print(f"Simulated classifiers ({simulated_examples} examples each, radii uniform on (0, 1.4],"
          f" alpha {ALPHA}, n = n_max = {N:,}):\n")
    print(table(rows, ["certified"]))
    print("\n" + "\n".join(gaps(rows, ["certified"])))
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = args.checkpoints or [train_quick_digits(Path(folder) / "digits-linear.pt")]
        digits = [row for path in checkpoints
                  for row in digits_rows(path, 40 if args.quick else None, args.batch)]
    metrics = ["acc", "rob_cs", "rob_cs_std", "rob_non_std"]
    print(f"\nDigits test split ({digits[0]['examples']} examples), cost '3', fixed n vs one "
          f"grid test per example (standard and cost-sensitive):\n")
    print(table(digits, metrics))
    print("\n" + "\n".join(gaps(digits, metrics)))
    if args.record:
        wall = time.perf_counter() - started
        simulated = wide(rows, ["certified"])
        record.write("benchmarks_grid.csv", simulated, list(simulated[0]),
                     module="benchmarks.adaptive", wall_s=wall)
        models = wide(digits, metrics)
        record.write("benchmarks_grid_digits.csv", models, list(models[0]),
                     module="benchmarks.adaptive", wall_s=wall)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
