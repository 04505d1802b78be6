"""Training objectives: one pure function per method, registered in :data:`OBJECTIVES`.

Every objective is called as ``objective(model, x, y, cost_rows, sigma, generator, **hparams)``
and returns :class:`LossParts`: the base classifier ``model`` (in train mode, so BatchNorm sees
noisy inputs), a batch ``x`` in [0, 1], labels ``y``, ``cost_rows`` (B, m), the row C[y] of the
cost matrix for each example (all 0 for non-sensitive examples; a bool table means unit costs),
the noise level ``sigma``, a ``torch.Generator`` on ``x``'s device for the Gaussian noise, and
the method's hyperparameters (:data:`METHOD_DEFAULTS`). Omega_y is ``cost_rows > 0``: methods of
the binary paper (Cohen-R, CS-RS) read that set, the real-valued ones (Margin-CS, SmoothAdv-CS,
Zhang & Evans) the costs too. A new method is one function here and one line in each registry.

Hyperparameters and their symbols in the paper (Section 4) and docs/theory.md:

- ``weight``    alpha_w >= 1, Cohen-R's weight of sensitive examples (1.2); also SmoothAdv-CS's
                with ``variant = "reweight"`` (and only then);
- ``weighting`` how Cohen-R applies it: per ``example`` (default) or per ``group`` (the authors'
                code: mean loss of the normal examples + alpha_w * that of the sensitive ones);
- ``num_noise`` k, noise draws per example of MACER, CS-RS and Margin-CS (16); m_train, noise
                draws of SmoothAdv's attack and loss (4);
- ``beta``      beta, inverse temperature of the soft smoothed classifier in the radius terms (16);
- ``gamma``     gamma, MACER's hinge threshold on the PhiInv gap (8);
- ``gamma1``    gamma_1, the threshold of the hinge of normal examples (CS-RS's I2; 4);
- ``gamma2``    gamma_2, the threshold of the hinge of sensitive examples (CS-RS's I3; 16);
- ``lam``       lambda, weight of the robustness terms (MACER, CS-RS; 12);
- ``lam1``, ``lam2``  lambda_1, lambda_2, Margin-CS's weights of its normal and sensitive terms (3);
- ``ce``        the classification loss of Margin-CS and CS-RS: ``per-draw`` cross-entropy
                (Cohen's; Margin-CS's default) or the ``smoothed`` NLL of the soft smoothed
                classifier (MACER's; CS-RS's default, Eq. 2's I1);
- ``window``    Margin-CS's sensitive window: ``nonnegative`` [0, gamma_2] (default) or ``signed``
                [-gamma_2, gamma_2] (the 2023 CS-RS window);
- ``pair_gap``  the class whose probability Margin-CS's pairwise gaps start from: ``label``, p_y
                (default), or ``top``, max_k p_k (below);
- ``variant``   SmoothAdv-CS's adaptation of SmoothAdv: ``attack``, the cost-weighted attack
                (default), or ``reweight``, SmoothAdv's attack unchanged and the loss of sensitive
                examples weighted like Cohen-R's, by ``weight`` (below);
- ``steps``     T, SmoothAdv's PGD steps (4);
- ``eps``       the l2 radius of training: SmoothAdv's eps_train (0.5), Zhang & Evans's (0.25);
- ``eps_warmup`` epochs over which the training loop ramps ``eps`` up linearly (10; 5);
- ``kappa``     Zhang & Evans's weight of the robust loss (1).

The thresholds live on the PhiInv-gap scale, as in MACER: a gap g is a radius of sigma/2 * g, and
the hinge ``L_M(r; l, u)`` of the paper is applied as ``sigma/2 * (u - g) * 1(l <= g <= u)``.
Gaps that are not finite (a probability of exactly 0 or 1) are left out, and they are masked
*before* PhiInv, so that no inf or NaN reaches the loss or its gradient. The gaps are computed in
float64, with PhiInv(p) = -PhiInv(1 - p) above 1/2 and 1 - p summed from the other classes, so
that they stay finite and exact over the whole window [-gamma_2, gamma_2]: in float32 the top
probability rounds to 1 and the gap turns infinite beyond about |gap| = 10.6.

Two readings of the 2025 paper are open (see docs/theory.md), so both are choices:

- Margin-CS's pairwise gap of a costly class j is PhiInv(p_y) - PhiInv(p_j) in our reading
  (``pair_gap="label"``), PhiInv(max_k p_k) - PhiInv(p_j) in a third-party summary of the paper
  (``"top"``, the pairwise radius that certification computes). The two agree on every example
  whose top class is y. The default is ``label`` because it trains the right class to win where
  they differ: where another wrong class is on top, ``top`` rewards that class for beating j
  rather than y for beating both, trading accuracy for Rob_cs; and a pair whose costly class j
  is itself on top has under ``top`` the gap 0 by definition, a constant hinge with no gradient
  whatever the window (the 2023 code's top-1 reading has the same hole), where ``label`` with
  the signed window pulls j back.
- SmoothAdv-CS attacks a sensitive example towards its costly classes in our reading
  (``variant="attack"``: PGD maximises log sum_j C[y][j] G_j); the authors' released code
  describes its SmoothAdv baseline as a reweighting adaptation (``"reweight"``: SmoothAdv's attack
  on the label unchanged, then the noisy cross-entropy at the adversarial point of example i
  multiplied by w_i = 1 + (alpha_w - 1) * max_j C[y_i][j], Cohen-R's per-example weight, with
  the same ``weight`` alpha_w = 1.2). The default is ``attack``: it is the only one of the two
  that puts the costs into the adversarial training itself, and ``reweight`` is Cohen-R's
  reweighting on top of SmoothAdv, a combination of two baselines the comparison already has.

Both defaults are also the objectives that the demo's and the studies' published numbers were
trained with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csrs.attacks import smoothed_pgd_l2
from csrs.convex import cost_sensitive_robust_loss

__all__ = [
    "METHOD_DEFAULTS",
    "OBJECTIVES",
    "ROBUSTNESS_WEIGHTS",
    "LossParts",
    "cohen",
    "cohen_r",
    "cost_attack_gain",
    "cost_sensitive_classes",
    "cost_sensitive_hinge",
    "csrs",
    "label_attack_gain",
    "macer",
    "margin_cs",
    "noisy_probabilities",
    "pairwise_cost_hinge",
    "phi_inv_gap",
    "resolve_hparams",
    "smoothadv",
    "smoothadv_cs",
    "standard_classes",
    "standard_hinge",
    "top_classes",
    "zhang_evans",
]

# Added to the soft smoothed probabilities before the log of the classification loss (MACER).
LOG_EPSILON = 1e-10


@dataclass
class LossParts:
    """One batch's loss: ``total`` to backpropagate, and detached 0-dim parts for logging.

    ``classification`` is the cross-entropy term (I1), ``robust_normal`` the standard hinge
    (MACER's robustness term, I2), ``robust_sensitive`` the cost-sensitive term (I3, Margin-CS's
    cost-weighted hinge, Zhang & Evans's robust loss), each before its factor lambda (0 when the
    method has none). ``accuracy`` is the fraction of noisy predictions f(x + delta) that equal y
    (at the adversarial points for SmoothAdv; clean for Zhang & Evans).
    """

    total: Tensor
    classification: Tensor
    robust_normal: Tensor
    robust_sensitive: Tensor
    accuracy: Tensor


def _gaussian_noise(x: Tensor, sigma: float, num_noise: int,
                    generator: torch.Generator) -> Tensor:
    """Returns k draws of delta ~ N(0, sigma^2 I) per example, (B * k, ...): row ``i * k + j``
    is draw j of example i, so that the copies of an example are adjacent."""
    shape = (len(x) * num_noise, *x.shape[1:])
    return sigma * torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)


def _noisy_logits(model: nn.Module, x: Tensor, sigma: float, num_noise: int,
                  generator: torch.Generator) -> Tensor:
    """Returns float32 logits (B * k, m) of f(x + delta) for k draws of delta ~ N(0, sigma^2 I),
    the copies of an example on adjacent rows."""
    noise = _gaussian_noise(x, sigma, num_noise, generator)
    return model(x.repeat_interleave(num_noise, dim=0) + noise).float()


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

    A negative m means the top class is costly; the hinge then pulls it back (see docs/theory.md:
    the signed gap, not the published code's top-1 probability, which gives no gradient there).
    """
    return _gap_hinge(probs, *cost_sensitive_classes(probs, costly_mask), -gamma2, gamma2, sigma,
                      costly_mask.any(1))


