"""Certificates on counts: Clopper-Pearson bounds, Theorems 3.3 and 3.4, Algorithm 1 lines."""

import math

import numpy as np
import pytest
from scipy.stats import beta, binomtest, norm

from csrs import ABSTAIN, certify_counts, cohen_certify_counts, cohen_predict_counts
from csrs.stats import clopper_pearson_lower, clopper_pearson_upper, true_cs_radius


@pytest.mark.parametrize("k, n", [(0, 10), (1, 10), (5, 10), (9, 10), (10, 10), (737, 1000)])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_clopper_pearson_matches_scipy_exact_interval(k, n, alpha):
    # A two-sided exact interval at 1 - 2*alpha has the one-sided bounds at alpha as its ends.
    interval = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(interval.low, abs=1e-9)
    assert clopper_pearson_upper(k, n, alpha) == pytest.approx(interval.high, abs=1e-9)


def test_clopper_pearson_edges():
    assert clopper_pearson_lower(0, 50, 0.01) == 0.0
    assert clopper_pearson_upper(50, 50, 0.01) == 1.0
    # With k = n the lower bound solves p^n = alpha.
    assert clopper_pearson_lower(50, 50, 0.01) == pytest.approx(0.01 ** (1 / 50))


def _alg1_by_hand(selection, estimation, sigma, alpha, costly):
    """Algorithm 1 as printed, line by line, with the paper's alpha allocation."""
    n = sum(estimation)
    c_a = int(np.argmax(selection))                                             # line 3
    p_a = clopper_pearson_lower(estimation[c_a], n, alpha)                      # line 5
    r1 = sigma * norm.ppf(p_a)                                                  # line 6
    p_a = clopper_pearson_lower(estimation[c_a], n, alpha / 2)                  # line 7
    p_b = max(clopper_pearson_upper(estimation[k], n, alpha / (2 * len(costly)))
              for k in costly)                                                  # line 8
    r2 = sigma / 2 * (norm.ppf(p_a) - norm.ppf(p_b))                            # line 9
    return (c_a, max(r1, r2)) if max(r1, r2) > 0 else (ABSTAIN, 0.0)            # lines 10-13


@pytest.mark.parametrize("estimation, costly", [
    ([700, 200, 100, 0], [1]),
    ([700, 200, 100, 0], [1, 2, 3]),
    ([400, 350, 250, 0], [2]),
    ([300, 300, 400, 0], [0]),
    ([980, 10, 10, 0], [1, 2, 3]),
])
def test_paper_mode_reproduces_algorithm_1(estimation, costly):
    selection = [60, 20, 20, 0] if estimation[0] >= estimation[2] else [10, 10, 80, 0]
    cert = certify_counts(selection, estimation, sigma=0.5, alpha=0.001, costly=costly,
                          bounds="paper")
    prediction, radius = _alg1_by_hand(selection, estimation, 0.5, 0.001, costly)
    assert cert.prediction == prediction
    if prediction != ABSTAIN and prediction not in costly:
        assert cert.radius == pytest.approx(radius, rel=1e-12)


def test_sound_mode_shares_one_lower_bound_at_half_alpha():
    cert = certify_counts([90, 10, 0], [800, 150, 50], sigma=0.25, alpha=0.01, costly=[2])
    p_a = clopper_pearson_lower(800, 1000, 0.005)
    p_b = clopper_pearson_upper(50, 1000, 0.005)
    assert cert.p_a_lower == pytest.approx(p_a)
    assert cert.r1 == pytest.approx(0.25 * norm.ppf(p_a))
    assert cert.r2 == pytest.approx(0.125 * (norm.ppf(p_a) - norm.ppf(p_b)))
    assert cert.radius == pytest.approx(max(cert.r1, cert.r2))
    assert cert.certified and cert.prediction == 0


def test_sound_mode_bounds_each_costly_class_at_half_alpha_without_a_split():
    """docs/theory.md#no-split-over-omega: R2 needs pB_upper >= p_k* for one (unknown, fixed)
    class k*: one event."""
    cert = certify_counts([90, 10, 0, 0], [800, 100, 60, 40], sigma=0.5, alpha=0.01,
                          costly=[1, 2, 3])
    assert cert.p_b_upper == pytest.approx(clopper_pearson_upper(100, 1000, 0.01 / 2))


