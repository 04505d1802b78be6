"""Anytime-valid sequential certification: "is this input certified at eps?" with few samples.

Fixed-n certification (Algorithm 1, Cohen's CERTIFY) spends n = 100,000 samples on every input.
A sequential test looks at the counts as they grow and stops as soon as the answer is clear:
"certified" when a lower confidence bound on the radius exceeds eps, "futile" when even
optimistic (upper confidence) rates could no longer be certified at eps by n_max, "budget" at
n_max. Pure NumPy/SciPy (no torch), so that the guarantee can be checked on simulated counts
whose true probabilities are known.

The guarantee (docs/theory.md#sequential-tests and #eps-grid), whatever the stopping time: for
every input and every grid of radii decided by one test,

    P(some listed eps >= R*(p) is certified) <= alpha.

Optional stopping breaks naive fixed-n bounds: testing at full alpha after every batch certifies
false claims several times more often than alpha. Here alpha is spent once, across time, classes
and radii; see :class:`SequentialTest` for the accounting of each ``method``:

- ``"looks"``: Clopper-Pearson bounds at a geometric schedule of looks, alpha split over them;
- ``"mixture"``: a one-sided Beta-mixture confidence sequence (valid at every n by Ville's
  inequality), so no alpha is spent on the number of looks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import betaincc, betaincinv, betaln, ndtri

from csrs.stats import ABSTAIN, as_counts, check_alpha, check_costly, check_sigma

__all__ = [
    "ABSTAIN",
    "METHODS",
    "Decision",
    "SequentialTest",
    "check_grid",
    "look_schedule",
    "mixture_lower",
]

Method = Literal["looks", "mixture"]
METHODS: tuple[str, ...] = ("looks", "mixture")
DEFAULT_METHOD: Method = "looks"
LOOK_FIRST, LOOK_GROWTH = 64, 1.25  # the default look schedule: 64, 80, 100, ... , n_max
FINAL_SHARE = 0.25  # the share of alpha that the "looks" test keeps for its last look
# Futility is about power, not soundness: its bounds may fail more often than alpha. They do at
# level alpha below FUTILITY_FROM samples, where noisy early looks would stop inputs that have a
# real margin, and at FUTILITY_LEVEL from there on, where inputs near an eps would otherwise run
# to n_max. Measured (benchmarks/adaptive.py, radii spread over (0, 1.4], alpha 0.001, n_max
# 100,000): ~1.9x fewer samples than futility at alpha throughout, and certified fractions within
# 0.01 of fixed n's at every eps.
FUTILITY_LEVEL, FUTILITY_FROM = 0.1, 1000


@dataclass(frozen=True)
class Decision:
    """The outcome of one sequential test of "certified at eps" (one eps, or a grid of them).

    ``certified`` is a bool for a single eps and a tuple of bools aligned with the grid for a
    sequence of eps (nested: certified at an eps implies certified at every smaller one).
    ``stopped`` likewise says why each eps was decided: ``"certified"`` (``radius_lower`` rose
    above it), ``"futile"`` (``radius_upper`` fell to it or below), or ``"budget"`` (n_max reached
    undecided). ``prediction`` is the candidate class c_A when certified at some eps, c_A when it
    is costly (never certified; no estimation samples are spent on it), otherwise ``ABSTAIN``.
    ``samples`` counts every forward pass, selection included. ``radius_lower`` is the largest
    certifying radius bound of all looks (with ``p_a_lower``/``p_b_upper``, the bounds it came
    from; 0, 1, -inf when no look spent alpha): with probability at least 1 - alpha it is at most
    R*(p), whatever the stopping time. ``radius_upper`` is the smallest futility bound: the
    radius the last look (n_max) would certify if the votes came at the optimistic rates of upper
    confidence bounds.
    """

    certified: bool | tuple[bool, ...]
    prediction: int
    samples: int
    p_a_lower: float
    p_b_upper: float
    radius_lower: float
    radius_upper: float
    stopped: str | tuple[str, ...]
    eps: float | tuple[float, ...] = 0.0


def look_schedule(n_max: int, *, first: int = LOOK_FIRST,
                  growth: float = LOOK_GROWTH) -> tuple[int, ...]:
    """Return the estimation sample counts at which a test looks: first, first*growth, ...,
    rounded, strictly increasing, ending exactly at ``n_max``."""
    if not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise ValueError(f"n_max must be a positive integer; got {n_max!r}")
    if first < 1 or not growth > 1:
        raise ValueError(f"need first >= 1 and growth > 1; got first={first}, growth={growth}")
    looks, size = [], float(first)
    while round(size) < n_max:
        if not looks or round(size) > looks[-1]:
            looks.append(round(size))
        size *= growth
    if looks and looks[-1] * math.sqrt(growth) > n_max:  # a look just before n_max adds little
        looks.pop()
    return (*looks, int(n_max))


# -- one-sided bounds on a binomial proportion ---------------------------------------------------
def _cp_lower(successes: float, trials: int, level: float) -> float:
    """Clopper-Pearson lower bound (as csrs.stats.clopper_pearson_lower, via the fast ufunc)."""
    return 0.0 if successes <= 0 else float(betaincinv(successes, trials - successes + 1, level))


def _mixture_log_e(q: float, successes: float, trials: int) -> tuple[float, float]:
    """Return log E_n(q) and its derivative in q, where E_n(q) is the uniform-prior mixture
    likelihood ratio of p in (q, 1] against p = q (see :func:`mixture_lower`)."""
    failures = trials - successes
    tail = float(betaincc(successes + 1, failures + 1, q))
    if tail <= 0:
        return -math.inf, 0.0
    log_beta = float(betaln(successes + 1, failures + 1))
    log_likelihood = successes * math.log(q) + failures * math.log1p(-q)
    value = log_beta + math.log(tail) - math.log1p(-q) - log_likelihood
    hazard = math.exp(log_likelihood - log_beta - math.log(tail))
    return value, -hazard + 1 / (1 - q) - (successes - trials * q) / (q * (1 - q))


def mixture_lower(successes: float, trials: int, level: float) -> float:
    """Return an anytime-valid lower confidence bound on p from Bernoulli(p) counts.

    E_n(q) = int_{(q,1]} prod_i (x/q)^{X_i} ((1-x)/(1-q))^{1-X_i} dx / (1-q) mixes likelihood
    ratios with a uniform prior truncated to (q, 1]; at q = p it is a nonnegative martingale
    with mean 1, so by Ville's inequality P(exists n: E_n(p) >= 1/level) <= level. E_n(q) is
    decreasing on (0, k/(n+1)] (its log-derivative is below ((n+1)q - k)/(q(1-q))), so the bound
    L_n, the crossing E_n(L_n) = 1/level there (capped at k/(n+1)), satisfies
    P(exists n: p < L_n) <= level, at every n and for any stopping rule. The root is found by
    Newton steps kept inside a bracket, and the returned point always has E_n >= 1/level.
    """
    if successes <= 0:
        return 0.0
    target = -math.log(level)
    cap = successes / (trials + 1)
    if _mixture_log_e(cap, successes, trials)[0] >= target:
        return cap
    safe, unsafe = 0.0, cap  # E_n >= 1/level at safe (q -> 0 gives +inf), < 1/level at unsafe
    q = min(max(_cp_lower(successes, trials, level), cap * 1e-6), cap * (1 - 1e-9))
    for _ in range(200):
        value, slope = _mixture_log_e(q, successes, trials)
        excess = value - target
        if excess >= 0:
            safe = q
            if excess < 1e-9:
                break
        else:
            unsafe = q
        if unsafe - safe <= 1e-15 * unsafe:
            break
        step = q - excess / slope if slope < 0 else math.nan
        q = step if safe < step < unsafe else (safe + unsafe) / 2
    return safe


def _spend(alpha: float, looks: int) -> list[float]:
    """Return the alpha of each of ``looks`` certifying looks: FINAL_SHARE of it at the last
    look (n_max), the rest in equal parts over the others.

    Inputs that stop early have margins to spare and lose little to a small share per look;
    inputs whose radius lies near an eps go on to n_max, where a large share keeps the bound
    close to fixed n's (an equal split over ~30 looks costs them about 0.8 of a standard error).
    """
    if looks == 1:
        return [alpha]
    early = alpha * (1 - FINAL_SHARE) / (looks - 1)
    return [early] * (looks - 1) + [alpha * FINAL_SHARE]


_LOWER: dict[str, Callable[[float, int, float], float]] = {"looks": _cp_lower,
                                                         "mixture": mixture_lower}


def check_grid(eps: float | Sequence[float]) -> tuple[float, ...]:
    """Return the eps grid as a tuple; refuse a non-finite, negative or unordered one."""
    values = (eps,) if isinstance(eps, (int, float, np.integer, np.floating)) else tuple(eps)
    if not values:
        raise ValueError("eps grid is empty; give at least one radius")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                             np.floating)) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"eps must be a finite number >= 0; got {value!r}")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"eps grid must increase strictly; got {', '.join(map(str, values))}")
    return tuple(float(value) for value in values)


class SequentialTest:
    """A sequential test of "R*(p) > eps" for one input and one eps or a grid of them, fed with
    growing class counts.

    Built from the selection counts (n0 samples; they only choose the candidate c_A = their
    argmax and never enter the bounds), then ``update(counts)`` with the cumulative estimation
    counts at each look of ``looks`` in turn, until ``decision`` is set.

    ``costly=None`` is the standard certificate (Omega = every class but c_A), decided on
    R1 = sigma * PhiInv(pA_lower) alone: H0 "p_A <= Phi(eps/sigma)", one one-sided test of one
    proportion. With a costly set Omega_y, c_A in Omega_y is never certified; otherwise the test
    certifies when max(R1, R2) > eps with R2 = sigma/2 (PhiInv(pA_lower) - PhiInv(pB_upper)).
    Both imply R*(p) > eps when the bounds hold (R*(p) >= R2(p_A, p_B) >= R1(p_A), since
    p_A <= max_{c not in Omega} p_c and p_B <= 1 - p_A). With two classes R2 = R1, so the test
    uses R1 alone there.

    **A grid of eps from one test.** Each look j gives one certifying radius bound rl_j; an eps
    of the grid is certified at the first look with rl_j > eps, and declared futile at the first
    look whose futility bound is <= eps (certification takes precedence). The test stops when
    every eps is decided, or at n_max. No alpha is split over the eps: certifying some listed
    eps >= R*(p) means that some rl_j exceeded the smallest listed eps >= R*(p), so rl_j > R*(p):
    one event, "some look's radius bound exceeds R*(p)", whose probability the accounting below
    keeps at alpha whatever the stopping time and however many eps are listed. With probability
    at least 1 - alpha, then, no listed eps at or above R*(p) is certified. A single eps is the
    grid of one point.

    Alpha accounting (each share holds simultaneously over all looks, so the union bound gives
    P(some rl_j > R*(p)) <= alpha for any stopping time):

    - ``"mixture"``: anytime-valid confidence sequences (:func:`mixture_lower`), valid at every
      n. R1 alone: pA_lower at alpha. R1 or R2: pA_lower at alpha/2 (shared by R1 and R2) and
      an upper bound on each p_k, k in Omega, at alpha/2: R2 only needs the bound of the one
      costly class with the largest true p_k to hold, a single event
      (docs/theory.md#no-split-over-omega), so there is no split over |Omega|.
    - ``"looks"``: one-sided Clopper-Pearson at look j with alpha_j; sum_j alpha_j = alpha,
      split between p_A and Omega as above. The last J' looks spend alpha: a quarter of it at
      the last (n_max), the rest in equal parts over the J' - 1 before (:func:`_spend`). The
      first of them is the first look at which unanimous votes for c_A could certify the
      smallest eps of the grid at its share: earlier looks cannot certify anything and get no
      alpha.

    Futility costs no soundness (stopping to say "not certified" never makes a false claim),
    only power. At each look, upper confidence bounds on p_A and lower bounds on each p_k (same
    construction, per look at level alpha before FUTILITY_FROM samples and FUTILITY_LEVEL from
    there on, split as above) give optimistic rates; an eps that the
    last look (n_max) would not certify even with votes at those rates is decided as futile. So a
    certifiable input is lost to futility only when a futility bound fails (<= alpha per look)
    or when its radius is so close to eps that n_max samples would rarely certify it anyway.
    An eps that unanimous votes at n_max could not certify is futile at once.
    """

    def __init__(self, selection_counts: Sequence[int] | np.ndarray, *,
                 eps: float | Sequence[float], sigma: float, alpha: float,
                 costly: Sequence[int] | None = None, n_max: int = 100_000,
                 method: Method = DEFAULT_METHOD, looks: Sequence[int] | None = None) -> None:
        selection = as_counts(selection_counts, "selection_counts")
        if selection.sum() == 0:
            raise ValueError("selection_counts are all zero; need n0 >= 1 samples")
        check_sigma(sigma)
        check_alpha(alpha)
        self.grid = check_grid(eps)
        self._single = not isinstance(eps, (Sequence, np.ndarray))
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        self.looks = tuple(int(n) for n in (look_schedule(n_max) if looks is None else looks))
        if (not self.looks or self.looks[0] < 1 or self.looks[-1] != n_max
                or any(b <= a for a, b in zip(self.looks, self.looks[1:], strict=False))):
            raise ValueError(f"looks must increase strictly from >= 1 to n_max={n_max}; "
                             f"got {self.looks[:3]}...{self.looks[-1:]}")
        self.num_classes = selection.size
        self.candidate = int(np.argmax(selection))
        self.selection_samples = int(selection.sum())
        self.sigma, self.alpha, self.method = float(sigma), alpha, method
        self.n_max = int(n_max)
        if costly is None:
            omega = [k for k in range(self.num_classes) if k != self.candidate]
        else:
            omega = check_costly(costly, self.num_classes)
        self.costly = omega
        self.r1_only = costly is None or self.num_classes == 2
        self._lower = _LOWER[method]
        self._step = 0
        self._levels = self._certify_levels()
        # The best (largest) certifying bound so far with its p bounds, and the smallest
        # futility bound; each eps's outcome once decided.
        self._best = (0.0, 1.0, -math.inf)
        self._radius_upper = math.inf
        self._outcome: list[str | None] = [None] * len(self.grid)
        self.decision: Decision | None = None
        if self.candidate in omega:
            self._outcome = ["futile"] * len(self.grid)
            self._decide(self.selection_samples)
        else:
            unanimous = self._unanimous_radius()
            self._outcome = ["futile" if unanimous <= eps else None for eps in self.grid]
            if all(self._outcome):
                self._decide(self.selection_samples)

    @property
    def eps(self) -> float | tuple[float, ...]:
        return self.grid[0] if self._single else self.grid

    @property
    def next_look(self) -> int:
        """The cumulative number of estimation samples the next ``update`` must be given."""
        return self.looks[self._step]

    def update(self, counts: Sequence[int] | np.ndarray) -> Decision | None:
        """Feed the cumulative estimation counts at ``next_look``; return the decision if the
        test stops here, else None (then sample up to the new ``next_look``)."""
        if self.decision is not None:
            raise RuntimeError("this test has already stopped; read .decision")
        estimation = as_counts(counts, "counts")
        n = int(estimation.sum())
        if estimation.size != self.num_classes or n != self.next_look:
            raise ValueError(f"expected counts of {self.next_look} samples over "
                             f"{self.num_classes} classes; got {n} over {estimation.size}")
        level = self._levels[self._step]
        if level > 0:
            bounds = self._certify_bounds(estimation, n, level)
            if bounds[2] > self._best[2]:
                self._best = bounds
        radius_upper = self._futility_bound(estimation, n)
        self._radius_upper = min(self._radius_upper, radius_upper)
        self._step += 1
        radius_lower = self._best[2]
        for i, eps in enumerate(self.grid):
            if self._outcome[i] is None:
                if radius_lower > eps:
                    self._outcome[i] = "certified"
                elif radius_upper <= eps:
                    self._outcome[i] = "futile"
                elif n == self.n_max:
                    self._outcome[i] = "budget"
        if all(self._outcome):
            return self._decide(self.selection_samples + n)
        return None

    def _decide(self, samples: int) -> Decision:
        # Nested by construction (a bound above a larger eps is above every smaller one); the
        # running maximum makes it explicit for an eps decided futile at an earlier look.
        certified = [outcome == "certified" for outcome in self._outcome]
        for i in range(len(certified) - 2, -1, -1):
            certified[i] = certified[i] or certified[i + 1]
        stopped = tuple("certified" if ok else outcome
                        for ok, outcome in zip(certified, self._outcome, strict=True))
        if self.candidate in self.costly:
            prediction = self.candidate
        else:
            prediction = self.candidate if any(certified) else ABSTAIN
        p_a_lower, p_b_upper, radius_lower = self._best
        single = self._single
        self.decision = Decision(certified[0] if single else tuple(certified), prediction,
                                 samples, p_a_lower, p_b_upper, radius_lower, self._radius_upper,
                                 stopped[0] if single else stopped, self.eps)
        return self.decision

    # -- bounds -----------------------------------------------------------------------------
    def _certify_bounds(self, counts: np.ndarray, n: int,
                        level: float) -> tuple[float, float, float]:
        """Return (pA_lower, pB_upper, max(R1, R2)) with this look's share ``level`` of alpha
        (counts may be fractional: the futility rule asks about expected counts)."""
        if self.r1_only:
            p_a_lower = self._lower(counts[self.candidate], n, level)
            return p_a_lower, 1.0 - p_a_lower, self.sigma * float(ndtri(p_a_lower))
        p_a_lower = self._lower(counts[self.candidate], n, level / 2)
        share = level / 2
        p_b_upper = max(1.0 - self._lower(n - counts[k], n, share) for k in self.costly)
        phi_a = float(ndtri(p_a_lower))
        return p_a_lower, p_b_upper, max(self.sigma * phi_a,
                                         self.sigma / 2 * (phi_a - float(ndtri(p_b_upper))))

    def _futility_bound(self, counts: np.ndarray, n: int) -> float:
        """Return the radius the final look (n_max) would certify if the votes came at the
        optimistic rates of the futility bounds (p_A at its upper bound, each p_k, k in Omega, at
        its lower bound): an eps at or above it is futile."""
        level = max(self.alpha, FUTILITY_LEVEL if n >= FUTILITY_FROM else 0.0)
        rates = np.zeros(self.num_classes)
        share_a = level if self.r1_only else level / 2
        rates[self.candidate] = 1.0 - self._lower(n - counts[self.candidate], n, share_a)
        if not self.r1_only:
            share = level / 2
            for k in self.costly:
                rates[k] = self._lower(counts[k], n, share)
        return self._certify_bounds(rates * self.n_max, self.n_max, self._levels[-1])[2]

    def _unanimous_radius(self) -> float:
        """The radius unanimous votes for c_A at n_max would certify (-inf: no alpha at all)."""
        if not self._levels[-1] > 0:
            return -math.inf
        unanimous = np.zeros(self.num_classes, dtype=np.int64)
        unanimous[self.candidate] = self.n_max
        return self._certify_bounds(unanimous, self.n_max, self._levels[-1])[2]

    def _certify_levels(self) -> list[float]:
        """Return the alpha spent at each look (see the class docstring)."""
        smallest = self.grid[0]
        if self.method == "mixture":
            unanimous = np.zeros(self.num_classes, dtype=np.int64)
            unanimous[self.candidate] = self.n_max
            possible = self._certify_bounds(unanimous, self.n_max, self.alpha)[2] > smallest
            return [self.alpha if possible else 0.0] * len(self.looks)
        total = len(self.looks)
        for first, n in enumerate(self.looks):
            unanimous = np.zeros(self.num_classes, dtype=np.int64)
            unanimous[self.candidate] = n
            levels = _spend(self.alpha, total - first)
            if self._certify_bounds(unanimous, n, levels[0])[2] > smallest:
                return [0.0] * first + levels
        return [0.0] * total
