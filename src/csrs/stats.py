"""Certificates from class counts: Clopper-Pearson bounds, R1, R2, Algorithm 1, CERTIFY, PREDICT,
and the certified worst-case cost kappa(eps) of a real-valued cost row.

Pure functions of counts (NumPy and SciPy only, no torch), so that every guarantee can be tested
on simulated multinomial counts whose true probabilities are known exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    "CostCertificate",
    "StandardCertificate",
    "certified_cost",
    "certify_cost_counts",
    "certify_counts",
    "check_alpha",
    "check_costly",
    "check_n",
    "check_sigma",
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
    check_alpha(alpha)
    if successes <= 0:
        return 0.0
    return float(betaincinv(successes, trials - successes + 1, alpha))


def clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """One-sided upper Clopper-Pearson bound: P(p > bound) <= alpha for Binomial(trials, p)."""
    check_alpha(alpha)
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
    1 - alpha the returned radius is at most the true radius R*(p)
    (docs/theory.md#cost-sensitive-radius), or the result abstains or is costly: the code
    delivers ``radius <= R*(p)``, not more.

    - one lower bound pA_lower on p_A at alpha/2, shared by R1 and R2;
    - an upper bound on each p_k, k in Omega_y, at alpha/2 too, and pB_upper = their maximum.
      No split over |Omega_y| is needed (docs/theory.md#no-split-over-omega): R2 only needs
      pB_upper >= p_k* for the one costly class k* with the largest true p_k, a single event
      whatever |Omega_y| is;
    - R1 = sigma * PhiInv(pA_lower), R2 = sigma/2 * (PhiInv(pA_lower) - PhiInv(pB_upper)).

    With two classes p_B = 1 - p_A exactly, so R2 = R1 and the whole alpha goes to pA_lower.

    ``bounds="paper"`` reproduces Algorithm 1 exactly (lines 5-9): R1 from its own lower bound at
    alpha, R2 from a lower bound at alpha/2 and the Bonferroni upper bounds at alpha/(2|Omega_y|).
    Its returned max(R1, R2) only holds with probability 1 - 1.5*alpha (union of the failure
    events of both radii); use it to compare with the paper's numbers, not for guarantees.

    Abstains (``ABSTAIN``, radius 0) when max(R1, R2) <= 0 (Algorithm 1, lines 10-13). A
    prediction inside Omega_y is returned with ``is_costly=True`` and radius 0: it is never
    cost-sensitive robust, whatever its radius.
    """
    selection, estimation, n = _checked_counts(selection_counts, estimation_counts, sigma, alpha)
    omega = check_costly(costly, estimation.size)
    c_a = int(np.argmax(selection))  # Algorithm 1, line 3
    count_a = int(estimation[c_a])
    if bounds == "sound" and estimation.size == 2:
        p_a_lower = clopper_pearson_lower(count_a, n, alpha)
        r1 = r2 = sigma * _phi_inv(p_a_lower)
        p_b_upper = 1.0 - p_a_lower
    elif bounds in ("sound", "paper"):
        if bounds == "sound":
            p_a_lower = clopper_pearson_lower(count_a, n, alpha / 2)
            r1 = sigma * _phi_inv(p_a_lower)
            per_class_alpha = alpha / 2
        else:
            r1 = sigma * _phi_inv(clopper_pearson_lower(count_a, n, alpha))  # lines 5-6
            p_a_lower = clopper_pearson_lower(count_a, n, alpha / 2)          # line 7
            per_class_alpha = alpha / (2 * len(omega))
        p_b_upper = max(clopper_pearson_upper(int(estimation[k]), n, per_class_alpha)
                        for k in omega)                                       # line 8
        r2 = sigma / 2 * (_phi_inv(p_a_lower) - _phi_inv(p_b_upper))         # line 9
    else:
        raise ValueError(f"bounds must be 'sound' or 'paper'; got {bounds!r}")
    best = max(r1, r2)
    if not best > 0:                                                          # lines 10-13
        return Certificate(ABSTAIN, 0.0, r1, r2, p_a_lower, p_b_upper, is_costly=False)
    is_costly = c_a in omega
    return Certificate(c_a, 0.0 if is_costly else best, r1, r2, p_a_lower, p_b_upper, is_costly)


