"""The training objectives on hand-made logits and probabilities with known gaps."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from csrs.attacks import smoothed_log_probs, smoothed_pgd_l2
from csrs.costs import CostMatrix
from csrs.objectives import (
    METHOD_DEFAULTS,
    OBJECTIVES,
    cohen,
    cohen_r,
    cost_attack_gain,
    cost_sensitive_classes,
    cost_sensitive_hinge,
    csrs,
    label_attack_gain,
    macer,
    margin_cs,
    noisy_probabilities,
    pairwise_cost_hinge,
    phi_inv_gap,
    resolve_hparams,
    smoothadv,
    smoothadv_cs,
    standard_classes,
    standard_hinge,
    top_classes,
)

SIGMA = 0.5


class FixedLogits(nn.Module):
    """A stub base classifier: the same logits for every noise draw of an example."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.repeat_interleave(len(x) // len(self.logits), dim=0)


def two_class_probs(gaps: list[float]) -> torch.Tensor:
    """Rows (p, 1 - p) whose gap PhiInv(p) - PhiInv(1 - p) = 2 PhiInv(p) is the given one."""
    p = torch.tensor(norm.cdf([g / 2 for g in gaps]), dtype=torch.float64)
    return torch.stack([p, 1 - p], dim=1)


def test_i2_selects_exactly_the_gaps_in_zero_gamma1():
    gaps = [-3.0, -0.5, 0.0, 1.0, 3.9, 4.1, 7.0]
    probs = two_class_probs(gaps)
    loss = standard_hinge(probs, torch.zeros(len(gaps), dtype=torch.long), SIGMA, gamma=4.0)
    expected = torch.tensor([SIGMA / 2 * (4.0 - g) if 0 <= g <= 4 else 0.0 for g in gaps],
                            dtype=torch.float64)
    torch.testing.assert_close(loss, expected)


def test_i3_selects_exactly_the_sensitive_examples_with_signed_gap_in_range():
    # Pairwise 0 -> 2 on three classes: m = PhiInv(max(p0, p1)) - PhiInv(p2).
    probs = torch.tensor([[0.70, 0.20, 0.10], [0.20, 0.30, 0.50], [0.15, 0.05, 0.80],
                          [0.01, 0.01, 0.98], [0.50, 0.49, 0.01], [0.10, 0.10, 0.80]],
                         dtype=torch.float64)
    sensitive = torch.tensor([True, True, True, True, True, False])
    costly = torch.zeros(6, 3, dtype=torch.bool)
    costly[sensitive, 2] = True
    gamma2 = 2.0
    signed = torch.tensor(norm.ppf(probs[:, :2].max(1).values) - norm.ppf(probs[:, 2]))
    cs_gap = phi_inv_gap(probs, *cost_sensitive_classes(probs, costly))
    torch.testing.assert_close(cs_gap[sensitive], signed[sensitive])
    in_range = sensitive & (signed.abs() <= gamma2)
    assert in_range.tolist() == [True, True, True, False, False, False]  # the rows cover each case
    loss = cost_sensitive_hinge(probs, costly, SIGMA, gamma2)
    expected = torch.where(in_range, SIGMA / 2 * (gamma2 - signed), 0.0)
    torch.testing.assert_close(loss, expected)


def test_i3_pulls_back_a_sensitive_example_whose_top_class_is_costly():
    # With beta = 16 a logit margin of 1.5 puts the top probability within 1e-10 of 1.
    logits = torch.tensor([[0.0, 0.5, 2.0], [0.0, 0.5, 2.0], [2.0, 0.5, 0.0]])
    costly = torch.tensor([[False, False, True], [False, False, False], [False, False, True]])
    stub = FixedLogits(logits)
    probs = noisy_probabilities(stub.logits, num_noise=1, beta=16.0)
    cost_sensitive_hinge(probs, costly, SIGMA, gamma2=16.0).sum().backward()
    grad = stub.logits.grad
    assert grad[0].abs().sum() > 0, "costly top class: I3 must give a gradient"
    assert grad[0, 2] > 0, "descent must lower the costly class's logit"
    assert torch.all(grad[1] == 0), "non-sensitive examples get no gradient from I3"
    assert grad[2].abs().sum() > 0  # correct and inside [-gamma2, gamma2]: still pushed outwards


