"""The training loop on a small subset of the bundled digits: learning, checkpoints, resume."""

import dataclasses
import re

import pytest
import torch
from torch.utils.data import Subset

from csrs.checkpoint import load_checkpoint
from csrs.costs import CostMatrix
from csrs.models import build_model
from csrs.objectives import METHOD_DEFAULTS, OBJECTIVES
from csrs.training import TrainConfig, default_milestones, train

META_FIELDS = ("arch", "num_classes", "class_names", "input_shape", "mean", "std", "dataset",
               "data_dir", "data_options", "sigma", "cost_matrix", "cost_spec", "method",
               "hparams", "epoch", "epochs", "seed")


@pytest.fixture(scope="module")
def small_digits(digits):
    """The digits splits with the first 128 training examples only."""
    return dataclasses.replace(digits, train=Subset(digits.train, range(128)))


def config(tmp_path, **changes) -> TrainConfig:
    settings = {"dataset": "digits", "method": "csrs", "sigma": 0.25, "epochs": 2,
                "out": tmp_path / "model.pt", "arch": "mlp", "cost": "3->5,8", "batch_size": 32,
                "hparams": {"num_noise": 4}} | changes
    return TrainConfig(**settings)


@pytest.mark.parametrize("method", sorted(OBJECTIVES))
def test_training_reduces_each_methods_loss(tmp_path, small_digits, method):
    hparams = {"num_noise": 4} if "num_noise" in METHOD_DEFAULTS[method] else {}
    cfg = config(tmp_path, method=method, epochs=3, lr=0.05, milestones=(), hparams=hparams)
    x = torch.stack([small_digits.train[i][0] for i in range(64)])
    y = torch.tensor([small_digits.train[i][1] for i in range(64)])
    costly = torch.tensor(CostMatrix.parse(cfg.cost, 10).mask.copy())[y]

    def loss(model):
        noise = torch.Generator().manual_seed(123)
        return OBJECTIVES[method](model, x, y, costly, cfg.sigma, noise, **hparams).total.item()

    torch.manual_seed(cfg.seed)  # the loop's initialisation
    initial = build_model("mlp", num_classes=10, input_shape=small_digits.input_shape)
    trained = train(cfg, splits=small_digits, progress=False).model
    assert loss(trained) < loss(initial)


def test_checkpoint_carries_everything_to_rebuild_the_model(tmp_path, small_digits):
    result = train(config(tmp_path, epochs=1), splits=small_digits, progress=False)
    checkpoint = load_checkpoint(result.path)
    assert set(META_FIELDS) <= set(checkpoint.meta)
    assert checkpoint.meta["epoch"] == 1 and checkpoint.meta["method"] == "csrs"
    assert checkpoint.cost_matrix() == CostMatrix.parse("3->5,8", 10)
    assert checkpoint.meta["hparams"]["gamma2"] == 16.0
    assert checkpoint.meta["hparams"]["num_noise"] == 4
    assert {"optimizer", "scheduler", "shuffle_generator", "noise_generator"} \
        <= set(checkpoint.training)
    x = torch.stack([small_digits.test[i][0] for i in range(16)])
    with torch.no_grad():
        assert torch.equal(checkpoint.build_model()(x), result.model.eval()(x))


def test_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(tmp_path, small_digits):
    full = train(config(tmp_path / "full"), splits=small_digits, progress=False)

    def interrupt(metrics):
        raise KeyboardInterrupt

    cut = config(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        train(cut, splits=small_digits, progress=False, log=interrupt)
    assert load_checkpoint(cut.out).meta["epoch"] == 1
    resumed = train(dataclasses.replace(cut, resume=True), splits=small_digits, progress=False)
    assert resumed.epochs == 2 and len(resumed.history) == 2
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in full.history]


def test_a_run_extended_by_resume_matches_one_with_that_many_epochs(tmp_path, small_digits):
    full = train(config(tmp_path / "full", milestones=(1,)), splits=small_digits, progress=False)
    short = config(tmp_path / "short", epochs=1, milestones=(1,))
    train(short, splits=small_digits, progress=False)
    extended = train(dataclasses.replace(short, epochs=2, resume=True), splits=small_digits,
                     progress=False)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, extended.model.state_dict()[key]), key
    # Extended under the default schedule, the new epochs follow the schedule of the new length.
    once = config(tmp_path / "once", epochs=1)
    train(once, splits=small_digits, progress=False)
    thrice = train(dataclasses.replace(once, epochs=3, resume=True), splits=small_digits,
                   progress=False)
    assert default_milestones(3) == (1, 3)
    assert [h["lr"] for h in thrice.history[1:]] == pytest.approx([1e-3, 1e-3])


def test_resume_refuses_a_different_config_and_starts_fresh_without_checkpoint(
        tmp_path, small_digits):
    cfg = config(tmp_path, epochs=1, resume=True)
    assert train(cfg, splits=small_digits, progress=False).epochs == 1
    with pytest.raises(ValueError, match="sigma is 0.25.*0.5"):
        train(dataclasses.replace(cfg, sigma=0.5), splits=small_digits, progress=False)
    with pytest.raises(ValueError, match="cost is '3->5,8'"):
        train(dataclasses.replace(cfg, cost="3"), splits=small_digits, progress=False)


def test_bf16_autocast_trains_on_cpu(tmp_path, small_digits):
    result = train(config(tmp_path, epochs=1, amp=True), splits=small_digits, progress=False)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.history[0].values())


def test_default_schedule_is_macers_scaled():
    assert default_milestones(440) == (200, 400)
    assert default_milestones(22) == (10, 20)


@pytest.mark.parametrize("field, value", [
    ("method", "smooth"), ("sigma", 0.0), ("sigma", -1.0), ("epochs", 0), ("batch_size", 0),
    ("arch", "vgg99"), ("cost", "3->12"), ("hparams", {"gamma": 8.0}), ("val_fraction", 1.0),
    ("milestones", (-3,)), ("device", "gpu"),
])
def test_bad_settings_raise_one_line_naming_the_value(tmp_path, small_digits, field, value):
    shown = "gamma" if field == "hparams" else str(value).strip("()").rstrip(",")
    with pytest.raises(ValueError, match=re.escape(shown)) as error:
        train(config(tmp_path, **{field: value}), splits=small_digits, progress=False)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "model.pt").exists()
