"""What the tighter alpha allocation buys: Rob_cs with and without the split over |Omega_y|.

    python -m benchmarks.allocation CHECKPOINT [CHECKPOINT ...] [--cost 3] [--eps 0.5]

Both allocations are computed from the same counts (n0 = 100, n = 100,000 by default) of each
sensitive test example: "split" bounds each p_k, k in Omega_y, at alpha / (2 |Omega_y|) (the
sound certificate csrs shipped before, and the paper's), "no split" at alpha/2
(docs/theory.md#no-split-over-omega: one event, whatever |Omega_y| is). Prints a markdown table
of Rob_cs at --eps per checkpoint, and the mean certified radius of the sensitive examples.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import ndtri

from benchmarks import record
from csrs.checkpoint import load_checkpoint
from csrs.costs import CostMatrix
from csrs.data import load_dataset
from csrs.smoothing import ESTIMATION, SELECTION, SmoothedClassifier
from csrs.stats import clopper_pearson_lower, clopper_pearson_upper


def cs_radius(selection: np.ndarray, estimation: np.ndarray, costly: list[int], *, sigma: float,
              alpha: float, split: bool) -> float:
    """max(R1, R2) with pA_lower at alpha/2 and the costly upper bounds split or not; 0 when
    the candidate is costly or nothing is certified."""
    n = int(estimation.sum())
    candidate = int(np.argmax(selection))
    if candidate in costly:
        return 0.0
    p_a = clopper_pearson_lower(int(estimation[candidate]), n, alpha / 2)
    level = alpha / (2 * len(costly)) if split else alpha / 2
    p_b = max(clopper_pearson_upper(int(estimation[k]), n, level) for k in costly)
    radius = max(sigma * ndtri(p_a), sigma / 2 * (ndtri(p_a) - ndtri(p_b)))
    return float(radius) if radius > 0 else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--cost", default=None, help="cost spec (default: the checkpoint's)")
    parser.add_argument("--eps", type=float, default=0.5)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=4000)
    parser.add_argument("--record", action="store_true",
                        help="write docs/results/benchmarks_allocation.csv and its provenance")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started, table = time.perf_counter(), []
    print("| checkpoint | cost | sensitive | Rob_cs split | Rob_cs no split | mean radius "
          "split | mean radius no split |\n|---|---|---:|---:|---:|---:|---:|")
    for path in args.checkpoints:
        checkpoint = load_checkpoint(path)
        meta = checkpoint.meta
        cost = (CostMatrix.parse(args.cost, checkpoint.num_classes, checkpoint.class_names)
                if args.cost else checkpoint.cost_matrix())
        splits = load_dataset(meta["dataset"], meta.get("data_dir"),
                              seed=int(meta.get("data_seed", 0)))
        smoothed = SmoothedClassifier(checkpoint.build_model(), checkpoint.num_classes,
                                      checkpoint.sigma)
        examples = [(i, int(splits.test[i][1])) for i in range(len(splits.test))
                    if cost.is_sensitive(int(splits.test[i][1]))]
        inputs = torch.stack([torch.as_tensor(splits.test[i][0]) for i, _ in examples])
        requests = [request for row, (i, _) in enumerate(examples)
                    for request in ((row, i, SELECTION, 100), (row, i, ESTIMATION, args.n))]
        counts = smoothed.sample_counts_many(inputs, requests, batch_size=args.batch)
        radii = {split: np.array([cs_radius(counts[2 * row], counts[2 * row + 1],
                                            cost.costly(label), sigma=checkpoint.sigma,
                                            alpha=args.alpha, split=split)
                                  for row, (_, label) in enumerate(examples)])
                 for split in (True, False)}
        print(f"| {path.name} | {cost.spec()} | {len(examples)} | "
              f"{(radii[True] > args.eps).mean():.3f} | {(radii[False] > args.eps).mean():.3f} | "
              f"{radii[True].mean():.3f} | {radii[False].mean():.3f} |")
        table.append({"checkpoint": path.name, "cost": cost.spec(), "sensitive": len(examples),
                      "eps": args.eps, "rob_cs_split": float((radii[True] > args.eps).mean()),
                      "rob_cs_no_split": float((radii[False] > args.eps).mean()),
                      "mean_radius_split": float(radii[True].mean()),
                      "mean_radius_no_split": float(radii[False].mean())})
    if args.record:
        record.write("benchmarks_allocation.csv", table, list(table[0]),
                     module="benchmarks.allocation", wall_s=time.perf_counter() - started)


if __name__ == "__main__":
    main()