def test_seedwise_i3_equals_the_macer_gap_of_the_true_class():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(64, 10) * 2, dim=1)
    y = torch.randint(0, 10, (64,))
    matrix = torch.tensor(CostMatrix.seedwise(10, [1, 3, 5]).mask.copy())
    costly = matrix[y]
    sensitive = costly.any(1)
    assert sensitive.any() and not sensitive.all()
    cs_gap = phi_inv_gap(probs, *cost_sensitive_classes(probs, costly))
    macer_gap = phi_inv_gap(probs, *standard_classes(probs, y))
    torch.testing.assert_close(cs_gap[sensitive], macer_gap[sensitive])
    # With equal thresholds the two hinges agree wherever the gap is non-negative.
    cs_loss = cost_sensitive_hinge(probs, costly, SIGMA, gamma2=8.0)
    macer_loss = standard_hinge(probs, y, SIGMA, gamma=8.0)
    keep = sensitive & (macer_gap >= 0)
    torch.testing.assert_close(cs_loss[keep], macer_loss[keep])


def test_gaps_stay_exact_across_the_whole_i3_window():
    # Two classes, logit margin d: the smaller probability is q = 1 / (1 + exp(beta |d|)) and
    # m = 2 sign(d) PhiInv(1 - q).
    margins = torch.tensor([-2.4, -1.9, -0.5, 0.5, 1.9, 2.4])
    logits = torch.stack([margins, torch.zeros(6)], dim=1)
    costly = torch.tensor([[False, True]] * 6)
    probs = noisy_probabilities(logits, num_noise=1, beta=16.0)
    d = margins.double().numpy()
    expected = torch.tensor(2 * np.sign(d) * norm.isf(1 / (1 + np.exp(16.0 * np.abs(d)))))
    gap = phi_inv_gap(probs, *cost_sensitive_classes(probs, costly))
    torch.testing.assert_close(gap, expected)
    assert 14 < expected[4] < 16 < expected[5]  # float32 would give inf beyond about 10.6
    loss = cost_sensitive_hinge(probs, costly, SIGMA, gamma2=16.0)
    torch.testing.assert_close(loss, torch.where(expected.abs() <= 16, SIGMA / 2 * (16 - expected),
                                                 0.0))


@pytest.mark.parametrize("method", ["macer", "csrs"])
def test_no_nan_or_inf_with_probabilities_exactly_zero_or_one(method):
    # Exact 0 and 1, then probabilities that float32 could only hold as denormals or not at all.
    logits = torch.tensor([[1e4, 0.0, -1e4], [0.0, 1e4, -1e4], [-1e4, -1e4, 1e4],
                           [0.3, 0.2, 0.1], [5.0, 0.0, 0.0], [0.0, 6.0, 0.0], [45.0, 0.0, 0.0]])
    y = torch.tensor([0, 0, 0, 1, 2, 0, 0])
    costly = torch.tensor([[False, True, True]] * 3 + [[False, False, False], [True, False, False]]
                          + [[False, True, True]] * 2)
    stub = FixedLogits(logits)
    generator = torch.Generator().manual_seed(0)
    parts = OBJECTIVES[method](stub, torch.zeros(7, 3), y, costly, SIGMA, generator, num_noise=2)
    parts.total.backward()
    assert torch.isfinite(parts.total)
    assert torch.isfinite(stub.logits.grad).all()
    assert stub.logits.grad.abs().sum() > 0