def top_classes(probs: Tensor) -> Tensor:
    """Returns argmax_k p_k of the soft smoothed classifier, the class certification starts from.

    ``probs`` are (B, k, m) per-draw or (B, m) smoothed probabilities.
    """
    return _draws(probs).mean(1).argmax(1)


def pairwise_cost_hinge(probs: Tensor, anchor: Tensor, cost_rows: Tensor, sigma: float,
                        lower: float, upper: float) -> Tensor:
    """Returns Margin-CS's per-example sensitive loss: sum over j in Omega_y of
    C[y][j] * sigma/2 * L_M(gap_j; lower, upper), gap_j = PhiInv(p_anchor) - PhiInv(p_j).

    ``anchor`` is y (our reading: sigma/2 * gap_j is the radius within which j never overtakes
    the label) or the top class (:func:`top_classes`; the pairwise radius of certification, see
    docs/theory.md). Each costly pair has its own gap and its hinge is weighted by the pair's
    cost; where j is the anchor itself the gap is 0, a constant hinge without gradient. Examples
    with empty Omega_y get 0. ``probs`` are (B, k, m) per-draw or (B, m) smoothed.
    """
    rows, targets = torch.nonzero(cost_rows > 0, as_tuple=True)
    draws = _draws(probs)
    eligible = torch.ones_like(rows, dtype=torch.bool)
    hinges = _gap_hinge(draws[rows], anchor[rows], targets, lower, upper, sigma, eligible)
    weighted = cost_rows[rows, targets].to(hinges.dtype) * hinges
    return torch.zeros(len(anchor), dtype=hinges.dtype,
                       device=anchor.device).index_add(0, rows, weighted)


