"""SmoothAdv's attack on the soft smoothed classifier: it climbs its objective in the l2 ball."""

import torch
import torch.nn.functional as F
from torch import nn

from csrs.attacks import smoothed_log_probs, smoothed_pgd_l2

SIGMA = 0.5


def label_attack_gain(y):
    """SmoothAdv's attack objective: the smoothed classifier's NLL of the label."""
    return lambda log_probs: -log_probs.gather(1, y[:, None]).squeeze(1)


def _setup(num_noise=4):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    x, y = torch.rand(12, 1, 4, 4), torch.arange(12) % 5
    noise = SIGMA * torch.randn(12 * num_noise, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    return model, x, y, noise


def test_smoothed_log_probs_are_the_log_of_the_mean_softmax_over_the_draws():
    model, x, _, noise = _setup()
    inputs = x.repeat_interleave(4, 0) + noise
    expected = F.softmax(model(inputs), 1).view(12, 4, 5).mean(1).log()
    torch.testing.assert_close(smoothed_log_probs(model, inputs, 4), expected)


def test_each_step_raises_the_attacked_nll_and_stays_in_the_l2_ball():
    model, x, y, noise = _setup()
    gain = label_attack_gain(y)

    def attacked(point):
        return gain(smoothed_log_probs(model, point.repeat_interleave(4, 0) + noise, 4))

    eps, before = 0.3, attacked(x)
    previous = before
    for steps in (1, 2, 4):
        adversarial = smoothed_pgd_l2(model, x, noise, gain, eps, steps=steps)
        assert ((adversarial - x).flatten(1).norm(dim=1) <= eps + 1e-6).all()
        after = attacked(adversarial).detach()
        assert (after > before).all()
        assert after.mean() >= previous.mean() - 1e-6  # more steps, no weaker on average
        previous = after
    assert torch.equal(smoothed_pgd_l2(model, x, noise, gain, 0.0, steps=3), x)


def test_the_attack_uses_the_same_draws_at_every_step_and_returns_a_detached_point():
    model, x, y, noise = _setup(num_noise=2)
    gain = label_attack_gain(y)
    first = smoothed_pgd_l2(model, x, noise, gain, 0.4, steps=3)
    again = smoothed_pgd_l2(model, x, noise, gain, 0.4, steps=3)
    assert torch.equal(first, again) and not first.requires_grad
    moved = smoothed_pgd_l2(model, x, noise + 0.3, gain, 0.4, steps=3)
    assert not torch.equal(first, moved)  # the draws, not fresh noise, decide the direction