def test_macer_classification_is_the_nll_of_the_soft_smoothed_classifier():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    y = torch.tensor([0, 2])
    parts = macer(FixedLogits(logits), torch.zeros(2, 3), y, torch.zeros(2, 3, dtype=torch.bool),
                  SIGMA, torch.Generator().manual_seed(0), num_noise=4)
    torch.testing.assert_close(parts.classification, F.cross_entropy(logits, y))
    probs = noisy_probabilities(logits.repeat_interleave(4, 0), 4, beta=16.0)
    torch.testing.assert_close(parts.robust_normal,
                               standard_hinge(probs, y, SIGMA, gamma=8.0).sum().float() / 2)
    torch.testing.assert_close(parts.total, parts.classification + 12.0 * parts.robust_normal)


def test_csrs_without_sensitive_examples_is_macer_with_gamma1():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(8, 4), torch.randint(0, 3, (8,))
    no_costs = torch.zeros(8, 3, dtype=torch.bool)
    ours = csrs(model, x, y, no_costs, SIGMA, torch.Generator().manual_seed(1), gamma1=3.0)
    theirs = macer(model, x, y, no_costs, SIGMA, torch.Generator().manual_seed(1), gamma=3.0)
    torch.testing.assert_close(ours.total, theirs.total)
    assert ours.robust_sensitive == 0


def test_cohen_r_reweights_only_sensitive_examples():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    costly = torch.zeros(6, 3, dtype=torch.bool)
    costly[y == 1, 0] = True

    def loss(objective, **kwargs):
        return objective(model, x, y, costly, SIGMA, torch.Generator().manual_seed(3),
                         **kwargs).total

    torch.testing.assert_close(loss(cohen_r, weight=1.0), loss(cohen))
    noisy = x + SIGMA * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    per_example = F.cross_entropy(model(noisy), y, reduction="none")
    weights = torch.where(y == 1, 1.7, 1.0)
    torch.testing.assert_close(loss(cohen_r, weight=1.7), (weights * per_example).mean())


def test_hyperparameters_default_and_validate():
    assert resolve_hparams("csrs") == METHOD_DEFAULTS["csrs"]
    assert METHOD_DEFAULTS["csrs"]["ce"] == "smoothed"  # Eq. 2's I1 is MACER's NLL
    assert resolve_hparams("macer", {"lam": 4})["lam"] == 4.0
    with pytest.raises(ValueError, match="'gamma'"):
        resolve_hparams("csrs", {"gamma": 1.0})
    with pytest.raises(ValueError, match="0.5"):
        resolve_hparams("cohen-r", {"weight": 0.5})
    with pytest.raises(ValueError, match="2.5"):
        resolve_hparams("macer", {"num_noise": 2.5})
    with pytest.raises(ValueError, match="'smooth'"):
        resolve_hparams("smooth")


# ---------------------------------------------------------------------------------------------
# Real-valued costs: Margin-CS, Cohen-R's weightings, SmoothAdv and SmoothAdv-CS


