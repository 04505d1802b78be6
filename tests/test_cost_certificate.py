"""The certified worst-case cost kappa(eps) of real-valued cost rows
(docs/theory.md#certified-cost).

Soundness on simulated multinomial counts from known probabilities: a failure is an input for
which kappa(eps) falls below its value on the true probabilities (same candidate) at SOME eps.
Both are right-continuous step functions of eps that change only at R1 and the pairwise radii,
so checking eps = 0 and every estimated and true radius covers every eps.
"""

import math

import numpy as np
import pytest
from scipy.special import ndtri

from csrs.stats import (
    ABSTAIN,
    certify_cost_counts,
    certify_counts,
    clopper_pearson_lower,
    clopper_pearson_upper,
)
from oracles import true_cost

SIGMA = 0.5
ALPHA = 0.1
TRIALS = 2000
TOLERANCE = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / TRIALS)


def _breakpoints(cert, p):
    candidate = cert.candidate
    true_radii = [SIGMA / 2 * (ndtri(p[candidate]) - ndtri(p[k])) for k in cert.pair_radius]
    values = [cert.r1, SIGMA * ndtri(p[candidate]), *cert.pair_radius.values(), *true_radii]
    return sorted({0.0} | {float(v) for v in values if np.isfinite(v) and v >= 0})


def _fails(cert, p, row):
    return any(cert.cost_at(eps) < true_cost(p, row, cert.candidate, SIGMA, eps) - 1e-12
               for eps in _breakpoints(cert, p))


def _failure_rate(p, row, n, certify=None, seed=0):
    rng = np.random.default_rng(seed)
    p, row = np.asarray(p, dtype=float), np.asarray(row, dtype=float)
    certify = certify or (lambda s, e: certify_cost_counts(s, e, sigma=SIGMA, alpha=ALPHA,
                                                           cost_row=row))
    selection = rng.multinomial(50, p, size=TRIALS)
    estimation = rng.multinomial(n, p, size=TRIALS)
    failures = sum(_fails(certify(s, e), p, row)
                   for s, e in zip(selection, estimation, strict=True))
    return failures / TRIALS


# A ladder of ten cost levels whose classes get rarer as they get costlier: each level has its
# own class k_t, so each of the ten upper bounds can break kappa on its own (the worst case for
# the union over levels).
LADDER = [0.001 * (11 - j) for j in range(1, 11)]

