"""The baseline: certify one example at a time, as the original randomized-smoothing code does.

For each example and each of its two sampling stages (n0 samples to guess the top class, n to
bound its probability), repeat the input into a batch, add fresh ``torch.randn`` noise, run the
model, take the argmax, move the labels to the host and count them in Python; then Cohen et al.'s
CERTIFY: a one-sided Clopper-Pearson lower bound p_A on the guessed class, radius
sigma * PhiInv(p_A), or abstain below 1/2. One TSV row per example, flushed as it is written.

Written for :mod:`benchmarks.run`, which times it beside csrs. Not seeded per example, so its
counts are not comparable with csrs's; only its speed and memory are.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from scipy.stats import beta, norm
from torch import nn
from torch.utils.data import Dataset

ABSTAIN = -1


def sample_counts(model: nn.Module, x: torch.Tensor, num: int, *, sigma: float,
                  num_classes: int, batch_size: int, amp: bool = False) -> np.ndarray:
    """Return the votes of ``num`` noisy copies of ``x`` (no batch dim), a batch at a time."""
    counts = np.zeros(num_classes, dtype=np.int64)
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else nullcontext()
    remaining = num
    while remaining > 0:
        size = min(batch_size, remaining)
        remaining -= size
        batch = x.repeat((size, *[1] * x.dim()))
        noise = torch.randn_like(batch) * sigma
        with autocast:
            predictions = model(batch + noise).argmax(1).cpu().numpy()
        for label in predictions:
            counts[label] += 1
    return counts


@torch.no_grad()
def certify(model: nn.Module, x: torch.Tensor, *, num_classes: int, sigma: float, n0: int,
            n: int, alpha: float, batch_size: int, amp: bool = False) -> tuple[int, float]:
    """Return Cohen et al.'s CERTIFY of one input: (prediction or ABSTAIN, radius)."""
    selection = sample_counts(model, x, n0, sigma=sigma, num_classes=num_classes,
                              batch_size=batch_size, amp=amp)
    guess = int(selection.argmax())
    estimation = sample_counts(model, x, n, sigma=sigma, num_classes=num_classes,
                               batch_size=batch_size, amp=amp)
    votes = int(estimation[guess])
    p_a_lower = float(beta.ppf(alpha, votes, n - votes + 1)) if votes > 0 else 0.0
    if p_a_lower < 0.5:
        return ABSTAIN, 0.0
    return guess, sigma * float(norm.ppf(p_a_lower))


def certify_dataset(model: nn.Module, dataset: Dataset, indices: Sequence[int], out: Path, *,
                    num_classes: int, sigma: float, n0: int, n: int, alpha: float,
                    batch_size: int, device: torch.device, amp: bool = False) -> None:
    """Certify ``dataset[i]`` for each index, one example at a time, writing a TSV to ``out``."""
    model = model.to(device).eval()
    with open(out, "w", encoding="utf-8") as handle:
        print("idx\tlabel\tpredict\tradius\tcorrect", file=handle, flush=True)
        for index in indices:
            x, label = dataset[index]
            prediction, radius = certify(model, torch.as_tensor(x).to(device),
                                         num_classes=num_classes, sigma=sigma, n0=n0, n=n,
                                         alpha=alpha, batch_size=batch_size, amp=amp)
            print(f"{index}\t{int(label)}\t{prediction}\t{radius:.6g}\t"
                  f"{int(prediction == int(label))}", file=handle, flush=True)