def test_margin_cs_hinges_each_costly_pair_in_its_window_weighted_by_its_cost():
    # y = 0 with costs C[0] = (0, 10, 2): the pairs 0 -> 1 and 0 -> 2, each with its own gap.
    probs = torch.tensor([[0.60, 0.30, 0.10], [0.30, 0.45, 0.25], [0.98, 0.01, 0.01],
                          [0.50, 0.20, 0.30]], dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    cost_rows = torch.tensor([[0.0, 10.0, 2.0]] * 3 + [[0.0, 0.0, 0.0]])
    gamma2 = 4.0
    gaps = torch.tensor(norm.ppf(probs[:, :1]) - norm.ppf(probs[:, 1:]))  # gap_1, gap_2
    assert (gaps[1, 0] < 0 < gaps[1, 1]) and (gaps[2] > gamma2).all()  # rows cover each case

    def expected(lower):
        inside = (gaps >= lower) & (gaps <= gamma2)
        hinges = torch.where(inside, SIGMA / 2 * (gamma2 - gaps), 0.0)
        return (cost_rows[:, 1:].double() * hinges).sum(1)

    nonnegative = pairwise_cost_hinge(probs, y, cost_rows, SIGMA, 0.0, gamma2)
    torch.testing.assert_close(nonnegative, expected(0.0))
    assert nonnegative[3] == 0 and nonnegative[2] == 0
    signed = pairwise_cost_hinge(probs, y, cost_rows, SIGMA, -gamma2, gamma2)
    torch.testing.assert_close(signed, expected(-gamma2))
    assert signed[1] > nonnegative[1]  # 0 -> 1 is already lost: only the signed window sees it


def test_margin_cs_signed_window_pulls_back_a_costly_class_that_already_wins():
    logits = torch.tensor([[0.0, 0.1, 0.0]])  # costly class 1 beats the label 0 slightly
    cost_rows = torch.tensor([[0.0, 3.0, 0.0]])
    y = torch.tensor([0])
    for lower, pulled in [(0.0, False), (-16.0, True)]:
        stub = FixedLogits(logits)
        probs = noisy_probabilities(stub.logits, num_noise=1, beta=16.0)
        pairwise_cost_hinge(probs, y, cost_rows, SIGMA, lower, 16.0).sum().backward()
        assert (stub.logits.grad[0, 1] > 0) == pulled  # descent lowers the costly logit
        assert (stub.logits.grad.abs().sum() > 0) == pulled


def test_margin_cs_is_ce_plus_each_groups_mean_hinge():
    logits = torch.tensor([[2.0, 0.5, 0.0], [0.2, 0.0, 0.1], [1.0, 0.9, 0.0], [0.3, 0.0, 0.6]])
    y = torch.tensor([0, 0, 0, 2])
    cost_rows = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 1.0],
                              [2.0, 0.0, 0.0]])
    parts = margin_cs(FixedLogits(logits), torch.zeros(4, 3), y, cost_rows, SIGMA,
                      torch.Generator().manual_seed(0), num_noise=2, lam1=0.7, lam2=2.0)
    probs = noisy_probabilities(logits.repeat_interleave(2, 0), 2, beta=16.0)
    normal = standard_hinge(probs, y, SIGMA, gamma=4.0)[:2].mean()
    sensitive = pairwise_cost_hinge(probs, y, cost_rows, SIGMA, 0.0, 16.0)[2:].mean()
    assert normal > 0 and sensitive > 0
    torch.testing.assert_close(parts.classification, F.cross_entropy(logits, y))
    torch.testing.assert_close(parts.robust_normal, normal.float())
    torch.testing.assert_close(parts.robust_sensitive, sensitive.float())
    torch.testing.assert_close(parts.total, parts.classification + 0.7 * parts.robust_normal
                               + 2.0 * parts.robust_sensitive)


@pytest.mark.parametrize("objective", [margin_cs, csrs])
@pytest.mark.parametrize("ce", ["per-draw", "smoothed"])
def test_classification_is_cohens_per_draw_ce_or_macers_smoothed_nll(ce, objective):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    parts = objective(model, x, y, torch.zeros(5, 3), SIGMA, torch.Generator().manual_seed(2),
                      num_noise=3, ce=ce)
    noise = SIGMA * torch.randn(15, 4, generator=torch.Generator().manual_seed(2))
    logits = model(x.repeat_interleave(3, 0) + noise)
    per_draw = F.cross_entropy(logits, y.repeat_interleave(3))
    smoothed = F.nll_loss(torch.log(F.softmax(logits, 1).view(5, 3, 3).mean(1) + 1e-10), y)
    assert not torch.isclose(per_draw, smoothed)
    torch.testing.assert_close(parts.classification, per_draw if ce == "per-draw" else smoothed)


