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
from csrs.training import (
    TrainConfig,
    _milestones,
    default_milestones,
    epoch_hparams,
    train,
    training_defaults,
)

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


def test_training_again_resumes_and_ends_bitwise_equal_to_an_uninterrupted_run(
        tmp_path, small_digits):
    full = train(config(tmp_path / "full"), splits=small_digits, progress=False)

    def interrupt(metrics):
        raise KeyboardInterrupt

    cut = config(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        train(cut, splits=small_digits, progress=False, log=interrupt)
    assert load_checkpoint(cut.out).meta["epoch"] == 1
    resumed = train(cut, splits=small_digits, progress=False)  # the same config, once more
    assert (resumed.start_epoch, resumed.epochs, len(resumed.history)) == (1, 2, 2)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in full.history]
    again = train(cut, splits=small_digits, progress=False)  # finished: nothing to train
    assert again.start_epoch == again.epochs == 2
    assert load_checkpoint(cut.out).meta["epoch"] == 2


def test_a_checkpoint_never_goes_back_to_an_earlier_epoch_unless_restarted(
        tmp_path, small_digits):
    cfg = config(tmp_path)
    first = train(cfg, splits=small_digits, progress=False)
    with pytest.raises(ValueError, match="holds epoch 2 and 1 epochs were asked for"):
        train(dataclasses.replace(cfg, epochs=1), splits=small_digits, progress=False)
    assert load_checkpoint(cfg.out).meta["epoch"] == 2
    redone = train(dataclasses.replace(cfg, restart=True), splits=small_digits, progress=False)
    assert redone.start_epoch == 0 and len(redone.history) == 2
    for key, value in first.model.state_dict().items():  # from scratch: the same weights again
        assert torch.equal(value, redone.model.state_dict()[key]), key
    short = train(dataclasses.replace(cfg, epochs=1, restart=True), splits=small_digits,
                  progress=False)
    assert short.start_epoch == 0 and load_checkpoint(cfg.out).meta["epoch"] == 1


def test_a_run_extended_by_resume_matches_one_with_that_many_epochs(tmp_path, small_digits):
    full = train(config(tmp_path / "full", milestones=(1,)), splits=small_digits, progress=False)
    short = config(tmp_path / "short", epochs=1, milestones=(1,))
    train(short, splits=small_digits, progress=False)
    extended = train(dataclasses.replace(short, epochs=2), splits=small_digits, progress=False)
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, extended.model.state_dict()[key]), key
    # Extended under the default schedule, the new epochs follow the schedule of the new length.
    once = config(tmp_path / "once", epochs=1)
    train(once, splits=small_digits, progress=False)
    thrice = train(dataclasses.replace(once, epochs=3), splits=small_digits, progress=False)
    assert default_milestones(3) == (1, 3)
    assert [h["lr"] for h in thrice.history[1:]] == pytest.approx([1e-3, 1e-3])


def test_resuming_refuses_a_checkpoint_of_other_settings(tmp_path, small_digits):
    cfg = config(tmp_path, epochs=1)
    assert train(cfg, splits=small_digits, progress=False).epochs == 1
    with pytest.raises(ValueError, match="sigma is 0.25.*0.5.*--restart"):
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
    ("milestones", (-3,)), ("device", "gpu"), ("optimizer", "rmsprop"),
])
def test_bad_settings_raise_one_line_naming_the_value(tmp_path, small_digits, field, value):
    shown = "gamma" if field == "hparams" else str(value).strip("()").rstrip(",")
    with pytest.raises(ValueError, match=re.escape(shown)) as error:
        train(config(tmp_path, **{field: value}), splits=small_digits, progress=False)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "model.pt").exists()


# ---------------------------------------------------------------------------------------------
# From the command line to the objective; schedules; per-method optimiser defaults


def _recording(monkeypatch, method):
    """Replaces the method's objective by one that records its arguments, then runs it."""
    calls = []
    objective = OBJECTIVES[method]

    def record(model, x, y, cost_rows, **kwargs):
        calls.append({"y": y, "cost_rows": cost_rows, **kwargs})
        return objective(model, x, y, cost_rows, **kwargs)

    monkeypatch.setitem(OBJECTIVES, method, record)
    return calls