def _group_mean(values: Tensor, members: Tensor) -> Tensor:
    """Returns the mean of ``values`` over ``members`` (B,) bool, or 0 if there are none."""
    return values.masked_fill(~members, 0.0).sum() / members.sum().clamp_min(1)


def _zero(x: Tensor) -> Tensor:
    return torch.zeros((), device=x.device)


def _example_weights(cost_rows: Tensor, weight: float, dtype: torch.dtype) -> Tensor:
    """Returns Cohen-R's per-example weights w_i = 1 + (alpha_w - 1) * max_j C[y_i][j]: 1 for
    normal examples, alpha_w for every sensitive example of a 0/1 matrix (costs in units of the
    binary cost)."""
    return 1 + (weight - 1) * cost_rows.to(dtype).amax(1)


# ---------------------------------------------------------------------------------------------
# The objectives, one per method


def cohen(model: nn.Module, x: Tensor, y: Tensor, cost_rows: Tensor, sigma: float,
          generator: torch.Generator) -> LossParts:
    """Returns Cohen et al.'s loss: cross-entropy of f(x + delta), one noise draw per example."""
    logits = _noisy_logits(model, x, sigma, 1, generator)
    loss = F.cross_entropy(logits, y)
    return LossParts(loss, loss.detach(), _zero(x), _zero(x), _noisy_accuracy(logits, y, 1))