def test_cohen_r_group_weighting_is_the_normal_mean_plus_weight_times_the_sensitive_mean():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 2])
    cost_rows = torch.zeros(8, 3)
    cost_rows[y == 1, 0] = 1.0  # two sensitive examples of eight

    def loss(**kwargs):
        return cohen_r(model, x, y, cost_rows, SIGMA, torch.Generator().manual_seed(3),
                       weight=1.5, **kwargs).total

    noisy = x + SIGMA * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    per_example = F.cross_entropy(model(noisy), y, reduction="none")
    sensitive = y == 1
    torch.testing.assert_close(loss(weighting="group"), per_example[~sensitive].mean()
                               + 1.5 * per_example[sensitive].mean())
    # The authors' code: batch mean + beta x sensitive mean, beta = alpha_w - 1.
    torch.testing.assert_close(loss(weighting="batch"), per_example.mean()
                               + 0.5 * per_example[sensitive].mean())
    torch.testing.assert_close(loss(weighting="example"),
                               torch.where(sensitive, 1.5, 1.0).mul(per_example).mean())
    # A cost of 3 counts as three binary costs: weight 1 + (1.5 - 1) * 3.
    cost_rows[y == 1, 0] = 3.0
    torch.testing.assert_close(loss(weighting="example"),
                               torch.where(sensitive, 2.5, 1.0).mul(per_example).mean())


@pytest.mark.parametrize("method, key, value, allowed", [
    ("margin-cs", "window", "both", "nonnegative, signed"),
    ("margin-cs", "ce", "soft", "per-draw, smoothed"),
    ("margin-cs", "pair_gap", "max", "label, top"),
    ("smoothadv-cs", "variant", "both", "attack, reweight"),
    ("cohen-r", "weighting", 1.0, "example, group, batch"),
])
def test_choice_hyperparameters_name_the_bad_value_and_the_allowed_ones(method, key, value,
                                                                         allowed):
    assert resolve_hparams(method, {key: allowed.split(", ")[1]})[key] == allowed.split(", ")[1]
    with pytest.raises(ValueError, match=f"{key} must be one of {allowed}; got {value!r}"):
        resolve_hparams(method, {key: value})
    with pytest.raises(ValueError, match="must be a number"):
        resolve_hparams("margin-cs", {"lam1": "3"})


@pytest.mark.parametrize("objective", [smoothadv, smoothadv_cs])
def test_smoothadv_at_eps_zero_is_gaussian_cross_entropy_over_its_draws(objective):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    cost_rows = torch.tensor([[0.0, 2.0, 1.0]] + [[0.0] * 3] * 4)
    parts = objective(model, x, y, cost_rows, SIGMA, torch.Generator().manual_seed(4),
                      num_noise=3, steps=2, eps=0.0)
    noise = SIGMA * torch.randn(15, 4, generator=torch.Generator().manual_seed(4))
    expected = F.cross_entropy(model(x.repeat_interleave(3, 0) + noise), y.repeat_interleave(3))
    torch.testing.assert_close(parts.total, expected)


def test_smoothadv_attack_leaves_batchnorm_statistics_and_train_mode_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    x, y = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    parts = smoothadv(model, x, y, torch.zeros(6, 3), SIGMA, torch.Generator().manual_seed(0),
                      num_noise=2, steps=3, eps=0.5)
    assert model.training
    assert model[1].num_batches_tracked == 1  # the training forward pass only, not the 3 steps
    parts.total.backward()
    assert model[0].weight.grad.abs().sum() > 0


def test_smoothadv_cs_attacks_a_sensitive_example_towards_its_costliest_class():
    # Classes 1 and 2 lie symmetrically around class 0 (logits w_k . x with w_1, w_2 mirrored), so
    # the label's NLL has no preference between them; costs 10 and 1 do.
    model = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, -1.0]]))
    x, y = torch.zeros(1, 2), torch.tensor([0])
    cost_rows = torch.tensor([[0.0, 10.0, 1.0]])
    noise = torch.zeros(1, 2)  # one noise-free draw: the attack on the base classifier itself

    def shift(gain):
        adversarial = smoothed_pgd_l2(model, x, noise, gain, 0.5, steps=4)
        return smoothed_log_probs(model, adversarial, 1).exp()[0]

    cost_weighted, by_label = shift(cost_attack_gain(y, cost_rows)), shift(label_attack_gain(y))
    assert cost_weighted[1] > 2 * cost_weighted[2]
    assert torch.isclose(by_label[1], by_label[2])
    # Without costs in the row the example is normal, attacked by its label as in SmoothAdv.
    assert torch.allclose(shift(cost_attack_gain(y, torch.zeros(1, 3))), by_label)