@dataclass(frozen=True)
class CostCertificate:
    """The certified worst-case cost of one input under a real-valued cost row
    (docs/theory.md#real-valued-costs), for every radius at once.

    ``candidate`` is c_A, chosen by the selection counts; ``prediction`` is c_A, or ``ABSTAIN``
    when neither R1 nor every pairwise radius is positive. ``r1`` = sigma * PhiInv(pA_lower);
    ``pair_radius[k]`` = sigma/2 * (PhiInv(pA_lower) - PhiInv(pk_upper)) for each costly class
    k != c_A: within it the smoothed classifier never predicts k. ``costs[k]`` = C[y][k] for the
    same classes and ``candidate_cost`` = C[y][c_A].
    """

    prediction: int
    candidate: int
    candidate_cost: float
    r1: float
    pair_radius: Mapping[int, float]
    costs: Mapping[int, float]
    p_a_lower: float
    levels: int

    def cost_at(self, eps: float) -> float:
        """Return kappa(eps): with probability >= 1 - alpha (over the noise, for every eps at
        once), no x' with ||x' - x|| <= eps makes the smoothed classifier predict a class that
        costs more than this."""
        return certified_cost(eps, self.candidate_cost, self.r1, list(self.costs.values()),
                              list(self.pair_radius.values()))


def certified_cost(eps: float, candidate_cost: float, r1: float, pair_costs: Sequence[float],
                   pair_radii: Sequence[float]) -> float:
    """Return kappa(eps) (docs/theory.md#certified-cost): C[y][c_A] if R1 > eps, otherwise the
    largest of C[y][c_A] and the costs of the classes whose pairwise radius is <= eps."""
    if r1 > eps:
        return float(candidate_cost)
    reachable = [cost for cost, radius in zip(pair_costs, pair_radii, strict=True)
                 if not radius > eps]
    return float(max([candidate_cost, *reachable]))


def certify_cost_counts(selection_counts: Sequence[int] | np.ndarray,
                        estimation_counts: Sequence[int] | np.ndarray, *, sigma: float,
                        alpha: float, cost_row: Sequence[float] | np.ndarray) -> CostCertificate:
    """Return the certified worst-case cost kappa of one input for every eps, from one set of
    bounds that hold together with probability at least 1 - alpha.

    c_A is the argmax of the selection counts; pA_lower is the Clopper-Pearson lower bound at
    alpha/2 (at alpha with two classes, where p_k = 1 - p_A and every pairwise radius is R1);
    each p_k, k in Omega_y other than c_A, gets an upper bound at alpha/(2L), L the number of
    distinct costs above C[y][c_A] in the row. Why L, not |Omega_y|
    (docs/theory.md#cost-levels): kappa can only fall below its value on the true
    probabilities at a cost level t through the one class with the largest true p among
    {k : C[y][k] >= t}; there is one such class per level, so the union runs over L events.
    Classes that cost no more than c_A never raise kappa; their pairwise radii (bounded at the
    same level) are reported but carry no guarantee of their own.

    On a 0/1 row, ``cost_at(eps) == 0`` exactly when :func:`certify_counts` with
    ``costly=Omega_y`` is certified with radius > eps.
    """
    selection, estimation, n = _checked_counts(selection_counts, estimation_counts, sigma, alpha)
    row = np.asarray(cost_row, dtype=float)
    if row.shape != estimation.shape:
        raise ValueError(f"cost_row has {row.size} entries; the counts cover {estimation.size} "
                         f"classes")
    if not np.isfinite(row).all() or (row < 0).any():
        raise ValueError(f"cost_row must hold finite costs >= 0; got {row.tolist()}")
    c_a = int(np.argmax(selection))
    candidate_cost = float(row[c_a])
    others = [int(k) for k in np.flatnonzero(row > 0) if k != c_a]
    levels = len({float(row[k]) for k in others if row[k] > candidate_cost})
    two_classes = estimation.size == 2
    p_a_lower = clopper_pearson_lower(int(estimation[c_a]), n, alpha if two_classes else alpha / 2)
    r1 = sigma * _phi_inv(p_a_lower)
    per_class_alpha = alpha / (2 * max(levels, 1))
    pair_radius = {}
    for k in others:
        if two_classes:
            pair_radius[k] = r1
        else:
            p_k_upper = clopper_pearson_upper(int(estimation[k]), n, per_class_alpha)
            pair_radius[k] = sigma / 2 * (_phi_inv(p_a_lower) - _phi_inv(p_k_upper))
    pairs_positive = bool(pair_radius) and min(pair_radius.values()) > 0
    prediction = c_a if r1 > 0 or pairs_positive else ABSTAIN
    return CostCertificate(prediction, c_a, candidate_cost, r1, pair_radius,
                           {k: float(row[k]) for k in others}, p_a_lower, levels)


