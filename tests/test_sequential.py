"""Sequential certification on simulated counts: soundness under optional stopping, efficiency."""

import math

import numpy as np
import pytest

from csrs.sequential import (
    ABSTAIN,
    FINAL_SHARE,
    SequentialTest,
    look_schedule,
    mixture_lower,
)
from csrs.stats import clopper_pearson_lower, true_cs_radius
from oracles import run_test

SIGMA = 0.5


class FullAlphaAtEveryLook(SequentialTest):
    """The classic bug: Clopper-Pearson at the full alpha after every batch."""

    def _certify_levels(self) -> list[float]:
        return [self.alpha] * len(self.looks)


def simulate(p, costly, eps, *, method="looks", runs=2000, alpha=0.1, n_max=2000, seed=0,
             test_class=SequentialTest):
    """Run ``runs`` sequential tests on multinomial draws from ``p``, batch by batch up to each
    look (selection included); return the fraction certified and the mean samples."""
    rng = np.random.default_rng(seed)
    p = np.asarray(p, dtype=float)
    certified, samples = 0, 0
    for _ in range(runs):
        test = test_class(rng.multinomial(20, p), eps=eps, sigma=SIGMA, alpha=alpha,
                          costly=costly, n_max=n_max, method=method)
        decision = run_test(test, lambda start, stop: rng.multinomial(stop - start, p))
        certified += decision.certified
        samples += decision.samples
    return certified / runs, samples / runs


def tolerance(alpha, runs):
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


# Binary (the tightest bounds, where repeated testing fails most often), the standard
# certificate of a 4-class input, and a pairwise cost-sensitive one decided by R1 or R2.
CASES = {
    "binary": ([0.8, 0.2], [1]),
    "standard": ([0.7, 0.1, 0.12, 0.08], None),
    "pairwise": ([0.55, 0.3, 0.1, 0.05], [2, 3]),
}


def _false_claim_eps(p, costly):
    omega = costly if costly is not None else range(1, len(p))
    return true_cs_radius(p, list(omega), SIGMA) * 1.0001  # just above R*(p): a false claim