def cohen_r(model: nn.Module, x: Tensor, y: Tensor, cost_rows: Tensor, sigma: float,
            generator: torch.Generator, *, weight: float = 1.2,
            weighting: str = "example") -> LossParts:
    """Returns Cohen-R's loss (Section 4.1): cross-entropy of f(x + delta), the loss of sensitive
    examples multiplied by ``weight`` (alpha_w).

    ``weighting="example"``: sum_i w_i CE_i / B, the batch estimate of E_{D_n}[CE] + alpha_w
    E_{D_s}[CE] with each expectation weighted by its share of the data, so that weight 1 is
    exactly Cohen's loss and the step does not depend on how many sensitive examples a batch holds.
    ``weighting="group"``: mean_{D_n} CE + mean_{D_s} w_i CE_i over the batch's normal and
    sensitive examples, as the paper's authors ran it; when sensitive examples are rare this gives
    them far more than alpha_w times their share (a group without examples contributes 0).
    ``weighting="batch"``: mean_B CE + mean_{D_s} (w_i - 1) CE_i, the loss of the authors'
    published code (the mean over the whole batch plus beta = alpha_w - 1 times the mean over its
    sensitive examples; their default beta 0.1 is alpha_w = 1.1, the paper's Table 3 row).
    With real costs, w_i = 1 + (alpha_w - 1) * max_j C[y_i][j] (our reading: costs in units of the
    binary cost, so w_i = alpha_w for every sensitive example of a 0/1 matrix).
    """
    logits = _noisy_logits(model, x, sigma, 1, generator)
    losses = F.cross_entropy(logits, y, reduction="none")
    weights = _example_weights(cost_rows, weight, losses.dtype)
    sensitive = (cost_rows > 0).any(1)
    if weighting == "group":
        loss = _group_mean(losses, ~sensitive) + _group_mean(weights * losses, sensitive)
    elif weighting == "batch":
        loss = losses.mean() + _group_mean((weights - 1) * losses, sensitive)
    else:
        loss = (weights * losses).mean()
    return LossParts(loss, loss.detach(), _zero(x), _zero(x), _noisy_accuracy(logits, y, 1))


def _macer_terms(model: nn.Module, x: Tensor, y: Tensor, sigma: float,
                 generator: torch.Generator, num_noise: int, beta: float,
                 ce: str = "smoothed") -> tuple[Tensor, Tensor, Tensor]:
    """Returns (classification loss, per-draw softmax(beta * logits), noisy accuracy).

    The classification loss is MACER's (Eq. 2, I1), the NLL of log(mean softmax + 1e-10), or with
    ``ce="per-draw"`` Cohen's cross-entropy averaged over the k draws (:func:`_classification`).
    """
    logits = _noisy_logits(model, x, sigma, num_noise, generator)
    return (_classification(logits, y, num_noise, ce),
            noisy_probabilities(logits, num_noise, beta), _noisy_accuracy(logits, y, num_noise))


def _smoothed_nll(logits: Tensor, y: Tensor, num_noise: int) -> Tensor:
    """Returns MACER's classification loss: the NLL of log(mean softmax + 1e-10)."""
    soft = F.softmax(logits, dim=1).view(len(y), num_noise, -1).mean(1)
    return F.nll_loss(torch.log(soft + LOG_EPSILON), y)


def _classification(logits: Tensor, y: Tensor, num_noise: int, ce: str) -> Tensor:
    """Returns MACER's smoothed NLL (``ce="smoothed"``) or the cross-entropy of each of the k
    noisy draws, averaged (``"per-draw"``, Cohen's loss with k draws)."""
    if ce == "smoothed":
        return _smoothed_nll(logits, y, num_noise)
    return F.cross_entropy(logits, y.repeat_interleave(num_noise))


def macer(model: nn.Module, x: Tensor, y: Tensor, cost_rows: Tensor, sigma: float,
          generator: torch.Generator, *, num_noise: int = 16, beta: float = 16.0,
          gamma: float = 8.0, lam: float = 12.0) -> LossParts:
    """Returns MACER's loss (Zhai et al. 2020, as docs/theory.md fixes it): classification +
    lambda * robustness, the robustness being sigma/2 * sum of (gamma - gap) over the examples
    with gap in [0, gamma], divided by the batch size B. ``cost_rows`` is unused."""
    classification, probs, accuracy = _macer_terms(model, x, y, sigma, generator, num_noise, beta)
    robustness = (standard_hinge(probs, y, sigma, gamma).sum() / len(y)).float()
    return LossParts(classification + lam * robustness, classification.detach(),
                     robustness.detach(), _zero(x), accuracy)


