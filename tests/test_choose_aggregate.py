"""Choosing a grid's candidate on the validation split, and averaging the chosen ones' test
numbers over seeds: hand-made scores against hand-computed answers."""

import math

import pytest

from csrs.experiment.aggregate import RunResult, aggregate
from csrs.experiment.choose import choose

NAN = float("nan")


def scores(*triples):
    return [{"acc": acc, "rob_cs": rob_cs, "cert_cost": cost} for acc, rob_cs, cost in triples]


def test_the_winner_is_the_most_robust_candidate_within_the_accuracy_drop():
    grid = scores((0.80, 0.50, 0.3), (0.75, 0.70, 0.2), (0.60, 0.95, 0.1))
    # Cohen at 0.78: 0.75 is within 0.03, 0.60 is not.
    choice = choose(grid, reference_acc=0.78, max_acc_drop=0.03)
    assert choice.index == 1 and "highest rob_cs" in choice.reason
    assert choose(grid, reference_acc=0.78, max_acc_drop=0.2).index == 2
    # Matched accuracy: the lowest certified cost among the same eligible candidates.
    assert choose(grid, reference_acc=0.78, max_acc_drop=0.03, select="cert_cost").index == 1
    assert choose(grid, reference_acc=0.78, max_acc_drop=0.2, select="cert_cost").index == 2


def test_the_bar_admits_an_accuracy_exactly_at_the_drop():
    grid = scores((0.654, 0.2, 1.0), (0.624, 0.6, 0.5))  # 0.654 - 0.624 = 0.030000000000000027
    assert choose(grid, reference_acc=0.654, max_acc_drop=0.03).index == 1


def test_with_no_candidate_within_the_drop_the_most_accurate_is_chosen_and_says_so():
    grid = scores((0.60, 0.9, 0.1), (0.70, 0.1, 0.9), (0.65, 0.5, 0.5))
    choice = choose(grid, reference_acc=0.90, max_acc_drop=0.03, select="cert_cost")
    assert choice.index == 1 and choice.reason.startswith("the most accurate")


def test_without_cohen_the_grid_is_measured_against_its_own_best_accuracy():
    grid = scores((0.80, 0.50, 0.3), (0.78, 0.70, 0.2), (0.70, 0.95, 0.1))
    choice = choose(grid, reference_acc=None, max_acc_drop=0.03)
    assert choice.index == 1 and "the grid's best 0.800" in choice.reason


def test_nan_scores_never_win():
    grid = scores((0.80, NAN, NAN), (0.79, 0.10, 0.9), (0.78, NAN, NAN))
    assert choose(grid, reference_acc=0.8, max_acc_drop=0.05).index == 1
    assert choose(grid, reference_acc=0.8, max_acc_drop=0.05, select="cert_cost").index == 1
    # A NaN accuracy is never eligible, not even as the most accurate.
    grid = scores((NAN, 0.99, 0.0), (0.50, 0.10, 0.9))
    assert choose(grid, reference_acc=0.9, max_acc_drop=0.01).index == 1
    # Every score NaN: the most accurate.
    grid = scores((0.70, NAN, NAN), (0.75, NAN, NAN))
    assert choose(grid, reference_acc=0.75, max_acc_drop=0.1).index == 1


def test_ties_go_to_the_more_accurate_candidate():
    grid = scores((0.70, 0.5, 0.2), (0.72, 0.5, 0.2), (0.71, 0.5, 0.2))
    assert choose(grid, reference_acc=0.72, max_acc_drop=0.05).index == 1
    assert choose(grid, reference_acc=0.72, max_acc_drop=0.05, select="cert_cost").index == 1


def test_a_bad_rule_or_no_candidates_is_refused():
    with pytest.raises(ValueError, match="select must be"):
        choose(scores((0.5, 0.5, 0.5)), reference_acc=None, max_acc_drop=0.1, select="acc")
    with pytest.raises(ValueError, match="no candidates"):
        choose([], reference_acc=None, max_acc_drop=0.1)


def result(method, seed, acc, rob_cs, cost, recall=NAN, adaptive=None, hparams="lam=1"):
    summary = {"acc": acc, "rob_cs": rob_cs, "cert_cost": cost, "recall": recall,
               "rob_cs_std": rob_cs, "rob_non_std": 0.5, "clean_cost": cost,
               "cert_cost_sensitive": cost, "precision": NAN, "examples": 100, "sensitive": 10}
    return RunResult("digits", "3", method, seed, hparams, summary, adaptive)


def test_aggregation_gives_the_mean_and_the_sample_sd_over_seeds():
    rows = aggregate([result("csrs", 0, 0.60, 0.50, 0.30),
                      result("csrs", 1, 0.70, 0.40, 0.20, hparams="lam=2"),
                      result("csrs", 2, 0.80, 0.90, 0.10),
                      result("cohen", 0, 0.75, 0.20, 0.60)])
    ours, cohen = rows
    assert (ours["method"], ours["seeds"], ours["seed_values"]) == ("csrs", 3, "0 1 2")
    assert ours["hparams"] == "lam=1 / lam=2"
    assert ours["acc"] == pytest.approx(0.70) and ours["acc_sd"] == pytest.approx(0.10)
    # rob_cs 0.5, 0.4, 0.9: mean 0.6; squared deviations 0.01 + 0.04 + 0.09 = 0.14, / 2.
    assert ours["rob_cs"] == pytest.approx(0.60)
    assert ours["rob_cs_sd"] == pytest.approx(math.sqrt(0.07))
    assert ours["cert_cost"] == pytest.approx(0.20) and ours["cert_cost_sd"] == pytest.approx(0.1)
    assert "recall" not in ours  # NaN for every seed: a 10-class task has no seed recall
    assert cohen["seeds"] == 1 and cohen["acc"] == 0.75 and "acc_sd" not in cohen


def test_a_metric_missing_for_one_seed_is_missing_in_the_mean():
    rows = aggregate([result("csrs", 0, 0.6, 0.5, 0.3, recall=0.4),
                      result("csrs", 1, 0.7, 0.4, 0.2, recall=NAN)])
    assert math.isnan(rows[0]["recall"])


def test_sequential_numbers_are_averaged_only_where_every_seed_has_them():
    decided = {"acc": 0.6, "rob_cs": 0.5, "rob_non_std": 0.4, "mean_samples": 1000.0,
               "examples": 400}
    both = aggregate([result("csrs", 0, 0.6, 0.5, 0.3, adaptive=decided),
                      result("csrs", 1, 0.7, 0.4, 0.2,
                             adaptive={**decided, "acc": 0.8, "mean_samples": 3000.0})])
    assert both[0]["adaptive_acc"] == pytest.approx(0.7)
    assert both[0]["adaptive_acc_sd"] == pytest.approx(math.sqrt(0.02))
    assert both[0]["adaptive_mean_samples"] == 2000.0 and both[0]["adaptive_examples"] == 400
    one = aggregate([result("csrs", 0, 0.6, 0.5, 0.3, adaptive=decided),
                     result("csrs", 1, 0.7, 0.4, 0.2)])
    assert "adaptive_acc" not in one[0]