@pytest.mark.parametrize("method, runs", [("looks", 2000),
                                          pytest.param("mixture", 800, marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_certificates_fail_at_most_alpha_under_optional_stopping(case, method, runs):
    p, costly = CASES[case]
    rate, _ = simulate(p, costly, _false_claim_eps(p, costly), method=method, runs=runs)
    assert rate <= tolerance(0.1, runs)


def test_soundness_test_rejects_full_alpha_at_every_look():
    p, costly = CASES["binary"]
    eps = _false_claim_eps(p, costly)
    rate, _ = simulate(p, costly, eps, test_class=FullAlphaAtEveryLook)
    assert rate > tolerance(0.1, 2000) + 0.05


@pytest.mark.parametrize("method", ["looks", "mixture"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_half_the_true_radius_certifies_with_few_samples(case, method):
    p, costly = CASES[case]
    eps = _false_claim_eps(p, costly) / 2
    n_max = 100_000
    rate, mean_samples = simulate(p, costly, eps, method=method, runs=100, alpha=0.001,
                                  n_max=n_max)
    assert rate >= 0.98
    assert mean_samples < n_max / 10


def test_unanimous_votes_certify_at_the_first_useful_look():
    test = SequentialTest([100, 0], eps=0.5, sigma=SIGMA, alpha=0.001)
    decision = run_test(test, lambda start, stop: np.array([stop - start, 0]))
    assert decision.certified and decision.prediction == 0 and decision.stopped == "certified"
    assert decision.samples < 100 + 200
    assert decision.radius_lower > 0.5 and decision.p_a_lower > 0.84


def test_a_costly_candidate_is_never_certified_and_costs_no_estimation():
    test = SequentialTest([10, 90, 0], eps=0.0, sigma=SIGMA, alpha=0.001, costly=[1])
    assert test.decision is not None
    assert not test.decision.certified and test.decision.prediction == 1
    assert test.decision.samples == 100


def test_an_unreachable_radius_stops_at_once():
    decision = SequentialTest([100, 0], eps=10.0, sigma=SIGMA, alpha=0.001,
                              n_max=1000).decision
    assert decision is not None and not decision.certified and decision.stopped == "futile"
    assert decision.prediction == ABSTAIN


def test_a_coin_flip_is_futile_long_before_the_budget():
    rng = np.random.default_rng(1)
    test = SequentialTest([60, 40], eps=0.5, sigma=SIGMA, alpha=0.001)
    decision = run_test(test, lambda start, stop: rng.multinomial(stop - start, [0.5, 0.5]))
    assert decision.stopped == "futile" and decision.prediction == ABSTAIN
    assert decision.radius_upper <= 0.5 and decision.samples < 1000


def test_the_budget_ends_an_undecided_test():
    p = [0.8413, 0.1587]  # R* = sigma * PhiInv(p_A) = eps to four digits
    rng = np.random.default_rng(2)
    test = SequentialTest([100, 0], eps=0.5, sigma=SIGMA, alpha=0.001, n_max=500)
    decision = run_test(test, lambda start, stop: rng.multinomial(stop - start, p))
    assert decision.stopped in ("budget", "futile") and decision.samples <= 600


def test_alpha_is_spent_only_at_looks_that_could_certify():
    # eps = 2 sigma needs p_A > 0.977: 64 unanimous votes cannot show that at any level.
    test = SequentialTest([100, 0], eps=1.0, sigma=SIGMA, alpha=0.001)
    levels = test._certify_levels()
    assert math.isclose(sum(levels), 0.001)
    spent = [level for level in levels if level]
    assert levels[0] == 0 and len(set(spent[:-1])) == 1
    assert math.isclose(spent[-1], 0.001 * FINAL_SHARE)  # the last look keeps its share


def test_look_schedule_grows_geometrically_to_the_budget():
    looks = look_schedule(100_000)
    assert looks[0] == 64 and looks[-1] == 100_000
    assert all(1.1 < b / a < 1.6 for a, b in zip(looks, looks[1:], strict=False))
    assert look_schedule(50) == (50,)


@pytest.mark.parametrize("successes, trials", [(1, 1), (9, 10), (900, 1000), (99_990, 100_000)])
def test_mixture_bound_is_a_valid_lower_bound_and_near_clopper_pearson(successes, trials):
    bound = mixture_lower(successes, trials, 0.001)
    assert 0 < bound < successes / trials
    assert bound > clopper_pearson_lower(successes, trials, 1e-6)


def test_update_checks_the_counts():
    test = SequentialTest([100, 0, 0], eps=0.5, sigma=SIGMA, alpha=0.001)
    with pytest.raises(ValueError, match="expected counts of 64 samples over 3 classes"):
        test.update([60, 0, 0])


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": -1}, "eps must be"), ({"alpha": 1.5}, "alpha must be"),
    ({"method": "bet"}, "method must be"), ({"costly": []}, "costly set Omega_y is empty"),
    ({"costly": [7]}, "costly class 7 does not exist"),
])
def test_bad_settings_are_refused(kwargs, message):
    settings = {"eps": 0.5, "sigma": SIGMA, "alpha": 0.001, **kwargs}
    with pytest.raises(ValueError, match=message):
        SequentialTest([10, 0, 0], **settings)


# -- a grid of radii from one test (one alpha for all of them) ---------------------------------
def simulate_grid(p, costly, grid, *, method="looks", runs=2000, alpha=0.1, n_max=2000, seed=0,
                  test_class=SequentialTest):
    """Run ``runs`` grid tests on multinomial draws from ``p``; return the fraction of runs
    that certified some listed eps >= R*(p) (a false claim), and the decisions."""
    rng = np.random.default_rng(seed)
    p = np.asarray(p, dtype=float)
    omega = costly if costly is not None else range(1, len(p))
    true_radius = true_cs_radius(p, list(omega), SIGMA)
    false, decisions = 0, []
    for _ in range(runs):
        test = test_class(rng.multinomial(20, p), eps=grid, sigma=SIGMA, alpha=alpha,
                          costly=costly, n_max=n_max, method=method)
        decision = run_test(test, lambda start, stop: rng.multinomial(stop - start, p))
        decisions.append(decision)
        false += any(ok and eps >= true_radius for ok, eps in zip(decision.certified, grid,
                                                                  strict=True))
    return false / runs, decisions


def _straddling(p, costly):
    """0.5 R*, just above R*, 1.3 R*, 2 R*: one true claim, three false ones."""
    radius = _false_claim_eps(p, costly) / 1.0001
    return (0.5 * radius, radius * 1.0001, 1.3 * radius, 2 * radius)


def _twelve(p, costly):
    """Twelve radii from 0.1 R* to 2.3 R*, one of them just above R* (the claim most at risk)
    and one just below it."""
    radius = _false_claim_eps(p, costly) / 1.0001
    return tuple(radius * f for f in sorted([*np.linspace(0.1, 2.3, 11), 1.0001]))


@pytest.mark.slow
@pytest.mark.parametrize("grid_of", [_straddling, _twelve], ids=["straddling", "twelve"])
@pytest.mark.parametrize("method, runs", [("looks", 2000), ("mixture", 500)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_grid_certifies_some_eps_above_the_true_radius_at_most_alpha(case, method, runs,
                                                                       grid_of):
    """One alpha for the whole grid, whatever the stopping time (no split over the eps)."""
    p, costly = CASES[case]
    rate, decisions = simulate_grid(p, costly, grid_of(p, costly), method=method, runs=runs)
    assert rate <= tolerance(0.1, runs)
    # ... and it is not vacuous: the true claim below R* is certified most of the time.
    assert np.mean([d.certified[0] for d in decisions]) > 0.5


@pytest.mark.parametrize("grid_of", [_straddling, _twelve], ids=["straddling", "twelve"])
def test_the_grid_check_rejects_full_alpha_at_every_look(grid_of):
    p, costly = CASES["binary"]
    rate, _ = simulate_grid(p, costly, grid_of(p, costly), test_class=FullAlphaAtEveryLook)
    assert rate > tolerance(0.1, 2000) + 0.05


@pytest.mark.parametrize("case", sorted(CASES))
def test_grid_decisions_are_nested_and_stop_when_every_eps_is_decided(case):
    p, costly = CASES[case]
    grid = _twelve(p, costly)
    _, decisions = simulate_grid(p, costly, grid, runs=200, alpha=0.01, n_max=5000, seed=3)
    for decision in decisions:
        certified = list(decision.certified)
        assert certified == sorted(certified, reverse=True)  # certified at e => below e
        assert len(decision.stopped) == len(grid)
        assert decision.samples <= 5000 + 20
        below = [eps for eps, ok in zip(grid, certified, strict=True) if ok]
        if below:  # every certified eps lies below the radius bound
            assert decision.radius_lower > max(below)
    assert any(any(d.certified) and not all(d.certified) for d in decisions)


def test_a_grid_of_one_point_decides_as_the_single_eps():
    """The same counts give the same decision and samples for eps = e and eps = (e,)."""
    p, costly = CASES["pairwise"]
    eps = _false_claim_eps(p, costly) * 0.8
    for seed in range(20):
        decisions = []
        for value in (eps, (eps,)):
            rng = np.random.default_rng(seed)
            test = SequentialTest(rng.multinomial(20, p), eps=value, sigma=SIGMA, alpha=0.01,
                                  costly=costly, n_max=5000)
            decisions.append(run_test(test, lambda start, stop, rng=rng:
                                      rng.multinomial(stop - start, p)))
        single, grid = decisions
        assert (single.certified, single.stopped, single.samples) == \
            (grid.certified[0], grid.stopped[0], grid.samples)


def test_a_single_eps_returns_plain_values_and_a_grid_tuples():
    decision = run_test(SequentialTest([100, 0], eps=0.5, sigma=SIGMA, alpha=0.001),
                        lambda start, stop: np.array([stop - start, 0]))
    assert decision.certified is True and decision.stopped == "certified"
    decision = run_test(SequentialTest([100, 0], eps=(0.5, 2.0), sigma=SIGMA, alpha=0.001,
                                       n_max=1000),
                        lambda start, stop: np.array([stop - start, 0]))
    # 2.0 needs p_A > Phi(4): beyond what 1000 unanimous votes can show, futile at once.
    assert decision.certified == (True, False)
    assert decision.stopped == ("certified", "futile")


@pytest.mark.parametrize("grid, message", [((0.5, 0.25), "increase strictly"),
                                           ((), "empty"), ((0.5, float("inf")), "finite"),
                                           ((-0.1, 0.5), ">= 0")])
def test_bad_grids_are_refused(grid, message):
    with pytest.raises(ValueError, match=message):
        SequentialTest([10, 0, 0], eps=grid, sigma=SIGMA, alpha=0.001)