def csrs(model: nn.Module, x: Tensor, y: Tensor, cost_rows: Tensor, sigma: float,
         generator: torch.Generator, *, num_noise: int = 16, beta: float = 16.0,
         gamma1: float = 4.0, gamma2: float = 16.0, lam: float = 12.0,
         ce: str = "smoothed") -> LossParts:
    """Returns the paper's CS-RS loss, Eq. 2: I1 + lambda * I2 + lambda * I3.

    I1 is MACER's classification loss over all examples (``ce="smoothed"``, the paper's choice;
    ``"per-draw"``, Cohen's cross-entropy on each of the k draws, is offered to measure what the
    NLL form costs, as Margin-CS's reading uses it); I2 the standard hinge with gamma_1 over
    ALL examples (D, not D_n, as the paper chooses); I3 the hinge (gamma_2 - m) on the signed
    cost-sensitive gap m in [-gamma_2, gamma_2] of the sensitive examples. I2 and I3 are both sums
    divided by the batch size B: I3 is thus the batch estimate of P(sensitive) * E_{D_s}[L_M],
    a constant factor away from the paper's E_{D_s} that lambda absorbs, and a batch without
    sensitive examples contributes no I3 instead of a noisy average over few of them. The binary
    method reads Omega_y only; Margin-CS is its cost-weighted successor.
    """
    classification, probs, accuracy = _macer_terms(model, x, y, sigma, generator, num_noise, beta,
                                                   ce)
    normal = (standard_hinge(probs, y, sigma, gamma1).sum() / len(y)).float()
    sensitive = (cost_sensitive_hinge(probs, cost_rows > 0, sigma, gamma2).sum()
                 / len(y)).float()
    total = classification + lam * normal + lam * sensitive
    return LossParts(total, classification.detach(), normal.detach(), sensitive.detach(),
                     accuracy)


def margin_cs(model: nn.Module, x: Tensor, y: Tensor, cost_rows: Tensor, sigma: float,
              generator: torch.Generator, *, num_noise: int = 16, beta: float = 16.0,
              gamma1: float = 4.0, gamma2: float = 16.0, lam1: float = 3.0, lam2: float = 3.0,
              ce: str = "per-draw", window: str = "nonnegative",
              pair_gap: str = "label") -> LossParts:
    """Returns Margin-CS's loss (the 2025 version's objective as we read it, docs/theory.md):

        CE + lambda_1 * mean over normal examples of sigma/2 * L_M(gap_std; 0, gamma_1)
           + lambda_2 * mean over sensitive examples of
             sum_{j in Omega_y} C[y][j] * sigma/2 * L_M(gap_j; l, gamma_2)

    on the soft smoothed classifier of softmax(beta * logits) over k noise draws
    (:func:`standard_hinge`, :func:`pairwise_cost_hinge`). ``ce="per-draw"`` is Cohen's
    cross-entropy averaged over the k draws, ``"smoothed"`` MACER's NLL of the soft smoothed
    classifier; ``window="nonnegative"`` sets l = 0, ``"signed"`` l = -gamma_2, which also pulls
    back pairs whose costly class already beats y; ``pair_gap="label"`` starts gap_j from p_y,
    ``"top"`` from max_k p_k (module docstring: why ``label`` is the default). All three are
    uncertain in our reading, hence choices. The two means are over the batch's examples of each
    group (0 for an empty group).
    """
    logits = _noisy_logits(model, x, sigma, num_noise, generator)
    classification = _classification(logits, y, num_noise, ce)
    probs = noisy_probabilities(logits, num_noise, beta)
    sensitive = (cost_rows > 0).any(1)
    normal = _group_mean(standard_hinge(probs, y, sigma, gamma1), ~sensitive).float()
    lower = -gamma2 if window == "signed" else 0.0
    anchor = y if pair_gap == "label" else top_classes(probs)
    pairs = pairwise_cost_hinge(probs, anchor, cost_rows, sigma, lower, gamma2)
    costly = _group_mean(pairs, sensitive).float()
    return LossParts(classification + lam1 * normal + lam2 * costly, classification.detach(),
                     normal.detach(), costly.detach(), _noisy_accuracy(logits, y, num_noise))


