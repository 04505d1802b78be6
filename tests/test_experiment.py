"""Experiments and the demo: the pipeline end to end, config errors, resuming."""

import csv

import pytest

from csrs.cli import main
from csrs.experiment import demo_config, parse_config, run_experiment

TINY = {
    "name": "tiny", "sigma": 0.5, "eps": 0.25, "threads": 1,
    "settings": [{"dataset": "digits", "cost": "3->5", "arch": "linear"}],
    "train": {"epochs": 2, "lr": 0.05},
    "methods": {"cohen": {}, "cohen-r": {"weight": [1.2, 2.0]}},
    "certify": {"n0": 10, "n": 60, "alpha": 0.01, "max_examples": 20},
    "tuning": {"n0": 10, "n": 40, "max_examples": 20},
}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    return out


def test_demo_writes_summary_report_and_plots(quick_demo, capsys):
    with open(quick_demo / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:7] == ["dataset", "cost", "method", "acc", "rob_cs", "rob_cs_std",
                                 "rob_non_std"]
    settings = {(row["dataset"], row["cost"]) for row in rows}
    assert settings == {("digits", "3"), ("digits", "3->5,8"),
                        ("breast-cancer", "malignant->benign")}
    assert {row["method"] for row in rows} == {"cohen", "cohen-r", "macer", "csrs"}
    report = (quick_demo / "report.md").read_text()
    assert "| CS-RS |" in report and "Table 4" in report and "claim hold" in report
    for name in ("curves_digits_3.png", "r1_vs_r2_digits_3to5_8.png", "tradeoff.png"):
        assert (quick_demo / name).read_bytes().startswith(b"\x89PNG")


def test_demo_config_is_valid_and_fair():
    config = demo_config()
    assert set(config.methods) == {"cohen", "cohen-r", "macer", "csrs"}
    assert config.sigma == config.eps == 0.5
    assert config.certify["alpha"] == 0.001 and config.certify["bounds"] == "sound"


@pytest.mark.parametrize("patch, message", [
    ({"colour": 1}, "unknown key 'colour'"),
    ({"methods": {"adversarial": {}}}, "unknown method 'adversarial'"),
    ({"methods": {"csrs": {"gamma3": 1}}}, "methods.csrs: unknown key 'gamma3'"),
    ({"settings": [{"dataset": "mnist", "cost": "3"}]}, "unknown dataset 'mnist'"),
    ({"settings": [{"dataset": "digits"}]}, "give 'cost'"),
    ({"certify": {"n_samples": 3}}, "certify: unknown key 'n_samples'"),
    ({"train": {"optimizer": "adam"}}, "train: unknown key 'optimizer'"),
])
def test_config_errors_name_the_bad_key(patch, message):
    with pytest.raises(ValueError, match=message):
        parse_config({**TINY, **patch})


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[methods.nope]\n[[settings]]\ndataset = "digits"\ncost = "3"\n')
    assert main(["experiment", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown method 'nope'" in err and len(err.splitlines()) == 1


def test_rerun_after_a_crash_skips_finished_runs_with_the_same_summary(tmp_path):
    config = parse_config(TINY)
    first = run_experiment(config, tmp_path, quiet=True)
    checkpoints = sorted((tmp_path / "checkpoints").rglob("*.pt"))
    stamps = {path: path.stat().st_mtime_ns for path in checkpoints}
    # A crash that lost the last test certification and a half-written candidate checkpoint.
    results = sorted((tmp_path / "results").rglob("*.tsv"))
    results[-1].unlink()
    checkpoints[-1].unlink()
    second = run_experiment(config, tmp_path, quiet=True)
    assert second == first
    for path in checkpoints[:-1]:
        assert path.stat().st_mtime_ns == stamps[path]  # not trained again
    assert checkpoints[-1].is_file()


def test_shipped_experiment_configs_parse():
    from pathlib import Path

    from csrs.experiment import load_config

    configs = sorted((Path(__file__).parent.parent / "experiments").rglob("*.toml"))
    assert len(configs) >= 12
    for path in configs:
        config = load_config(path)
        assert config.settings and config.methods


def test_grid_without_validation_split_is_refused():
    with pytest.raises(ValueError, match="needs a validation split"):
        parse_config({**TINY, "tuning": {"val_fraction": 0.0}})


def test_experiment_hands_its_runs_to_torchrun(tmp_path):
    """With a launcher, training (DDP over 2 processes) and test certification run under
    torchrun, and the experiment reads their checkpoint and results back."""
    import os
    import sys

    from csrs.checkpoint import load_checkpoint
    from csrs.results import read_results

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tiny = {**TINY, "methods": {"cohen": {}}, "tuning": {"val_fraction": 0.0},
            "train": {"epochs": 1, "lr": 0.05, "batch_size": 32}}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"]
    launched = run_experiment(parse_config({**tiny, "launcher": launcher}), tmp_path / "ddp",
                              quiet=True)
    checkpoint = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "digits" / "cohen-s0.pt")
    assert checkpoint.meta["epoch"] == 1 and checkpoint.meta["method"] == "cohen"
    rows = read_results(tmp_path / "ddp" / "results" / "digits_3to5" / "cohen-s0.tsv")
    assert len(rows) == launched[0]["examples"] == 20