def test_cli_flags_reach_the_objective_with_each_examples_cost_row(tmp_path, monkeypatch):
    from csrs.cli import main

    calls = _recording(monkeypatch, "margin-cs")
    out = tmp_path / "m.pt"
    assert main(["train", "--dataset", "digits", "--method", "margin-cs", "--sigma", "0.5",
                 "--cost", "3->5:10,8", "--epochs", "1", "--num-noise", "2", "--lam1", "0.5",
                 "--lam2", "7", "--gamma2", "12", "--ce", "smoothed", "--window", "signed",
                 "--out", str(out), "--quiet"]) == 0
    expected = {"num_noise": 2, "lam1": 0.5, "lam2": 7.0, "gamma2": 12.0, "ce": "smoothed",
                "window": "signed", "gamma1": 4.0, "beta": 16.0, "sigma": 0.5}
    assert all(call[key] == value for call in calls for key, value in expected.items())
    rows = torch.cat([call["cost_rows"] for call in calls])
    labels = torch.cat([call["y"] for call in calls])
    costs_of_3 = torch.zeros(10)
    costs_of_3[5], costs_of_3[8] = 10.0, 1.0
    assert (rows[labels == 3] == costs_of_3).all() and (rows[labels != 3] == 0).all()
    assert load_checkpoint(out).meta["hparams"]["window"] == "signed"


def test_cli_refuses_an_unknown_choice_in_one_line(tmp_path, capsys):
    from csrs.cli import main

    code = main(["train", "--dataset", "digits", "--method", "margin-cs", "--sigma", "0.5",
                 "--epochs", "1", "--window", "both", "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'both'" in err and "nonnegative, signed" in err


def test_robustness_weights_wait_for_the_warmup_and_eps_ramps_up_linearly():
    margin = {"lam1": 3.0, "lam2": 2.0, "gamma2": 16.0}
    assert epoch_hparams(margin, 0, 2) == {"lam1": 0.0, "lam2": 0.0, "gamma2": 16.0}
    assert epoch_hparams(margin, 2, 2) == margin
    ramp = [epoch_hparams({"eps": 0.5, "eps_warmup": 4, "steps": 2}, epoch, 0)["eps"]
            for epoch in range(6)]
    assert ramp == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5, 0.5])


def test_the_loop_trains_smoothadv_at_the_warmed_up_eps(tmp_path, small_digits, monkeypatch):
    calls = _recording(monkeypatch, "smoothadv")
    train(config(tmp_path, method="smoothadv", epochs=2, hparams={"num_noise": 2, "steps": 1,
                                                                   "eps": 0.4, "eps_warmup": 2}),
          splits=small_digits, progress=False)
    per_epoch = len(calls) // 2
    assert [call["eps"] for call in calls] == pytest.approx([0.2] * per_epoch + [0.4] * per_epoch)


def test_zhang_evans_trains_with_wong_and_kolters_adam_unless_told_otherwise(
        tmp_path, small_digits):
    defaults = TrainConfig(dataset="digits", method="zhang-evans", sigma=0.5, epochs=40,
                           out=tmp_path / "ze.pt")
    assert (defaults.optimizer, defaults.lr, defaults.batch_size, defaults.weight_decay,
            defaults.lr_decay) == ("adam", 1e-3, 50, 0.0, 0.5)
    assert _milestones(defaults, {"eps_warmup": 5}) == (15, 25, 35)  # halved after the warm-up
    assert training_defaults("zhang-evans", "sgd") | {"batch_size": 50} == {
        "optimizer": "sgd", "lr": 0.01, "weight_decay": 5e-4, "batch_size": 50, "lr_decay": 0.5}
    told = TrainConfig(dataset="digits", method="zhang-evans", sigma=0.5, epochs=1,
                       out=tmp_path / "sgd.pt", optimizer="sgd", lr=0.05)
    assert (told.optimizer, told.lr, told.weight_decay) == ("sgd", 0.05, 5e-4)
    others = TrainConfig(dataset="digits", method="margin-cs", sigma=0.5, epochs=1, out=tmp_path)
    assert (others.optimizer, others.lr, others.batch_size) == ("sgd", 0.01, 64)

    result = train(config(tmp_path, method="zhang-evans", arch="convex-mlp", epochs=1, lr=None,
                          batch_size=None, hparams={}), splits=small_digits, progress=False)
    checkpoint = load_checkpoint(result.path)
    assert checkpoint.meta["hparams"]["optimizer"] == "adam"
    assert all("exp_avg" in state for state in checkpoint.training["optimizer"]["state"].values())