def _adversarial_noisy_ce(model: nn.Module, x: Tensor, y: Tensor, sigma: float,
                          generator: torch.Generator, num_noise: int, steps: int, eps: float,
                          gain: Callable[[Tensor], Tensor],
                          weights: Tensor | None = None) -> LossParts:
    """Returns SmoothAdv's loss: the cross-entropy of f(x' + delta_j) over the m draws, at the
    point x' that :func:`csrs.attacks.smoothed_pgd_l2` finds with the same draws; with
    ``weights`` (B,), sum_i w_i CE_i / B, CE_i the mean over example i's draws.

    The attack runs with the model in eval mode (BatchNorm on its running statistics, as in
    Salman et al.'s code) and on the module inside DistributedDataParallel, whose gradient hooks
    must only see the training loss's backward pass.
    """
    noise = _gaussian_noise(x, sigma, num_noise, generator)
    attacked = getattr(model, "module", model)
    was_training = attacked.training
    attacked.eval()
    try:
        adversarial = smoothed_pgd_l2(attacked, x, noise, gain, eps, steps=steps)
    finally:
        attacked.train(was_training)
    logits = model(adversarial.repeat_interleave(num_noise, dim=0) + noise).float()
    if weights is None:
        loss = F.cross_entropy(logits, y.repeat_interleave(num_noise))
    else:
        losses = F.cross_entropy(logits, y.repeat_interleave(num_noise), reduction="none")
        loss = (weights * losses.view(len(y), num_noise).mean(1)).mean()
    return LossParts(loss, loss.detach(), _zero(x), _zero(x),
                     _noisy_accuracy(logits, y, num_noise))


def smoothadv(model: nn.Module, x: Tensor, y: Tensor, cost_rows: Tensor, sigma: float,
              generator: torch.Generator, *, num_noise: int = 4, steps: int = 4,
              eps: float = 0.5, eps_warmup: int = 10) -> LossParts:
    """Returns SmoothAdv's loss (Salman et al. 2019, SmoothAdv_PGD): Gaussian-noise cross-entropy
    at the x' in the l2 ball of radius ``eps`` that maximises -log G_y(x'), the NLL of the soft
    smoothed classifier over m = ``num_noise`` draws, found with T = ``steps`` PGD steps.

    Defaults m = 4, T = 4, eps_train = 0.5 (their 127/256), warmed up over 10 epochs (the training
    loop ramps eps; ``eps_warmup``): of their CIFAR-10 sigma = 0.5 PGD models (m in {1, 2, 4, 8},
    T in {1, 2, 4, 6, 8, 10}, eps in {0.25, 0.5, 1, 2}), the one whose published certification
    results (data/certify in their repository, 500 test images) certify the most at radius 0.5
    (0.514; clean 0.682), trained on all m noisy copies as their --train-multi-noise does.
    ``cost_rows`` is unused.
    """
    return _adversarial_noisy_ce(model, x, y, sigma, generator, num_noise, steps, eps,
                                 label_attack_gain(y))


def smoothadv_cs(model: nn.Module, x: Tensor, y: Tensor, cost_rows: Tensor, sigma: float,
                 generator: torch.Generator, *, num_noise: int = 4, steps: int = 4,
                 eps: float = 0.5, eps_warmup: int = 10, variant: str = "attack",
                 weight: float = 1.2) -> LossParts:
    """Returns SmoothAdv-CS's loss: :func:`smoothadv` adapted to the costs in one of two ways
    (module docstring: why ``attack`` is the default).

    ``variant="attack"`` (our reading): the attack on a sensitive example maximises
    log sum_{j in Omega_y} C[y][j] G_j(x'), the cost-weighted mass the soft smoothed classifier
    puts on its costly classes, instead of the NLL of its label; normal examples are attacked as
    in SmoothAdv, and the training loss is SmoothAdv's. ``weight`` is unused.
    ``variant="reweight"`` (the authors' released code's description): SmoothAdv's attack on the
    label unchanged, and the noisy cross-entropy at the adversarial point of example i weighted
    by w_i = 1 + (alpha_w - 1) * max_j C[y_i][j], alpha_w = ``weight``, as Cohen-R's per-example
    weighting: sum_i w_i CE_i / B, so weight 1 is exactly SmoothAdv's loss.
    """
    if variant == "reweight":
        return _adversarial_noisy_ce(model, x, y, sigma, generator, num_noise, steps, eps,
                                     label_attack_gain(y),
                                     _example_weights(cost_rows, weight, torch.float32))
    return _adversarial_noisy_ce(model, x, y, sigma, generator, num_noise, steps, eps,
                                 cost_attack_gain(y, cost_rows))


