"""Certificates from class counts: Clopper-Pearson bounds, R1, R2, Algorithm 1, CERTIFY, PREDICT.

Pure functions of counts (NumPy and SciPy only, no torch), so that every guarantee can be tested
on simulated multinomial counts whose true probabilities are known exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

# scipy.special rather than scipy.stats' distribution objects: the same Boost routines (the values
# are identical), without the ~50 us of argument handling per call that showed up in the
# certification profile of small models.
from scipy.special import betaincinv, ndtri
from scipy.stats import binomtest

__all__ = [
    "ABSTAIN",
    "Certificate",
    "StandardCertificate",
    "certify_counts",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "cohen_certify_counts",
    "cohen_predict_counts",
    "true_cs_radius",
]

ABSTAIN = -1
Bounds = Literal["sound", "paper"]


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided lower Clopper-Pearson bound: P(p < bound) <= alpha for Binomial(trials, p)."""
    _check_alpha(alpha)
    if successes <= 0:
        return 0.0
    return float(betaincinv(successes, trials - successes + 1, alpha))


def clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """One-sided upper Clopper-Pearson bound: P(p > bound) <= alpha for Binomial(trials, p)."""
    _check_alpha(alpha)
    if successes >= trials:
        return 1.0
    return float(betaincinv(successes + 1, trials - successes, 1.0 - alpha))


def _phi_inv(p: float) -> float:
    return float(ndtri(p))


@dataclass(frozen=True)
class Certificate:
    """The cost-sensitive certificate of one input (Algorithm 1).

    ``prediction`` is the class returned, or ``ABSTAIN``. ``radius`` is max(r1, r2) when the
    prediction is certified and not costly, otherwise 0. ``r1``/``r2`` are reported as computed
    (they may be negative or -inf), ``is_costly`` says whether the prediction lies in Omega_y.
    """

    prediction: int
    radius: float
    r1: float
    r2: float
    p_a_lower: float
    p_b_upper: float
    is_costly: bool

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN

    @property
    def certified(self) -> bool:
        """True when the prediction is a non-costly class with a positive radius."""
        return not self.abstained and not self.is_costly and self.radius > 0


@dataclass(frozen=True)
class StandardCertificate:
    """Cohen et al.'s CERTIFY: ``prediction`` (or ABSTAIN) and radius sigma * PhiInv(pA_lower)."""

    prediction: int
    radius: float
    p_a_lower: float

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN


def certify_counts(selection_counts: Sequence[int] | np.ndarray,
                   estimation_counts: Sequence[int] | np.ndarray, *,
                   sigma: float, alpha: float, costly: Sequence[int],
                   bounds: Bounds = "sound") -> Certificate:
    """Return the cost-sensitive certificate of Algorithm 1 computed from class counts.

    The selection counts (n0 samples) only choose the candidate class c_A (Algorithm 1, line 3);
    the bounds use the independent estimation counts (n samples) alone.

    ``bounds="sound"`` (default) spends alpha exactly once, so that with probability at least
    1 - alpha the returned radius is at most the true radius R*(p) of NOTES.md (or the result
    abstains / is costly):

    - one lower bound pA_lower on p_A at alpha/2, shared by R1 and R2;
    - an upper bound on each p_k, k in Omega_y, at alpha / (2 |Omega_y|) (Bonferroni), and
      pB_upper = their maximum, which bounds p_B with probability at least 1 - alpha/2;
    - R1 = sigma * PhiInv(pA_lower), R2 = sigma/2 * (PhiInv(pA_lower) - PhiInv(pB_upper)).

    ``bounds="paper"`` reproduces Algorithm 1 exactly (lines 5-9): R1 from its own lower bound at
    alpha, R2 from a lower bound at alpha/2 and the Bonferroni upper bounds at alpha/(2|Omega_y|).
    Its returned max(R1, R2) only holds with probability 1 - 1.5*alpha (union of the failure
    events of both radii); use it to compare with the paper's numbers, not for guarantees.

    Abstains (``ABSTAIN``, radius 0) when max(R1, R2) <= 0 (Algorithm 1, lines 10-13). A
    prediction inside Omega_y is returned with ``is_costly=True`` and radius 0: it is never
    cost-sensitive robust, whatever its radius.
    """
    selection = as_counts(selection_counts, "selection_counts")
    estimation = as_counts(estimation_counts, "estimation_counts")
    if selection.shape != estimation.shape:
        raise ValueError(f"selection and estimation counts cover different numbers of classes: "
                         f"{selection.size} vs {estimation.size}")
    _check_sigma(sigma)
    _check_alpha(alpha)
    omega = _check_costly(costly, estimation.size)
    n = int(estimation.sum())
    if n == 0:
        raise ValueError("estimation_counts are all zero; need n >= 1 samples")

    c_a = int(np.argmax(selection))  # Algorithm 1, line 3
    count_a = int(estimation[c_a])
    if bounds == "sound":
        p_a_lower = clopper_pearson_lower(count_a, n, alpha / 2)
        r1 = sigma * _phi_inv(p_a_lower)
    elif bounds == "paper":
        r1 = sigma * _phi_inv(clopper_pearson_lower(count_a, n, alpha))      # lines 5-6
        p_a_lower = clopper_pearson_lower(count_a, n, alpha / 2)              # line 7
    else:
        raise ValueError(f"bounds must be 'sound' or 'paper'; got {bounds!r}")
    per_class_alpha = alpha / (2 * len(omega))
    p_b_upper = max(clopper_pearson_upper(int(estimation[k]), n, per_class_alpha)
                    for k in omega)                                           # line 8
    r2 = sigma / 2 * (_phi_inv(p_a_lower) - _phi_inv(p_b_upper))             # line 9
    best = max(r1, r2)
    if not best > 0:                                                          # lines 10-13
        return Certificate(ABSTAIN, 0.0, r1, r2, p_a_lower, p_b_upper, is_costly=False)
    is_costly = c_a in omega
    return Certificate(c_a, 0.0 if is_costly else best, r1, r2, p_a_lower, p_b_upper, is_costly)


