"""Projected gradient descent in the l2 ball: the empirical check of deterministic certificates.

A certificate says no x' with ||x' - x||_2 <= eps changes the outcome; a strong attack that
finds such an x' refutes it. The attack stays in the l2 ball only and does not clip to the [0, 1]
pixel box, because the convex certificates of :mod:`csrs.convex` cover the whole ball too;
clipping would only weaken the attack.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["margins", "pgd_l2"]


def margins(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Returns f_y(x) - f_k(x) for every class k, shape (B, m) (0 at k = y)."""
    logits = model(x)
    return logits.gather(1, y[:, None]) - logits


def _target_margin(model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Returns f_y - f_target per example, or f_y - max_{k != y} f_k without a target."""
    gaps = margins(model, x, y)
    if target is not None:
        return gaps.gather(1, target[:, None]).squeeze(1)
    return gaps.scatter(1, y[:, None], torch.inf).min(1).values


def _project(delta: Tensor, eps: float) -> Tensor:
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = (eps / norms).clamp(max=1.0)
    return delta * factor.view(-1, *[1] * (delta.dim() - 1))


def _random_in_ball(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """Returns perturbations drawn uniformly from the l2 ball of radius eps."""
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(
        -1, *[1] * (x.dim() - 1))
    dims = x[0].numel()
    radius = eps * torch.rand(len(x), generator=generator, device=x.device,
                              dtype=x.dtype) ** (1 / dims)
    return direction * radius.view(-1, *[1] * (x.dim() - 1))


def pgd_l2(model: nn.Module, x: Tensor, y: Tensor, target: Tensor | int | None, eps: float, *,
           steps: int = 100, restarts: int = 5, step_size: float | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """Returns x' with ||x' - x||_2 <= eps that minimises the margin f_y - f_target (targeted)
    or f_y - max_{k != y} f_k (untargeted, ``target=None``), the best over all steps and restarts.

    Normalised-gradient l2 PGD (Madry et al. 2018) on the margin itself, with step size
    2.5 * eps / steps by default. The first restart starts at x, the others uniformly in the
    ball (``generator`` makes them reproducible). No clipping to [0, 1] (module docstring).
    """
    if eps < 0 or steps < 1 or restarts < 1:
        raise ValueError(f"need eps >= 0, steps >= 1, restarts >= 1; got {eps}, {steps}, "
                         f"{restarts}")
    if isinstance(target, int):
        target = torch.full_like(y, target)
    if target is not None and bool((target == y).any()):
        raise ValueError("a targeted attack needs target != y for every example")
    step_size = 2.5 * eps / steps if step_size is None else step_size
    shape = (-1, *[1] * (x.dim() - 1))
    x = x.detach()
    best_delta = torch.zeros_like(x)
    with torch.no_grad():
        best_margin = _target_margin(model, x, y, target)
    if eps == 0:
        return x.clone()
    for restart in range(restarts):
        delta = torch.zeros_like(x) if restart == 0 else _random_in_ball(x, eps, generator)
        for _ in range(steps):
            delta.requires_grad_(True)
            with torch.enable_grad():
                margin = _target_margin(model, x + delta, y, target)
                (grad,) = torch.autograd.grad(margin.sum(), delta)
            with torch.no_grad():
                improved = margin < best_margin
                best_margin = torch.where(improved, margin, best_margin)
                best_delta[improved] = delta[improved]
                direction = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
                delta = _project(delta - step_size * direction, eps)
        with torch.no_grad():
            margin = _target_margin(model, x + delta, y, target)
            improved = margin < best_margin
            best_margin = torch.where(improved, margin, best_margin)
            best_delta[improved] = delta[improved]
    return x + best_delta