def label_attack_gain(y: Tensor) -> Callable[[Tensor], Tensor]:
    """Returns SmoothAdv's attack objective: log-probabilities (B, classes) of the smoothed
    classifier -> -log G_y, its NLL of the label, per example."""
    def gain(log_probs: Tensor) -> Tensor:
        return -log_probs.gather(1, y[:, None]).squeeze(1)

    return gain


def cost_attack_gain(y: Tensor, cost_rows: Tensor) -> Callable[[Tensor], Tensor]:
    """Returns SmoothAdv-CS's attack objective: log-probabilities (B, classes) of the smoothed
    classifier -> log sum_j C[y][j] G_j for sensitive examples, -log G_y for the others."""
    costs = cost_rows.to(torch.float32)
    sensitive = (costs > 0).any(1)
    # Rows of normal examples get log 1 instead of log 0 everywhere: the branch that torch.where
    # drops must stay finite, or its NaN gradient would leak through.
    log_costs = torch.where(sensitive[:, None], costs.log(), 0.0)
    by_label = label_attack_gain(y)

    def gain(log_probs: Tensor) -> Tensor:
        costly_mass = torch.logsumexp(log_probs + log_costs, dim=1)
        return torch.where(sensitive, costly_mass, by_label(log_probs))

    return gain


def zhang_evans(model: nn.Module, x: Tensor, y: Tensor, cost_rows: Tensor, sigma: float,
                generator: torch.Generator | None = None, *, eps: float = 0.25,
                kappa: float = 1.0, eps_warmup: int = 5) -> LossParts:
    """Returns Zhang & Evans's (2019) loss: clean CE(f(x), y) + kappa * the cost-weighted robust
    loss of the costly pairs (:func:`csrs.convex.cost_sensitive_robust_loss`).

    No noise (``sigma`` and ``generator`` are unused): the l2 ball of radius ``eps`` is bounded
    by Wong & Kolter's dual network (:mod:`csrs.convex`). The training loop ramps ``eps`` up
    over the first ``eps_warmup`` epochs and trains with Adam (:mod:`csrs.training`).
    ``accuracy`` is the clean accuracy of f(x).
    """
    logits = model(x)
    classification = F.cross_entropy(logits, y)
    robust = cost_sensitive_robust_loss(model, x, y, cost_rows, eps)
    accuracy = (logits.argmax(1) == y).float().mean().detach()
    return LossParts(classification + kappa * robust, classification.detach(), _zero(x),
                     robust.detach(), accuracy)


# ---------------------------------------------------------------------------------------------
# Registry: a new method is one function above and one line in each table below

Objective = Callable[..., LossParts]

OBJECTIVES: dict[str, Objective] = {
    "cohen": cohen,
    "cohen-r": cohen_r,
    "macer": macer,
    "csrs": csrs,
    "margin-cs": margin_cs,
    "smoothadv": smoothadv,
    "smoothadv-cs": smoothadv_cs,
    "zhang-evans": zhang_evans,
}