def cohen_certify_counts(selection_counts: Sequence[int] | np.ndarray,
                         estimation_counts: Sequence[int] | np.ndarray, *,
                         sigma: float, alpha: float) -> StandardCertificate:
    """Return Cohen et al.'s CERTIFY on counts: with probability >= 1 - alpha, the smoothed
    classifier predicts ``prediction`` everywhere within ``radius`` (or it abstains).

    c_A comes from the selection counts; pA_lower is the one-sided Clopper-Pearson bound at alpha
    on the estimation counts; abstain when pA_lower < 1/2, else radius = sigma * PhiInv(pA_lower).
    """
    selection = as_counts(selection_counts, "selection_counts")
    estimation = as_counts(estimation_counts, "estimation_counts")
    _check_sigma(sigma)
    n = int(estimation.sum())
    if n == 0:
        raise ValueError("estimation_counts are all zero; need n >= 1 samples")
    c_a = int(np.argmax(selection))
    p_a_lower = clopper_pearson_lower(int(estimation[c_a]), n, alpha)
    if p_a_lower < 0.5:
        return StandardCertificate(ABSTAIN, 0.0, p_a_lower)
    return StandardCertificate(c_a, sigma * _phi_inv(p_a_lower), p_a_lower)


def cohen_predict_counts(counts: Sequence[int] | np.ndarray, *, alpha: float) -> int:
    """Return Cohen et al.'s PREDICT on counts: the top class, or ABSTAIN unless a two-sided
    binomial test of the top two counts rejects equality at level alpha (then the returned class
    differs from the smoothed classifier's with probability at most alpha)."""
    counts = as_counts(counts, "counts")
    _check_alpha(alpha)
    order = np.argsort(-counts, kind="stable")
    top, runner_up = int(counts[order[0]]), int(counts[order[1]]) if counts.size > 1 else 0
    if top + runner_up == 0:
        return ABSTAIN
    if binomtest(top, top + runner_up, 0.5).pvalue > alpha:
        return ABSTAIN
    return int(order[0])


def true_cs_radius(probabilities: Sequence[float] | np.ndarray, costly: Sequence[int],
                   sigma: float) -> float:
    """Return R*(p) = sigma/2 * (PhiInv(max_{c not in Omega} p_c) - PhiInv(max_{k in Omega} p_k)).

    The largest radius the Gaussian worst case guarantees for "the smoothed prediction stays out
    of Omega" (NOTES.md); negative when the top class is costly. Equals Definition 3.1's R_c-s
    whenever the top class is not costly.
    """
    p = np.asarray(probabilities, dtype=float)
    omega = _check_costly(costly, p.size)
    inside = np.zeros(p.size, dtype=bool)
    inside[omega] = True
    if inside.all():
        raise ValueError("costly set covers every class; no prediction can be non-costly")
    return sigma / 2 * (_phi_inv(p[~inside].max()) - _phi_inv(p[inside].max()))


def as_counts(counts: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(counts)
    if array.ndim != 1 or array.size < 2:
        raise ValueError(f"{name} must be a 1-D array of at least 2 class counts; "
                         f"got shape {array.shape}")
    if (array < 0).any() or not np.all(np.mod(array, 1) == 0):
        raise ValueError(f"{name} must be non-negative integers; got {array.tolist()}")
    return array.astype(np.int64)


def _check_costly(costly: Sequence[int], num_classes: int) -> list[int]:
    omega = sorted({int(k) for k in costly})
    if not omega:
        raise ValueError("costly set Omega_y is empty: a non-sensitive example has no "
                         "cost-sensitive certificate")
    bad = [k for k in omega if not 0 <= k < num_classes]
    if bad:
        raise ValueError(f"costly class {bad[0]} does not exist; classes are 0..{num_classes - 1}")
    return omega


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1) or math.isnan(alpha):
        raise ValueError(f"alpha must be in (0, 1); got {alpha!r}")


def _check_sigma(sigma: float) -> None:
    if not (isinstance(sigma, (int, float)) and sigma > 0) or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a positive number; got {sigma!r}")
