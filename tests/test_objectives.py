"""The training objectives on hand-made logits and probabilities with known gaps."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

from csrs.costs import CostMatrix
from csrs.objectives import (
    METHOD_DEFAULTS,
    OBJECTIVES,
    cohen,
    cohen_r,
    cost_sensitive_classes,
    cost_sensitive_hinge,
    csrs,
    macer,
    noisy_probabilities,
    phi_inv_gap,
    resolve_hparams,
    standard_classes,
    standard_hinge,
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
    assert resolve_hparams("macer", {"lam": 4})["lam"] == 4.0
    with pytest.raises(ValueError, match="'gamma'"):
        resolve_hparams("csrs", {"gamma": 1.0})
    with pytest.raises(ValueError, match="0.5"):
        resolve_hparams("cohen-r", {"weight": 0.5})
    with pytest.raises(ValueError, match="2.5"):
        resolve_hparams("macer", {"num_noise": 2.5})
    with pytest.raises(ValueError, match="'smooth'"):
        resolve_hparams("smooth")