_SMOOTHADV = {"num_noise": 4, "steps": 4, "eps": 0.5, "eps_warmup": 10}
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "cohen": {},
    "cohen-r": {"weight": 1.2, "weighting": "example"},
    "macer": {"num_noise": 16, "beta": 16.0, "gamma": 8.0, "lam": 12.0},
    "csrs": {"num_noise": 16, "beta": 16.0, "gamma1": 4.0, "gamma2": 16.0, "lam": 12.0,
             "ce": "smoothed"},
    # The Margin-CS authors' code defaults (docs/theory.md): lambda 3, gamma 4 and 16, beta 16,
    # k 16.
    "margin-cs": {"num_noise": 16, "beta": 16.0, "gamma1": 4.0, "gamma2": 16.0, "lam1": 3.0,
                  "lam2": 3.0, "ce": "per-draw", "window": "nonnegative", "pair_gap": "label"},
    "smoothadv": dict(_SMOOTHADV),
    "smoothadv-cs": {**_SMOOTHADV, "variant": "attack", "weight": 1.2},
    "zhang-evans": {"eps": 0.25, "kappa": 1.0, "eps_warmup": 5},
}

# The weights of robustness terms, which the training loop's --warmup-epochs sets to 0 at first.
ROBUSTNESS_WEIGHTS = ("lam", "lam1", "lam2")

# The admissible range of each numeric hyperparameter: (lowest value, whether it is allowed).
_RANGES: dict[str, tuple[float, bool]] = {
    "weight": (1.0, True), "num_noise": (1, True), "beta": (0.0, False), "gamma": (0.0, False),
    "gamma1": (0.0, False), "gamma2": (0.0, False), "lam": (0.0, True), "lam1": (0.0, True),
    "lam2": (0.0, True), "steps": (1, True), "eps": (0.0, True), "kappa": (0.0, True),
    "eps_warmup": (0, True),
}
# The values of each choice-valued hyperparameter.
_CHOICES: dict[str, tuple[str, ...]] = {
    "weighting": ("example", "group", "batch"), "ce": ("per-draw", "smoothed"),
    "window": ("nonnegative", "signed"), "pair_gap": ("label", "top"),
    "variant": ("attack", "reweight"),
}
# Hyperparameters that only one value of a choice reads: (key, the choice, its value).
_ONLY_WITH: dict[tuple[str, str], tuple[str, str]] = {
    ("smoothadv-cs", "weight"): ("variant", "reweight"),
}


def resolve_hparams(method: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Returns the method's hyperparameters: :data:`METHOD_DEFAULTS` updated by ``overrides``.

    Raises ValueError naming an unknown method, an unknown hyperparameter, a value out of range,
    a choice that does not exist, or a hyperparameter that the method's chosen variant does not
    read (SmoothAdv-CS's ``weight`` without ``variant = "reweight"``).
    """
    if method not in OBJECTIVES:
        raise ValueError(f"unknown method '{method}'; choose from: {', '.join(OBJECTIVES)}")
    hparams = dict(METHOD_DEFAULTS[method])
    for key, value in (overrides or {}).items():
        if key not in hparams:
            known = ", ".join(hparams) or "none"
            raise ValueError(f"method '{method}' has no hyperparameter '{key}'; its "
                             f"hyperparameters: {known}")
        hparams[key] = _check_value(key, value, hparams[key])
    for key in overrides or {}:
        choice, needed = _ONLY_WITH.get((method, key), (None, None))
        if choice is not None and hparams[choice] != needed:
            raise ValueError(f"method '{method}' reads {key} only with {choice} = '{needed}'; "
                             f"got {choice} = '{hparams[choice]}'")
    return hparams


def _check_value(key: str, value: Any, default: Any) -> Any:
    """Returns ``value`` as the type of ``default``; raises ValueError naming what is allowed."""
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise ValueError(f"hyperparameter {key} must be one of {', '.join(_CHOICES[key])}; "
                             f"got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(default, int) and not float(value).is_integer()):
        kind = "an integer" if isinstance(default, int) else "a number"
        raise ValueError(f"hyperparameter {key} must be {kind}; got {value!r}")
    lowest, inclusive = _RANGES[key]
    if not (value >= lowest if inclusive else value > lowest):
        relation = ">=" if inclusive else ">"
        raise ValueError(f"hyperparameter {key} must be {relation} {lowest:g}; got {value!r}")
    return type(default)(value)
