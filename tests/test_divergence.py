"""Training that diverges stops with one line and keeps the last finite checkpoint; a diverged
candidate of a tuning grid is dropped from the experiment, and the report says so."""

import pytest

from csrs.cli import main
from csrs.experiment import parse_config, run_experiment
from csrs.training import TrainConfig, TrainingDiverged, train


def test_a_diverging_run_writes_no_nan_checkpoint(tmp_path):
    out = tmp_path / "m.pt"
    config = TrainConfig(dataset="digits", method="cohen", sigma=0.5, epochs=2, out=out,
                         arch="linear", lr=1e30)
    with pytest.raises(TrainingDiverged, match="cohen diverged in epoch 1 .*nothing was written"):
        train(config, progress=False)
    assert not out.exists()


def test_cli_says_so_in_one_line(tmp_path, capsys):
    assert main(["train", "--dataset", "digits", "--method", "cohen", "--arch", "linear",
                 "--sigma", "0.5", "--epochs", "1", "--lr", "1e30", "--quiet",
                 "--out", str(tmp_path / "m.pt")]) == 2
    message = capsys.readouterr().err.strip()
    assert "diverged in epoch 1" in message and "\n" not in message


def test_a_diverged_grid_candidate_is_dropped_and_stays_dropped(tmp_path, monkeypatch):
    config = parse_config({
        "name": "tiny", "sigma": 0.5, "eps": 0.25, "threads": 1,
        "settings": [{"dataset": "digits", "cost": "3->5:10,8:2", "arch": "mlp"}],
        "train": {"epochs": 1, "lr": 0.05},
        "methods": {"cohen": {}, "margin-cs": {"num_noise": 2, "lam2": [0.1, 1e30]}},
        "certify": {"n0": 10, "n": 40, "alpha": 0.01, "max_examples": 10},
        "tuning": {"n0": 10, "n": 40, "max_examples": 10},
    })
    summary = run_experiment(config, tmp_path, quiet=True)
    chosen = {row["method"]: row["hparams"] for row in summary}
    assert "lam2=0.1" in chosen["margin-cs"]
    assert "lam2=1e+30" in (tmp_path / "diverged.csv").read_text()
    assert "## Dropped candidates" in (tmp_path / "report.md").read_text()
    # Run again: the diverged candidate is not trained again (its marker keeps it dropped).
    from csrs import training

    def refuse(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(training, "train", refuse)
    assert run_experiment(config, tmp_path, quiet=True) == summary