def test_paper_mode_keeps_the_bonferroni_split():
    cert = certify_counts([90, 10, 0, 0], [800, 100, 60, 40], sigma=0.5, alpha=0.01,
                          costly=[1, 2, 3], bounds="paper")
    assert cert.p_b_upper == pytest.approx(clopper_pearson_upper(100, 1000, 0.01 / 6))


def test_two_classes_spend_the_whole_alpha_on_r1():
    """With two classes p_B = 1 - p_A, so R2 = R1 and nothing is left to split."""
    cert = certify_counts([90, 10], [900, 100], sigma=0.5, alpha=0.01, costly=[1])
    p_a = clopper_pearson_lower(900, 1000, 0.01)
    assert cert.p_a_lower == pytest.approx(p_a)
    assert cert.r1 == cert.r2 == pytest.approx(0.5 * norm.ppf(p_a))
    assert cert.radius == cert.r1 and cert.certified


@pytest.mark.parametrize("counts, costly", [
    ([700, 200, 100, 0], [2, 3]),    # the costly classes are rare: R2 > R1
    ([520, 20, 0, 460], [1, 2]),     # a non-costly runner-up near p_A: R1 < 0 < R2
    ([900, 50, 30, 20], [3]),
])
def test_theorem_3_3_the_pairwise_radius_certifies_beyond_the_standard_one(counts, costly):
    """Theorem 3.3 where it bites: when the costly classes are rarer than the runner-up, R2
    exceeds R1 and the certificate returns R2. Both computed here by hand from SciPy's Beta
    quantiles and normal PPF (sound allocation: alpha/2 for p_A and for each costly p_k)."""
    n, alpha, sigma = sum(counts), 0.001, 0.5
    p_a = beta.ppf(alpha / 2, counts[0], n - counts[0] + 1)
    p_b = max(beta.ppf(1 - alpha / 2, counts[k] + 1, n - counts[k]) for k in costly)
    r1 = sigma * norm.ppf(p_a)
    r2 = sigma / 2 * (norm.ppf(p_a) - norm.ppf(p_b))
    assert r2 > r1  # the cases are chosen so that the theorem bites
    cert = certify_counts([100, 0, 0, 0], counts, sigma=sigma, alpha=alpha, costly=costly)
    assert cert.r1 == pytest.approx(r1, rel=1e-9) and cert.r2 == pytest.approx(r2, rel=1e-9)
    assert cert.certified and cert.radius == pytest.approx(r2, rel=1e-9)


def test_true_cs_radius_equals_standard_radius_for_all_other_classes():
    """Theorem 3.3, equality: Omega_y = all other classes gives Cohen's radius (Eq. 1)."""
    p = np.array([0.6, 0.25, 0.1, 0.05])
    standard = 0.5 / 2 * (norm.ppf(0.6) - norm.ppf(0.25))
    assert true_cs_radius(p, [1, 2, 3], 0.5) == pytest.approx(standard)
    assert true_cs_radius(p, [2, 3], 0.5) > standard
    assert true_cs_radius(p, [0], 0.5) < 0  # top class costly: negative radius


def test_costly_prediction_is_never_robust():
    cert = certify_counts([5, 95, 0], [100, 880, 20], sigma=0.5, alpha=0.001, costly=[1])
    assert cert.prediction == 1 and cert.is_costly
    assert cert.radius == 0 and not cert.certified


def test_abstains_when_no_radius_is_positive():
    cert = certify_counts([50, 50, 0], [340, 330, 330], sigma=0.5, alpha=0.001, costly=[1])
    assert cert.prediction == ABSTAIN and cert.radius == 0 and not cert.certified


@pytest.mark.parametrize("kwargs, message", [
    ({"costly": []}, "empty"),
    ({"costly": [7]}, "does not exist"),
    ({"costly": [1], "alpha": 0}, "alpha"),
    ({"costly": [1], "alpha": 1.5}, "alpha"),
    ({"costly": [1], "sigma": -1.0}, "sigma"),
    ({"costly": [1], "bounds": "loose"}, "bounds"),
])
def test_bad_arguments(kwargs, message):
    arguments = {"sigma": 0.5, "alpha": 0.01, **kwargs}
    with pytest.raises(ValueError, match=message):
        certify_counts([90, 10, 0], [90, 10, 0], **arguments)


