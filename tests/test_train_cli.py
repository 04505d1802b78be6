"""`csrs train` from the command line: one schema for its flags, the experiment's [train] table
and the torchrun command line; re-running the same command resumes."""

import argparse
import dataclasses

import pytest
import torch

from csrs import training
from csrs.checkpoint import load_checkpoint
from csrs.cli import build_parser, main
from csrs.training_config import TrainConfig, train_arguments, train_options

ARGV = ["train", "--dataset", "digits", "--method", "cohen", "--arch", "linear", "--sigma",
        "0.5", "--lr", "0.05", "--milestones", "1", "--epochs", "2"]


def _weights(path):
    return load_checkpoint(path).model_state


def test_rerunning_an_interrupted_command_resumes_it(tmp_path, monkeypatch, capsys):
    whole, cut = tmp_path / "whole.pt", tmp_path / "cut.pt"
    assert main([*ARGV, "--out", str(whole), "--quiet"]) == 0
    save = training.save_checkpoint

    def save_then_interrupt(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_checkpoint", save_then_interrupt)
    assert main([*ARGV, "--out", str(cut)]) == 2
    assert "re-run the same command to resume" in capsys.readouterr().err
    assert load_checkpoint(cut).meta["epoch"] == 1
    monkeypatch.undo()

    assert main([*ARGV, "--out", str(cut)]) == 0
    captured = capsys.readouterr()
    assert f"resuming '{cut}' from epoch 1 of 2" in captured.err
    assert "for 2 epochs (resumed from epoch 1)" in captured.out
    for name, value in _weights(whole).items():
        assert torch.equal(value, _weights(cut)[name]), name

    assert main([*ARGV, "--out", str(cut), "--quiet"]) == 0
    assert "already trained: epoch 2 of 2; nothing to do" in capsys.readouterr().out


def test_restart_trains_over_a_checkpoint_and_fewer_epochs_are_refused(tmp_path, capsys):
    out = str(tmp_path / "m.pt")
    assert main([*ARGV, "--out", out, "--quiet"]) == 0
    first = _weights(out)
    fewer = [*ARGV[:-1], "1", "--out", out, "--quiet"]
    assert main(fewer) == 2
    err = capsys.readouterr().err.strip()
    assert "holds epoch 2 and 1 epochs were asked for" in err and len(err.splitlines()) == 1
    assert main([*fewer, "--restart"]) == 0
    assert load_checkpoint(out).meta["epoch"] == 1
    assert main([*ARGV, "--out", out, "--quiet", "--resume"]) == 0  # old scripts: still resume
    assert "(resumed from epoch 1)" in capsys.readouterr().out
    for name, value in first.items():
        assert torch.equal(value, _weights(out)[name]), name
    assert main([*ARGV, "--out", out, "--resume", "--restart"]) == 2
    assert "contradict" in capsys.readouterr().err


def _train_parser() -> argparse.ArgumentParser:
    commands = next(action for action in build_parser()._actions
                    if isinstance(action, argparse._SubParsersAction))
    return commands.choices["train"]


def test_the_torchrun_command_line_recreates_every_setting():
    """A config whose every setting differs from its default goes through `csrs train`'s own
    parser unchanged, so a launched run trains exactly what the experiment planned."""
    config = TrainConfig(
        dataset="cifar10", method="margin-cs", sigma=0.125, epochs=7, out="runs/m.pt",
        cost="3->5:10,8:2.5", arch="cifar-resnet20", data_dir="data", image_size=24,
        batch_size=48, optimizer="adam", lr=0.0123456789, momentum=0.8, weight_decay=1e-5,
        milestones=(2, 5), lr_decay=0.3, warmup_epochs=2, val_fraction=0.15, seed=3,
        data_seed=4, device="cuda:1", amp=True, restart=True,
        hparams={"lam2": 0.03, "num_noise": 8, "window": "signed"})
    defaults = {name: default for name, _, default in train_options()}
    for name, _, _ in train_options():
        assert getattr(config, name) != defaults[name], f"the test leaves {name} at its default"
    args = _train_parser().parse_args(train_arguments(config))
    settings = {name: getattr(args, name) for name, _, _ in train_options()}
    hparams = {name: getattr(args, name) for name in config.hparams}
    assert TrainConfig(**settings, hparams=hparams) == config


@pytest.mark.parametrize("command", ["train", "experiment", "demo"])
def test_every_option_has_help_that_shows_its_default(command):
    commands = next(action for action in build_parser()._actions
                    if isinstance(action, argparse._SubParsersAction))
    for action in commands.choices[command]._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        text = action.help or ""
        assert text, f"{action.option_strings[0]} has no help"
        assert "default" in text or "required" in text, f"{action.option_strings[0]}: {text}"


@pytest.mark.parametrize("flags, fragment", [
    (["--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
    (["--milestones", "3,x"], "argument --milestones: expected a list of epochs"),
    (["--optimizer", "rmsprop"], "expected one of sgd, adam, got 'rmsprop'"),
    (["--lr", "nan"], "argument --lr: expected a number > 0, got 'nan'"),
])
def test_a_bad_flag_is_one_line_naming_it(tmp_path, capsys, flags, fragment):
    argv = [*ARGV, "--out", str(tmp_path / "m.pt"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1


def test_sigma_is_required_except_for_zhang_evans(tmp_path, capsys):
    argv = [a for a in ARGV if a not in ("--sigma", "0.5")]
    assert main([*argv, "--out", str(tmp_path / "m.pt")]) == 2
    assert "sigma is required for method 'cohen'" in capsys.readouterr().err
    config = TrainConfig(dataset="digits", method="zhang-evans", epochs=1, out=tmp_path / "z")
    assert config.sigma == 0.5 and dataclasses.replace(config).sigma == 0.5