CASES = {
    "ladder of ten levels": ([0.5, 0.5 - sum(LADDER), *LADDER], [0, 0, *range(1, 11)], 100_000),
    "many costly classes, near-equal p": ([0.4, *[0.6 / 8] * 8], [0, 3, 1, 4, 1, 5, 9, 2, 6],
                                          500),
    "costly top class": ([0.3, 0.45, 0.25], [0, 2, 5], 500),
    "costs that tie": ([0.5, 0.2, 0.2, 0.1], [0, 3, 3, 1], 500),
    "two classes, 10:1": ([0.7, 0.3], [0, 10], 300),
    "random row": ([0.45, 0.2, 0.15, 0.1, 0.05, 0.05], [0, 2.5, 0.3, 7, 2.5, 1], 1000),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_certified_cost_fails_at_most_alpha(case):
    """P(kappa(eps) < oracle(eps) for some eps) <= alpha, within 3 binomial sd."""
    p, row, n = CASES[case]
    assert _failure_rate(p, row, n) <= TOLERANCE


@pytest.mark.slow
def test_random_real_cost_rows_fail_at_most_alpha():
    rng = np.random.default_rng(7)
    p = np.array([0.42, 0.18, 0.12, 0.1, 0.08, 0.06, 0.04])
    failures = []
    for seed in range(4):
        row = np.round(rng.exponential(3.0, size=p.size), 1)
        row[0] = 0.0
        failures.append(_failure_rate(p, row, 800, seed=seed))
    assert max(failures) <= TOLERANCE


@pytest.mark.slow
def test_failure_test_rejects_skipping_the_split_over_levels():
    """The same check rejects upper bounds at alpha/2 each (no split over the L levels)."""
    p, row, n = CASES["ladder of ten levels"]

    def unsplit(selection, estimation):
        cert = certify_cost_counts(selection, estimation, sigma=SIGMA, alpha=ALPHA,
                                   cost_row=row)
        total = int(estimation.sum())
        radii = {k: SIGMA / 2 * (ndtri(cert.p_a_lower)
                                 - ndtri(clopper_pearson_upper(int(estimation[k]), total,
                                                               ALPHA / 2)))
                 for k in cert.pair_radius}
        return type(cert)(cert.prediction, cert.candidate, cert.candidate_cost, cert.r1, radii,
                          cert.costs, cert.p_a_lower, cert.levels)

    assert _failure_rate(p, row, n, certify=unsplit) > TOLERANCE


# -- the certificate's parts ----------------------------------------------------------------------
def test_upper_bounds_split_over_distinct_cost_levels_above_the_candidate():
    row = [0, 10, 2, 2, 0.5]
    cert = certify_cost_counts([80, 5, 5, 5, 5], [700, 100, 80, 70, 50], sigma=SIGMA,
                               alpha=0.01, cost_row=row)
    assert cert.levels == 3  # 10, 2, 0.5 above C[y][c_A] = 0
    p_a = clopper_pearson_lower(700, 1000, 0.005)
    assert cert.p_a_lower == pytest.approx(p_a)
    for k, count in ((1, 100), (2, 80), (3, 70), (4, 50)):
        p_k = clopper_pearson_upper(count, 1000, 0.01 / 6)
        assert cert.pair_radius[k] == pytest.approx(SIGMA / 2 * (ndtri(p_a) - ndtri(p_k)))
    assert cert.costs == {1: 10.0, 2: 2.0, 3: 2.0, 4: 0.5}


def test_kappa_steps_up_through_the_pairwise_radii():
    cert = certify_cost_counts([90, 5, 5, 0], [550, 50, 150, 250], sigma=SIGMA, alpha=0.001,
                               cost_row=[0, 10, 2, 1])
    r = cert.pair_radius
    assert r[1] > r[2] > r[3] > 0 > cert.r1  # p_A ~ 0.55: R1 alone would certify nothing
    assert cert.prediction == 0
    assert cert.cost_at(0.0) == 0
    assert cert.cost_at(r[3] * 0.999) == 0
    assert cert.cost_at(r[3]) == 1
    assert cert.cost_at(r[2]) == 2
    assert cert.cost_at(r[1] * 0.999) == 2
    assert cert.cost_at(r[1]) == 10
    assert cert.cost_at(1e6) == 10


def test_r1_above_eps_certifies_the_candidate_alone():
    # Few unanimous votes: the split upper bounds are looser than 1 - pA_lower, so R1 beats
    # every pairwise radius, and within R1 the prediction is c_A alone.
    cert = certify_cost_counts([10, 0, 0], [20, 0, 0], sigma=SIGMA, alpha=0.001,
                               cost_row=[0, 10, 2])
    assert cert.r1 > max(cert.pair_radius.values()) > 0
    assert cert.cost_at(cert.r1 * 0.999) == 0
    assert cert.cost_at(cert.r1) == 10


def test_a_costly_candidate_costs_at_least_its_own_cost():
    cert = certify_cost_counts([5, 90, 5], [50, 900, 50], sigma=SIGMA, alpha=0.001,
                               cost_row=[0, 2, 5])
    assert cert.candidate == 1 and cert.candidate_cost == 2
    assert cert.levels == 1 and list(cert.pair_radius) == [2]
    assert cert.cost_at(0.0) == 2
    assert cert.cost_at(cert.pair_radius[2]) == 5


def test_two_classes_spend_the_whole_alpha_on_r1():
    cert = certify_cost_counts([90, 10], [900, 100], sigma=SIGMA, alpha=0.01, cost_row=[0, 10])
    assert cert.p_a_lower == pytest.approx(clopper_pearson_lower(900, 1000, 0.01))
    assert cert.pair_radius == {1: cert.r1}


def test_a_non_sensitive_row_certifies_zero_cost():
    cert = certify_cost_counts([50, 50, 0], [340, 330, 330], sigma=SIGMA, alpha=0.001,
                               cost_row=[0, 0, 0])
    assert cert.prediction == ABSTAIN and cert.cost_at(10.0) == 0


@pytest.mark.parametrize("row, message", [([0, 1], "2 entries"), ([0, -1, 2], "finite"),
                                          ([0, float("nan"), 1], "finite")])
def test_bad_cost_rows(row, message):
    with pytest.raises(ValueError, match=message):
        certify_cost_counts([90, 10, 0], [90, 10, 0], sigma=SIGMA, alpha=0.01, cost_row=row)


def test_zero_one_rows_agree_exactly_with_the_binary_certificate():
    """On a 0/1 row, kappa(eps) == 0 exactly when Algorithm 1 (sound) certifies radius > eps."""
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(400):
        m = int(rng.integers(2, 7))
        p = rng.dirichlet(np.full(m, 0.7))
        y = int(rng.integers(m))
        row = (rng.random(m) < 0.5).astype(float)
        row[y] = 0
        if not row.any():
            row[(y + 1) % m] = 1
        selection, estimation = rng.multinomial(30, p), rng.multinomial(400, p)
        cost = certify_cost_counts(selection, estimation, sigma=SIGMA, alpha=0.05, cost_row=row)
        binary = certify_counts(selection, estimation, sigma=SIGMA, alpha=0.05,
                                costly=np.flatnonzero(row).tolist())
        radii = [binary.r1, binary.r2, cost.r1, *cost.pair_radius.values()]
        for eps in sorted({0.0, *(abs(float(v)) for v in radii if np.isfinite(v))}):
            certified = binary.certified and binary.radius > eps
            assert (cost.cost_at(eps) == 0) == certified
            checked += 1
    assert checked > 1000