# ---------------------------------------------------------------------------------------------
# The two open readings of the 2025 paper: Margin-CS's pair gap, SmoothAdv-CS's variant

# y = 0 with costs C[0] = (0, 10, 2, 0) on four classes; the top class is y (row 0), the costly
# class 1 (row 1), and the cheap non-costly class 3 (row 2).
PAIR_PROBS = torch.tensor([[0.60, 0.20, 0.10, 0.10], [0.30, 0.45, 0.15, 0.10],
                           [0.25, 0.15, 0.10, 0.50]], dtype=torch.float64)
PAIR_COSTS = torch.tensor([[0.0, 10.0, 2.0, 0.0]] * 3)


def _pair_hinges_by_hand(anchor_probs: np.ndarray, gamma2: float = 16.0) -> np.ndarray:
    """Returns sum_j C[0][j] sigma/2 (gamma2 - g_j) over the g_j in [0, gamma2],
    g_j = PhiInv(anchor's p) - PhiInv(p_j), with SciPy's PhiInv."""
    gaps = norm.ppf(anchor_probs)[:, None] - norm.ppf(PAIR_PROBS[:, 1:3].numpy())
    inside = (gaps >= 0) & (gaps <= gamma2)
    return (np.array([10.0, 2.0]) * np.where(inside, SIGMA / 2 * (gamma2 - gaps), 0.0)).sum(1)


def test_pair_gap_top_starts_the_gaps_from_the_top_class_and_label_from_y():
    y = torch.zeros(3, dtype=torch.long)
    assert top_classes(PAIR_PROBS).tolist() == [0, 1, 3]
    label = pairwise_cost_hinge(PAIR_PROBS, y, PAIR_COSTS, SIGMA, 0.0, 16.0)
    top = pairwise_cost_hinge(PAIR_PROBS, top_classes(PAIR_PROBS), PAIR_COSTS, SIGMA, 0.0, 16.0)
    torch.testing.assert_close(label, torch.tensor(_pair_hinges_by_hand(PAIR_PROBS[:, 0].numpy())))
    torch.testing.assert_close(top, torch.tensor(
        _pair_hinges_by_hand(PAIR_PROBS.max(1).values.numpy())))
    assert label[0] == top[0]  # the top class is y: one and the same gap
    assert not torch.isclose(label[1], top[1]) and not torch.isclose(label[2], top[2])
    # Costly class 1 on top: its own gap is 0 under "top", the hinge at its maximum.
    assert top[1] >= 10 * SIGMA / 2 * 16.0


def test_margin_cs_pair_gap_changes_the_gradient_exactly_where_the_top_class_is_not_y():
    y = torch.zeros(3, dtype=torch.long)
    grads, totals = {}, {}
    for pair_gap in ("label", "top"):
        stub = FixedLogits(PAIR_PROBS.log().float())  # softmax(logits) = PAIR_PROBS at beta 1
        parts = margin_cs(stub, torch.zeros(3, 4), y, PAIR_COSTS, SIGMA,
                          torch.Generator().manual_seed(0), num_noise=1, beta=1.0, lam1=0.0,
                          lam2=1.0, pair_gap=pair_gap)
        parts.total.backward()
        grads[pair_gap], totals[pair_gap] = stub.logits.grad, parts.robust_sensitive
    torch.testing.assert_close(grads["label"][0], grads["top"][0])
    for row in (1, 2):
        assert not torch.allclose(grads["label"][row], grads["top"][row], atol=1e-4)
    expected = {"label": _pair_hinges_by_hand(PAIR_PROBS[:, 0].numpy()).mean(),
                "top": _pair_hinges_by_hand(PAIR_PROBS.max(1).values.numpy()).mean()}
    for pair_gap, value in expected.items():
        torch.testing.assert_close(totals[pair_gap], torch.tensor(value, dtype=torch.float32))


