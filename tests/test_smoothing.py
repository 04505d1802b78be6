"""The smoothed classifier: exact radii of a linear classifier, noise, determinism."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from csrs import ABSTAIN, SmoothedClassifier
from csrs.smoothing import ESTIMATION, SELECTION


def _hyperplane_model(w: torch.Tensor, b: float) -> nn.Module:
    """Two classes: 0 where w.x + b > 0, else 1 (logits +-(w.x + b))."""
    layer = nn.Linear(w.numel(), 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([w, -w]))
        layer.bias.copy_(torch.tensor([b, -b]))
    return layer


@pytest.fixture(scope="module")
def hyperplane():
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(20, generator=generator)
    x = torch.rand(20, generator=generator)
    distance = 0.3
    b = distance * w.norm().item() - float(w @ x)  # puts x at exactly `distance` from it
    return _hyperplane_model(w, b), x, distance


def test_noise_has_the_stated_sigma(hyperplane):
    """Vote counts of a linear classifier match p = Phi(distance / sigma) within 4 binomial sd."""
    model, x, distance = hyperplane
    for sigma in (0.25, 0.5, 1.0):
        smoothed = SmoothedClassifier(model, 2, sigma)
        n = 20_000
        counts = smoothed.sample_counts(x, n, batch_size=4096)
        p = norm.cdf(distance / sigma)
        assert abs(counts[0] / n - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_linear_classifier_radius_is_its_distance_to_the_hyperplane(hyperplane):
    """The smoothed radius of a linear classifier is its distance to the hyperplane; at
    n = 100,000 the certified radius stays below it and within 10% of it."""
    model, x, distance = hyperplane
    smoothed = SmoothedClassifier(model, 2, 0.5)
    cert = smoothed.certify(x, costly=[1], n=100_000, alpha=0.001, batch_size=10_000)
    assert cert.prediction == 0 and cert.certified
    assert 0.9 * distance < cert.radius <= distance
    standard = smoothed.certify_standard(x, n=100_000, alpha=0.001, batch_size=10_000)
    assert 0.9 * distance < standard.radius <= distance


def test_predict_returns_the_smoothed_class_or_abstains(hyperplane):
    model, x, _ = hyperplane
    assert SmoothedClassifier(model, 2, 0.5).predict(x, n=2000, alpha=0.001) == 0
    # Far from the hyperplane at sigma 100 the vote is a coin flip: PREDICT must abstain.
    assert SmoothedClassifier(model, 2, 100.0).predict(x, n=500, alpha=0.001) == ABSTAIN


def test_same_counts_for_any_batch_size(hyperplane):
    model, x, _ = hyperplane
    smoothed = SmoothedClassifier(model, 2, 1.0, seed=7)
    reference = smoothed.sample_counts(x, 2500, batch_size=1000, index=4)
    for batch_size in (1, 37, 999, 4096):
        assert np.array_equal(smoothed.sample_counts(x, 2500, batch_size=batch_size, index=4),
                              reference)


def test_same_counts_whatever_the_packing_and_order():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    smoothed = SmoothedClassifier(model, 4, 0.5, seed=1, noise_block=300)
    inputs = torch.rand(5, 6)
    alone = np.stack([smoothed.sample_counts(inputs[i], 700, index=10 + i, batch_size=128)
                      for i in range(5)])
    order = [3, 0, 4, 1, 2]
    packed = smoothed.sample_counts_many(
        inputs, [(i, 10 + i, ESTIMATION, 700) for i in order], batch_size=1000)
    assert np.array_equal(packed, alone[order])


def test_noise_depends_on_seed_index_and_stage(hyperplane):
    model, x, _ = hyperplane
    smoothed = SmoothedClassifier(model, 2, 2.0, seed=0)
    base = smoothed.sample_counts(x, 3000, index=0)
    assert not np.array_equal(base, smoothed.sample_counts(x, 3000, index=1))
    assert not np.array_equal(base, smoothed.sample_counts(x, 3000, index=0, stage=SELECTION))
    other_seed = SmoothedClassifier(model, 2, 2.0, seed=1)
    assert not np.array_equal(base, other_seed.sample_counts(x, 3000, index=0))


def test_model_is_put_in_eval_mode():
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    model.train()
    smoothed = SmoothedClassifier(model, 2, 0.5)
    assert not smoothed.model.training
    first = smoothed.sample_counts(torch.zeros(3), 500)
    assert np.array_equal(first, smoothed.sample_counts(torch.zeros(3), 500))


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma": 0.0}, "sigma"), ({"sigma": 0.5, "noise_block": 0}, "noise_block"),
])
def test_bad_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SmoothedClassifier(nn.Linear(2, 2), 2, **kwargs)


def test_bad_sample_sizes(hyperplane):
    smoothed = SmoothedClassifier(hyperplane[0], 2, 0.5)
    with pytest.raises(ValueError, match="n0"):
        smoothed.certify(hyperplane[1], costly=[1], n0=0, n=10)
    with pytest.raises(ValueError, match="batch_size"):
        smoothed.sample_counts(hyperplane[1], 10, batch_size=0)

