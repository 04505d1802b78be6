"""Training objectives: one pure function per method, registered in :data:`OBJECTIVES`.

Every objective takes the base classifier ``model`` (in train mode, so BatchNorm sees noisy
inputs), a batch ``x`` in [0, 1], labels ``y``, ``costly_mask`` (B, m) bool, the rows Omega_y of
the cost matrix (all False for non-sensitive examples), the noise level ``sigma`` and a
``torch.Generator`` on ``x``'s device for the Gaussian noise, plus the method's hyperparameters
(:data:`METHOD_DEFAULTS`). It returns :class:`LossParts`.

Hyperparameters and their symbols in the paper (Section 4) and NOTES.md:

- ``weight``    alpha_w >= 1, Cohen-R's weight of sensitive examples (1.2);
- ``num_noise`` k, noise draws per example of MACER and CS-RS (16);
- ``beta``      beta, inverse temperature of the soft smoothed classifier in the radius terms (16);
- ``gamma``     gamma, MACER's hinge threshold on the PhiInv gap (8);
- ``gamma1``    gamma_1, the I2 threshold of Eq. 2 (4);
- ``gamma2``    gamma_2, the I3 threshold of Eq. 2 (16);
- ``lam``       lambda, weight of the robustness terms (12).

The thresholds live on the PhiInv-gap scale, as in MACER: a gap g is a radius of sigma/2 * g, and
the hinge ``L_M(r; l, u)`` of the paper is applied as ``sigma/2 * (u - g) * 1(l <= g <= u)``.
Gaps that are not finite (a probability of exactly 0 or 1) are left out, and they are masked
*before* PhiInv, so that no inf or NaN reaches the loss or its gradient. The gaps are computed in
float64, with PhiInv(p) = -PhiInv(1 - p) above 1/2 and 1 - p summed from the other classes, so
that they stay finite and exact over the whole window [-gamma_2, gamma_2]: in float32 the top
probability rounds to 1 and the gap turns infinite beyond about |gap| = 10.6.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "METHOD_DEFAULTS",
    "OBJECTIVES",
    "LossParts",
    "cohen",
    "cohen_r",
    "cost_sensitive_classes",
    "cost_sensitive_hinge",
    "csrs",
    "macer",
    "noisy_probabilities",
    "phi_inv_gap",
    "resolve_hparams",
    "standard_classes",
    "standard_hinge",
]

# Added to the soft smoothed probabilities before the log of the classification loss (MACER).
LOG_EPSILON = 1e-10


@dataclass
class LossParts:
    """One batch's loss: ``total`` to backpropagate, and detached 0-dim parts for logging.

    ``classification`` is the cross-entropy term (I1), ``robust_normal`` the standard hinge
    (MACER's robustness term, I2), ``robust_sensitive`` the cost-sensitive hinge (I3), each before
    the factor lambda (0 when the method has none). ``accuracy`` is the fraction of noisy
    predictions f(x + delta) that equal y.
    """

    total: Tensor
    classification: Tensor
    robust_normal: Tensor
    robust_sensitive: Tensor
    accuracy: Tensor


def _noisy_logits(model: nn.Module, x: Tensor, sigma: float, num_noise: int,
                  generator: torch.Generator) -> Tensor:
    """Returns float32 logits (B * k, m) of f(x + delta) for k draws of delta ~ N(0, sigma^2 I).

    Copies of an example are adjacent: row ``i * k + j`` is draw j of example i.
    """
    repeated = x.repeat_interleave(num_noise, dim=0)
    noise = torch.randn(repeated.shape, generator=generator, device=x.device, dtype=x.dtype)
    return model(repeated + sigma * noise).float()


def _noisy_accuracy(logits: Tensor, y: Tensor, num_noise: int) -> Tensor:
    """Returns the fraction of noisy predictions equal to their label."""
    return (logits.argmax(1) == y.repeat_interleave(num_noise)).float().mean().detach()


def noisy_probabilities(logits: Tensor, num_noise: int, beta: float = 1.0) -> Tensor:
    """Returns softmax(beta * logits) per draw, (B, k, m), in float64.

    Its mean over the k draws is MACER's soft smoothed classifier, the differentiable stand-in
    for the class probabilities of the smoothed classifier. float64 keeps the tiny probabilities
    of a confident prediction (float32 rounds the top one to 1 from a logit margin of about
    17 / beta on, where every gap turns infinite and is left out).
    """
    probs = F.softmax(beta * logits.double(), dim=1)
    return probs.view(-1, num_noise, probs.shape[1])


def _draws(probs: Tensor) -> Tensor:
    """Returns ``probs`` as (B, k, m): a (B, m) matrix is one draw per example."""
    return probs[:, None] if probs.dim() == 2 else probs


def standard_classes(probs: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Returns (y, argmax_{k != y} p_k): the standard radius is
    sigma/2 * (PhiInv(p_y) - PhiInv(max_{k != y} p_k)) (MACER; Eq. 2, I2)."""
    smoothed = _draws(probs).mean(1)
    rival = smoothed.masked_fill(F.one_hot(y, smoothed.shape[1]).bool(), -1.0).argmax(1)
    return y, rival


def cost_sensitive_classes(probs: Tensor, costly_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Returns (argmax_{c not in Omega_y} p_c, argmax_{k in Omega_y} p_k): the signed
    cost-sensitive radius is R*(p) = sigma/2 * (PhiInv(p_first) - PhiInv(p_second)) (Eq. 2, I3).

    The second is meaningless where Omega_y is empty. For a seedwise row (Omega_y = all but y) the
    first is y, so the gap is MACER's standard gap.
    """
    smoothed = _draws(probs).mean(1)
    safe = smoothed.masked_fill(costly_mask, -1.0).argmax(1)
    costly = smoothed.masked_fill(~costly_mask, -1.0).argmax(1)
    return safe, costly


def _mass(probs: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Returns (p_c, 1 - p_c) of class ``index`` of each example, both sums of probabilities:
    1 - p_c is the mass of the other classes, exact even where p_c rounds to 1."""
    draws = _draws(probs)
    chosen = F.one_hot(index, draws.shape[2]).bool()[:, None, :]
    return (draws.masked_fill(~chosen, 0.0).sum(2).mean(1),
            draws.masked_fill(chosen, 0.0).sum(2).mean(1))


def _phi_inv(p: Tensor, q: Tensor) -> Tensor:
    """Returns PhiInv(p) given q = 1 - p, as -PhiInv(q) above 1/2 for precision near 1.

    The branch not taken sees 1/2, so that its PhiInv(0 or 1) cannot poison the gradient.
    """
    upper = p > 0.5
    half = torch.full_like(p, 0.5)
    return torch.where(upper, -torch.special.ndtri(torch.where(upper, q, half)),
                       torch.special.ndtri(torch.where(upper, half, p)))


def phi_inv_gap(probs: Tensor, high: Tensor, low: Tensor) -> Tensor:
    """Returns PhiInv(p_high) - PhiInv(p_low) per example (inf or NaN where a p is 0 or 1)."""
    return _phi_inv(*_mass(probs, high)) - _phi_inv(*_mass(probs, low))


def _gap_hinge(probs: Tensor, high: Tensor, low: Tensor, lower: float, upper: float,
               sigma: float, eligible: Tensor) -> Tensor:
    """Returns sigma/2 * L_M(g; lower, upper) per example, g = PhiInv(p_high) - PhiInv(p_low):
    ``sigma/2 * (upper - g)`` where ``eligible`` and ``lower <= g <= upper`` with g finite, else 0.

    The selection is made without gradient, and the probabilities of unselected examples are
    replaced by 1/2 before PhiInv: PhiInv(1) = inf would otherwise turn a zero gradient into
    0 * inf = NaN.
    """
    with torch.no_grad():
        gap = phi_inv_gap(probs, high, low)
        selected = eligible & torch.isfinite(gap) & (gap >= lower) & (gap <= upper)
    half = torch.full(selected.shape, 0.5, dtype=probs.dtype, device=probs.device)

    def phi_inv(index: Tensor) -> Tensor:
        p, q = _mass(probs, index)
        return _phi_inv(torch.where(selected, p, half), torch.where(selected, q, half))

    gap = phi_inv(high) - phi_inv(low)
    return torch.where(selected, sigma / 2 * (upper - gap), torch.zeros_like(gap))


def standard_hinge(probs: Tensor, y: Tensor, sigma: float, gamma: float) -> Tensor:
    """Returns MACER's per-example robustness loss (MACER; Eq. 2, I2 with gamma = gamma_1):
    sigma/2 * (gamma - g) for examples whose standard gap g lies in [0, gamma], else 0.

    ``probs`` are (B, k, m) per-draw or (B, m) smoothed probabilities.
    """
    eligible = torch.ones_like(y, dtype=torch.bool)
    return _gap_hinge(probs, *standard_classes(probs, y), 0.0, gamma, sigma, eligible)


def cost_sensitive_hinge(probs: Tensor, costly_mask: Tensor, sigma: float,
                         gamma2: float) -> Tensor:
    """Returns the per-example I3 loss of Eq. 2: sigma/2 * (gamma2 - m) for sensitive examples
    whose signed cost-sensitive gap m lies in [-gamma2, gamma2], else 0.

    A negative m means the top class is costly; the hinge then pulls it back (NOTES.md: the signed
    gap, not the published code's top-1 probability, which gives no gradient there).
    """
    return _gap_hinge(probs, *cost_sensitive_classes(probs, costly_mask), -gamma2, gamma2, sigma,
                      costly_mask.any(1))


def cohen(model: nn.Module, x: Tensor, y: Tensor, costly_mask: Tensor, sigma: float,
          generator: torch.Generator) -> LossParts:
    """Returns Cohen et al.'s loss: cross-entropy of f(x + delta), one noise draw per example."""
    logits = _noisy_logits(model, x, sigma, 1, generator)
    loss = F.cross_entropy(logits, y)
    zero = torch.zeros((), device=x.device)
    return LossParts(loss, loss.detach(), zero, zero, _noisy_accuracy(logits, y, 1))


def cohen_r(model: nn.Module, x: Tensor, y: Tensor, costly_mask: Tensor, sigma: float,
            generator: torch.Generator, *, weight: float = 1.2) -> LossParts:
    """Returns Cohen-R's loss (Section 4.1): cross-entropy of f(x + delta), sensitive examples'
    loss multiplied by ``weight`` (alpha_w).

    Normalised by the batch size, sum_i w_i CE_i / B: the batch estimate of E_{D_n}[CE] + alpha_w
    E_{D_s}[CE] with each expectation weighted by its share of the data, so that weight 1 is
    exactly Cohen's loss and the step size does not depend on how many sensitive examples a batch
    holds.
    """
    logits = _noisy_logits(model, x, sigma, 1, generator)
    weights = torch.where(costly_mask.any(1), weight, 1.0).to(logits.dtype)
    loss = (weights * F.cross_entropy(logits, y, reduction="none")).mean()
    zero = torch.zeros((), device=x.device)
    return LossParts(loss, loss.detach(), zero, zero, _noisy_accuracy(logits, y, 1))


def _macer_terms(model: nn.Module, x: Tensor, y: Tensor, sigma: float,
                 generator: torch.Generator, num_noise: int,
                 beta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (classification loss, per-draw softmax(beta * logits), noisy accuracy).

    The classification loss is MACER's: the NLL of log(mean softmax + 1e-10), averaged (Eq. 2, I1).
    """
    logits = _noisy_logits(model, x, sigma, num_noise, generator)
    soft = F.softmax(logits, dim=1).view(len(x), num_noise, -1).mean(1)
    classification = F.nll_loss(torch.log(soft + LOG_EPSILON), y)
    return (classification, noisy_probabilities(logits, num_noise, beta),
            _noisy_accuracy(logits, y, num_noise))


def macer(model: nn.Module, x: Tensor, y: Tensor, costly_mask: Tensor, sigma: float,
          generator: torch.Generator, *, num_noise: int = 16, beta: float = 16.0,
          gamma: float = 8.0, lam: float = 12.0) -> LossParts:
    """Returns MACER's loss (Zhai et al. 2020, as NOTES.md fixes it): classification + lambda *
    robustness, the robustness being sigma/2 * sum of (gamma - gap) over the examples with gap in
    [0, gamma], divided by the batch size B. ``costly_mask`` is unused."""
    classification, probs, accuracy = _macer_terms(model, x, y, sigma, generator, num_noise, beta)
    robustness = (standard_hinge(probs, y, sigma, gamma).sum() / len(y)).float()
    zero = torch.zeros((), device=x.device)
    return LossParts(classification + lam * robustness, classification.detach(),
                     robustness.detach(), zero, accuracy)


def csrs(model: nn.Module, x: Tensor, y: Tensor, costly_mask: Tensor, sigma: float,
         generator: torch.Generator, *, num_noise: int = 16, beta: float = 16.0,
         gamma1: float = 4.0, gamma2: float = 16.0, lam: float = 12.0) -> LossParts:
    """Returns the paper's CS-RS loss, Eq. 2: I1 + lambda * I2 + lambda * I3.

    I1 is MACER's classification loss over all examples; I2 the standard hinge with gamma_1 over
    ALL examples (D, not D_n, as the paper chooses); I3 the hinge (gamma_2 - m) on the signed
    cost-sensitive gap m in [-gamma_2, gamma_2] of the sensitive examples. I2 and I3 are both sums
    divided by the batch size B: I3 is thus the batch estimate of P(sensitive) * E_{D_s}[L_M],
    a constant factor away from the paper's E_{D_s} that lambda absorbs, and a batch without
    sensitive examples contributes no I3 instead of a noisy average over few of them.
    """
    classification, probs, accuracy = _macer_terms(model, x, y, sigma, generator, num_noise, beta)
    normal = (standard_hinge(probs, y, sigma, gamma1).sum() / len(y)).float()
    sensitive = (cost_sensitive_hinge(probs, costly_mask, sigma, gamma2).sum() / len(y)).float()
    total = classification + lam * normal + lam * sensitive
    return LossParts(total, classification.detach(), normal.detach(), sensitive.detach(),
                     accuracy)


def zhang_evans(model: nn.Module, x: Tensor, y: Tensor, costly_mask: Tensor, sigma: float,
                generator: torch.Generator | None = None, *, eps: float = 0.25,
                kappa: float = 1.0, eps_warmup: int = 5) -> LossParts:
    """Zhang & Evans (2019): clean CE + kappa * convex-bound robust loss on the costly pairs.

    No noise (``sigma`` and ``generator`` are unused): the l2 ball of radius ``eps`` is bounded
    by Wong & Kolter's dual network (:mod:`csrs.convex`). The training loop ramps ``eps`` up
    over the first ``eps_warmup`` epochs.
    """
    from csrs.convex import zhang_evans_objective

    return zhang_evans_objective(model, x, y, costly_mask, eps=eps, kappa=kappa)


Objective = Callable[..., LossParts]

OBJECTIVES: dict[str, Objective] = {
    "cohen": cohen,
    "cohen-r": cohen_r,
    "macer": macer,
    "csrs": csrs,
    "zhang-evans": zhang_evans,
}

METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "cohen": {},
    "cohen-r": {"weight": 1.2},
    "macer": {"num_noise": 16, "beta": 16.0, "gamma": 8.0, "lam": 12.0},
    "csrs": {"num_noise": 16, "beta": 16.0, "gamma1": 4.0, "gamma2": 16.0, "lam": 12.0},
    "zhang-evans": {"eps": 0.25, "kappa": 1.0, "eps_warmup": 5},
}

# The admissible range of each hyperparameter: (lowest value, whether the lowest is allowed).
_RANGES: dict[str, tuple[float, bool]] = {
    "weight": (1.0, True), "num_noise": (1, True), "beta": (0.0, False), "gamma": (0.0, False),
    "gamma1": (0.0, False), "gamma2": (0.0, False), "lam": (0.0, True),
    "eps": (0.0, True), "kappa": (0.0, True), "eps_warmup": (0, True),
}


def resolve_hparams(method: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Returns the method's hyperparameters: :data:`METHOD_DEFAULTS` updated by ``overrides``.

    Raises ValueError naming an unknown method, an unknown hyperparameter or a value out of range.
    """
    if method not in OBJECTIVES:
        raise ValueError(f"unknown method '{method}'; choose from: {', '.join(OBJECTIVES)}")
    hparams = dict(METHOD_DEFAULTS[method])
    for key, value in (overrides or {}).items():
        if key not in hparams:
            known = ", ".join(hparams) or "none"
            raise ValueError(f"method '{method}' has no hyperparameter '{key}'; its "
                             f"hyperparameters: {known}")
        default = hparams[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(default, int) and not float(value).is_integer()):
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ValueError(f"hyperparameter {key} must be {kind}; got {value!r}")
        lowest, inclusive = _RANGES[key]
        if not (value >= lowest if inclusive else value > lowest):
            relation = ">=" if inclusive else ">"
            raise ValueError(f"hyperparameter {key} must be {relation} {lowest:g}; got {value!r}")
        hparams[key] = type(default)(value)
    return hparams