def test_cohen_certify_and_predict():
    cert = cohen_certify_counts([100, 0], [990, 10], sigma=0.5, alpha=0.001)
    assert cert.prediction == 0
    assert cert.radius == pytest.approx(0.5 * norm.ppf(clopper_pearson_lower(990, 1000, 0.001)))
    assert cohen_certify_counts([100, 0], [520, 480], sigma=0.5, alpha=0.001).abstained
    assert cohen_predict_counts([600, 400, 0], alpha=0.001) == 0
    assert cohen_predict_counts([510, 490, 0], alpha=0.001) == ABSTAIN
    assert cohen_predict_counts([0, 3, 900], alpha=0.001) == 2


# -- Theorem 3.4, empirically -----------------------------------------------------------------
# Simulated multinomial counts from a known p. A failure is a certificate whose prediction is
# not costly and whose radius exceeds the true radius R*(p). With a large alpha the failures
# are frequent enough to count; the rate must stay below alpha + 3 binomial standard deviations.

TRIALS = 2000
ALPHA = 0.1


def _failure_rate(p, costly, bounds="sound", n=500, n0=50, sigma=0.5, seed=0, certify=None):
    rng = np.random.default_rng(seed)
    truth = true_cs_radius(p, costly, sigma)
    selection = rng.multinomial(n0, p, size=TRIALS)
    estimation = rng.multinomial(n, p, size=TRIALS)
    certify = certify or (lambda s, e: certify_counts(s, e, sigma=sigma, alpha=ALPHA,
                                                      costly=costly, bounds=bounds))
    failures = 0
    for s, e in zip(selection, estimation, strict=True):
        cert = certify(s, e)
        if cert.certified and cert.radius > truth:
            failures += 1
    return failures / TRIALS


TOLERANCE = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / TRIALS)

CASES = {
    "binary": ([0.62, 0.38], [1]),
    "one costly, runner-up not costly": ([0.5, 0.3, 0.2], [2]),
    "several costly": ([0.45, 0.2, 0.15, 0.1, 0.1], [1, 2, 3]),
    "all but one (seedwise)": ([0.55, 0.15, 0.15, 0.15], [1, 2, 3]),
    "one costly class holds the costly mass": ([0.5, 0.44, 0.02, 0.02, 0.02], [1, 2, 3, 4]),
    "near tie with a costly class": ([0.41, 0.39, 0.2], [1]),
    "top class costly": ([0.3, 0.45, 0.25], [1]),
    "nine costly, one dominant": ([0.6, 0.3] + [0.0125] * 8, list(range(1, 10))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_certificates_fail_at_most_alpha(case):
    """Theorem 3.4 with the sound allocation: P(radius > R*(p), non-costly) <= alpha."""
    p, costly = CASES[case]
    assert _failure_rate(np.array(p), costly) <= TOLERANCE


def test_failure_test_has_teeth():
    """The same check rejects the published code's precedence slip (p_B at alpha/2*|Omega|)."""
    p, costly = CASES["nine costly, one dominant"]

    def slipped(selection, estimation):
        # The upper bound at alpha/2 * |Omega| instead of alpha / (2 |Omega|): with
        # |Omega| = 9 it is spent at level 0.45 instead of 0.0056.
        wrong_alpha = ALPHA / 2 * len(costly)
        honest = certify_counts(selection, estimation, sigma=0.5, alpha=ALPHA, costly=costly)
        n = int(estimation.sum())
        p_b = max(clopper_pearson_upper(int(estimation[k]), n, wrong_alpha) for k in costly)
        r2 = 0.25 * (norm.ppf(honest.p_a_lower) - norm.ppf(p_b))
        radius = max(honest.r1, r2)
        return type(honest)(honest.prediction, radius if radius > 0 else 0.0, honest.r1, r2,
                            honest.p_a_lower, p_b, honest.is_costly)

    assert _failure_rate(np.array(p), costly, certify=slipped) > TOLERANCE