def cohen_certify_counts(selection_counts: Sequence[int] | np.ndarray,
                         estimation_counts: Sequence[int] | np.ndarray, *,
                         sigma: float, alpha: float) -> StandardCertificate:
    """Return Cohen et al.'s CERTIFY on counts: with probability >= 1 - alpha, the smoothed
    classifier predicts ``prediction`` everywhere within ``radius`` (or it abstains).

    c_A comes from the selection counts; pA_lower is the one-sided Clopper-Pearson bound at alpha
    on the estimation counts; abstain when pA_lower < 1/2, else radius = sigma * PhiInv(pA_lower).
    """
    selection, estimation, n = _checked_counts(selection_counts, estimation_counts, sigma, alpha)
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
    check_alpha(alpha)
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
    of Omega" (docs/theory.md#cost-sensitive-radius); negative when the top class is costly.
    Equals Definition 3.1's R_c-s whenever the top class is not costly.
    """
    p = np.asarray(probabilities, dtype=float)
    omega = check_costly(costly, p.size)
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


def _checked_counts(selection_counts: Sequence[int] | np.ndarray,
                    estimation_counts: Sequence[int] | np.ndarray, sigma: float,
                    alpha: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate the arguments every certificate shares; return the counts and n."""
    selection = as_counts(selection_counts, "selection_counts")
    estimation = as_counts(estimation_counts, "estimation_counts")
    if selection.shape != estimation.shape:
        raise ValueError(f"selection and estimation counts cover different numbers of classes: "
                         f"{selection.size} vs {estimation.size}")
    check_sigma(sigma)
    check_alpha(alpha)
    n = int(estimation.sum())
    if n == 0:
        raise ValueError("estimation_counts are all zero; need n >= 1 samples")
    return selection, estimation, n


def check_costly(costly: Sequence[int], num_classes: int) -> list[int]:
    """Return Omega_y sorted; refuse an empty set or a class outside 0..num_classes-1."""
    omega = sorted({int(k) for k in costly})
    if not omega:
        raise ValueError("costly set Omega_y is empty: a non-sensitive example has no "
                         "cost-sensitive certificate")
    bad = [k for k in omega if not 0 <= k < num_classes]
    if bad:
        raise ValueError(f"costly class {bad[0]} does not exist; classes are 0..{num_classes - 1}")
    return omega


def check_alpha(alpha: float) -> float:
    """Return ``alpha``; refuse anything but a number in (0, 1)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)) \
            or not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha!r}")
    return float(alpha)


def check_sigma(sigma: float) -> float:
    """Return ``sigma``; refuse anything but a finite positive number."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)) \
            or not 0 < sigma < math.inf:
        raise ValueError(f"sigma must be a finite positive number; got {sigma!r}")
    return float(sigma)


def check_n(n: int, name: str = "n") -> int:
    """Return the sample count ``n``; refuse anything but a positive integer."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive integer; got {n!r}")
    return int(n)