def test_pair_gap_top_gives_no_gradient_to_a_pair_whose_costly_class_is_on_top():
    # Only the pair 0 -> 1, and class 1 on top: "top" has the gap 0 (constant), while the signed
    # window under "label" pulls class 1 back.
    cost_rows = torch.tensor([[0.0, 10.0, 0.0, 0.0]])
    for pair_gap, lower, pulled in [("top", -16.0, False), ("label", -16.0, True)]:
        stub = FixedLogits(PAIR_PROBS[1:2].log().float())
        probs = noisy_probabilities(stub.logits, num_noise=1, beta=1.0)
        anchor = top_classes(probs) if pair_gap == "top" else torch.tensor([0])
        pairwise_cost_hinge(probs, anchor, cost_rows, SIGMA, lower, 16.0).sum().backward()
        assert (stub.logits.grad.abs().sum() > 0) == pulled


def _smoothadv_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    # Two sensitive examples: a binary row and a row whose largest cost is 3.
    cost_rows = torch.zeros(6, 3)
    cost_rows[1, 0] = 1.0
    cost_rows[4, 2], cost_rows[4, 0] = 3.0, 1.0
    return model, x, y, cost_rows


def test_smoothadv_cs_reweight_is_smoothadvs_attack_with_cohen_r_weights():
    model, x, y, cost_rows = _smoothadv_setup()
    options = {"num_noise": 3, "steps": 3, "eps": 0.5}

    def total(objective, **kwargs):
        return objective(model, x, y, cost_rows, SIGMA, torch.Generator().manual_seed(5),
                         **options, **kwargs).total

    # By hand: the same draws, SmoothAdv's label attack, then w = 1, 1 + 0.5 * 1, 1 + 0.5 * 3.
    noise = SIGMA * torch.randn(18, 4, generator=torch.Generator().manual_seed(5))
    adversarial = smoothed_pgd_l2(model, x, noise, label_attack_gain(y), 0.5, steps=3)
    per_draw = F.cross_entropy(model(adversarial.repeat_interleave(3, 0) + noise),
                               y.repeat_interleave(3), reduction="none")
    weights = torch.tensor([1.0, 1.5, 1.0, 1.0, 2.5, 1.0])
    expected = (weights * per_draw.view(6, 3).mean(1)).mean()
    reweighted = total(smoothadv_cs, variant="reweight", weight=1.5)
    torch.testing.assert_close(reweighted, expected)
    # Weight 1 is SmoothAdv itself (same points, same loss); the weights bite; and the cost
    # attack moves the sensitive examples elsewhere.
    torch.testing.assert_close(total(smoothadv_cs, variant="reweight", weight=1.0),
                               total(smoothadv))
    assert not torch.isclose(reweighted, total(smoothadv))
    assert not torch.isclose(total(smoothadv_cs, variant="attack"), total(smoothadv))


def test_variant_hyperparameters_belong_to_their_method_and_variant():
    assert resolve_hparams("smoothadv-cs")["variant"] == "attack"
    assert resolve_hparams("margin-cs")["pair_gap"] == "label"
    assert resolve_hparams("smoothadv-cs", {"variant": "reweight", "weight": 2})["weight"] == 2.0
    with pytest.raises(ValueError, match="reads weight only with variant = 'reweight'; got "
                                         "variant = 'attack'"):
        resolve_hparams("smoothadv-cs", {"weight": 2.0})
    with pytest.raises(ValueError, match="method 'smoothadv' has no hyperparameter 'variant'"):
        resolve_hparams("smoothadv", {"variant": "reweight"})
    with pytest.raises(ValueError, match="method 'csrs' has no hyperparameter 'pair_gap'"):
        resolve_hparams("csrs", {"pair_gap": "top"})
    with pytest.raises(ValueError, match="hyperparameter weight must be >= 1; got 0.5"):
        resolve_hparams("smoothadv-cs", {"variant": "reweight", "weight": 0.5})


def test_every_hyperparameter_has_a_train_flag():
    from csrs.cli import _METHOD_FLAGS

    flagged = {name for _, name, _, _ in _METHOD_FLAGS}
    assert set().union(*map(set, METHOD_DEFAULTS.values())) <= flagged
