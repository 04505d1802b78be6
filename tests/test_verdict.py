"""The report's verdicts on both papers' claims, on hand-made summary rows: the thresholds,
the wording and the spread over seeds."""

import pytest

from csrs.experiment.verdict import relation, verdict_2023, verdict_2025


def row(method, acc, rob_cs, cert_cost=0.5, **more):
    return {"dataset": "digits", "cost": "3", "method": method, "acc": acc, "rob_cs": rob_cs,
            "cert_cost": cert_cost, **more}


@pytest.mark.parametrize("difference, text", [
    (0.042, "0.042 above Cohen's"), (-0.013, "0.013 below Cohen's"),
    (0.0004, "equal to Cohen's"), (-0.0004, "equal to Cohen's"),
])
def test_differences_read_as_above_or_below(difference, text):
    assert relation(difference, "Cohen's") == text


def _parts(bullet):
    return bullet.rstrip(".").split(": ", 1)[1].split("; ")


def test_2023_bars_at_their_thresholds():
    holds = verdict_2023([row("cohen", 0.800, 0.200), row("macer", 0.790, 0.250),
                          row("cohen-r", 0.780, 0.600), row("csrs", 0.770, 0.601)])
    gain, versus_r, accuracy = _parts(holds[0])
    assert gain.startswith("Rob_cs 0.601 vs 0.250 for the best cost-blind method within 0.03 "
                           "of Cohen's Acc (MACER): 0.351 above it") and gain.endswith("holds")
    assert versus_r.endswith("0.001 above it (bar: at least equal): holds")
    assert accuracy == ("Acc 0.770, 0.030 below Cohen's 0.800 (bar: at most 0.03 below): holds")
    fails = verdict_2023([row("cohen", 0.800, 0.200), row("cohen-r", 0.780, 0.300),
                          row("csrs", 0.769, 0.250)])
    gain, versus_r, accuracy = _parts(fails[0])
    assert "0.050 above it (bar: more than 0.05 above): does not hold" in gain
    assert versus_r.endswith("0.050 below it (bar: at least equal): does not hold")
    assert accuracy.endswith("0.031 below Cohen's 0.800 (bar: at most 0.03 below): does not hold")


def test_an_accuracy_gain_is_worded_as_above():
    bullet = verdict_2023([row("cohen", 0.700, 0.2), row("csrs", 0.742, 0.5)])[0]
    assert "Acc 0.742, 0.042 above Cohen's 0.700" in bullet and "+" not in bullet


def test_2025_bars_at_their_thresholds():
    bullet = verdict_2025([row("cohen", 0.800, 0.2, 0.90), row("cohen-r", 0.78, 0.5, 0.40),
                           row("margin-cs", 0.780, 0.4, 0.40)])[0]
    accuracy, cost = _parts(bullet)
    assert accuracy.endswith("0.020 below Cohen's 0.800 (bar: at most 0.02 below): holds")
    assert cost == ("certified cost 0.400 vs 0.400 for the best other method within 0.02 of "
                    "Cohen's Acc (Cohen-R): equal to it (bar: the lowest): holds")
    bullet = verdict_2025([row("cohen", 0.800, 0.2, 0.90), row("cohen-r", 0.78, 0.5, 0.39),
                           row("margin-cs", 0.779, 0.4, 0.40)])[0]
    accuracy, cost = _parts(bullet)
    assert accuracy.endswith("does not hold") and cost.endswith("0.010 above it (bar: the "
                                                                "lowest): does not hold")


def test_rivals_are_taken_at_matched_accuracy_and_never_the_methods_own_variant():
    """A method that collapsed (low Acc, high Rob_cs or low cost) is no rival; nor is the other
    reading of Margin-CS."""
    rows = [row("cohen", 0.80, 0.20, 0.90), row("smoothadv", 0.60, 0.90, 0.10),
            row("macer", 0.79, 0.25, 0.80), row("margin-cs@top", 0.80, 0.4, 0.05),
            row("csrs", 0.79, 0.50, 0.50), row("margin-cs", 0.80, 0.4, 0.45)]
    gain = _parts(verdict_2023(rows)[0])[0]
    assert "(MACER)" in gain and "0.250 above it" in gain  # not SmoothAdv's 0.9 at Acc 0.6
    cost = _parts(verdict_2025(rows)[0])[1]
    assert "vs 0.500" in cost and "(CS-RS)" in cost  # not Margin-CS@top, not SmoothAdv
    alone = verdict_2023([row("cohen", 0.90, 0.2), row("smoothadv", 0.60, 0.9),
                          row("csrs", 0.70, 0.5)])[0]
    assert "none within 0.03 of Cohen's Acc, so of all (Cohen)" not in alone
    assert "within 0.03 of Cohen's Acc (Cohen)" in alone  # Cohen itself is within its budget


def test_with_seeds_a_gain_must_exceed_the_spread_over_seeds():
    cohen = row("cohen", 0.80, 0.20, acc_sd=0.01, rob_cs_sd=0.02)
    clear = row("csrs", 0.79, 0.40, acc_sd=0.01, rob_cs_sd=0.03)
    bullet = verdict_2023([cohen, clear])[0]
    assert ("Rob_cs 0.400 ± 0.030 vs 0.200 ± 0.020 for the best cost-blind method within 0.03 "
            "of Cohen's Acc (Cohen): 0.200 above it (bar: more than 0.05 above): holds (more "
            "than the spread over seeds, 0.050)") in bullet
    noisy = row("csrs", 0.79, 0.40, acc_sd=0.01, rob_cs_sd=0.19)
    bullet = verdict_2023([cohen, noisy])[0]
    assert "0.200 above it (bar: more than 0.05 above): holds on the means only (less than " \
           "the spread over seeds, 0.210)" in bullet
    # A claim of no accuracy loss holds on its bar; the spread is reported beside it.
    assert ("Acc 0.790 ± 0.010, 0.010 below Cohen's 0.800 ± 0.010 (bar: at most 0.03 below): "
            "holds (less than the spread over seeds, 0.020)") in bullet


def test_with_seeds_the_lowest_cost_must_be_clear_of_the_spread():
    rows = [row("cohen", 0.8, 0.2, 0.90, acc_sd=0.0, cert_cost_sd=0.05),
            row("csrs", 0.8, 0.5, 0.35, acc_sd=0.0, cert_cost_sd=0.02),
            row("margin-cs", 0.8, 0.5, 0.30, acc_sd=0.0, cert_cost_sd=0.02)]
    cost = _parts(verdict_2025(rows)[0])[1]
    assert cost.endswith("0.050 below it (bar: the lowest): holds (more than the spread over "
                         "seeds, 0.040)")
    rows[1]["cert_cost_sd"] = 0.04
    cost = _parts(verdict_2025(rows)[0])[1]
    assert cost.endswith("holds on the means only (less than the spread over seeds, 0.060)")


def test_variants_are_named_as_the_papers_name_their_methods():
    from csrs.experiment.verdict import method_label

    assert method_label("csrs@per-draw") == "CS-RS@per-draw"
    assert method_label("smoothadv-cs@reweight") == "SmoothAdv-CS@reweight"
    assert method_label("margin-cs") == "Margin-CS"


def test_settings_without_the_method_get_no_bullet():
    assert verdict_2023([row("cohen", 0.8, 0.2), row("macer", 0.8, 0.3)]) == []
    assert verdict_2025([row("margin-cs", 0.8, 0.2)]) == []
