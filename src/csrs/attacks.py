"""Projected gradient methods in the l2 ball: attacks on a base classifier and on its smoothing.

- :func:`pgd_l2`: the empirical check of deterministic certificates. A certificate says no x'
  with ||x' - x||_2 <= eps changes the outcome; a strong attack that finds such an x' refutes it.
- :func:`smoothed_pgd_l2`: SmoothAdv's attack on the soft smoothed classifier (Salman et al.
  2019), which adversarial training for smoothing (``smoothadv``, ``smoothadv-cs`` in
  :mod:`csrs.objectives`) trains against.

Both take normalised-gradient steps and stay in the l2 ball only, without clipping to the [0, 1]
pixel box: the certificates of :mod:`csrs.convex` and of randomized smoothing cover the whole
ball, and clipping would only weaken the attack. (Salman et al.'s code clips.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["margins", "pgd_l2", "smoothed_log_probs", "smoothed_pgd_l2"]


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


def _l2_step(delta: Tensor, grad: Tensor, step_size: float, eps: float) -> Tensor:
    """Returns delta + step_size * grad / ||grad||_2 per example, projected into the eps-ball
    (an example whose gradient is 0 stays where it is)."""
    norms = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.dim() - 1))
    return _project(delta + step_size * grad / norms, eps)


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
                delta = _l2_step(delta, -grad, step_size, eps)
        with torch.no_grad():
            margin = _target_margin(model, x + delta, y, target)
            improved = margin < best_margin
            best_margin = torch.where(improved, margin, best_margin)
            best_delta[improved] = delta[improved]
    return x + best_delta


def smoothed_log_probs(model: nn.Module, inputs: Tensor, num_noise: int) -> Tensor:
    """Returns log of the soft smoothed classifier, (B, classes): log of the mean of
    softmax(model(row)) over each example's ``num_noise`` adjacent rows of ``inputs``
    (B * num_noise rows, noise already added), as a logsumexp that stays finite for tiny
    probabilities.
    """
    log_probs = F.log_softmax(model(inputs).float(), dim=1)
    return torch.logsumexp(log_probs.view(-1, num_noise, log_probs.shape[1]), dim=1) \
        - math.log(num_noise)


def smoothed_pgd_l2(model: nn.Module, x: Tensor, noise: Tensor,
                    gain: Callable[[Tensor], Tensor], eps: float, *, steps: int,
                    step_size: float | None = None) -> Tensor:
    """Returns x + delta with ||delta||_2 <= eps that ascends ``gain`` on the soft smoothed
    classifier: SmoothAdv's attack (Salman et al. 2019: PGD on the smoothed soft classifier
    G(x') = E_delta softmax(f(x' + delta)), estimated with m fixed noise draws).

    ``noise`` (B * m, ...) holds the m draws of each example on adjacent rows (row i * m + j);
    the same draws serve every step, as in Salman et al.'s code. ``gain`` maps the (B, classes)
    log-probabilities of the smoothed classifier at x + delta (:func:`smoothed_log_probs`) to one
    value per example to maximise; each example's step follows the gradient of its own gain.
    ``steps`` normalised-gradient steps of 2 * eps / steps (their step size) from delta = 0. The
    model is attacked in the mode it is in; the result is detached.
    """
    if eps < 0 or steps < 1:
        raise ValueError(f"need eps >= 0 and steps >= 1; got {eps}, {steps}")
    num_noise = len(noise) // len(x)
    if num_noise < 1 or len(noise) != num_noise * len(x):
        raise ValueError(f"noise needs m rows per example; got {len(noise)} rows for {len(x)} "
                         f"examples")
    step_size = 2 * eps / steps if step_size is None else step_size
    x = x.detach()
    delta = torch.zeros_like(x)
    if eps == 0:
        return x.clone()
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            inputs = (x + delta).repeat_interleave(num_noise, dim=0) + noise
            value = gain(smoothed_log_probs(model, inputs, num_noise))
            (grad,) = torch.autograd.grad(value.sum(), delta)
        delta = _l2_step(delta.detach(), grad, step_size, eps)
    return x + delta
