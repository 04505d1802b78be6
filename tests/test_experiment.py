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
    assert settings == {("digits", "3"), ("digits", "3->5:10,8:4"),
                        ("breast-cancer", "malignant->benign"),
                        ("breast-cancer", "malignant->benign:10;benign->malignant:1")}
    assert {row["method"] for row in rows} == {"cohen", "cohen-r", "macer", "csrs", "margin-cs",
                                               "smoothadv", "smoothadv-cs"}
    for row in rows:  # every row has its clean and certified cost at the demo's eps
        assert float(row["clean_cost"]) >= 0 and float(row["cert_cost"]) >= 0
    recall = [row["recall"] for row in rows if row["dataset"] == "breast-cancer"]
    assert recall and all(0 <= float(value) <= 1 for value in recall)
    report = (quick_demo / "report.md").read_text()
    assert "| CS-RS |" in report and "| Margin-CS |" in report and "Table 4" in report
    assert "claim hold" in report and "2025 claim hold" in report and "Cost_cert" in report
    for name in ("curves_digits_3.png", "r1_vs_r2_digits_3.png", "cost_digits_3to5x10_8x4.png",
                 "tradeoff.png"):
        assert (quick_demo / name).read_bytes().startswith(b"\x89PNG")


def test_demo_config_is_valid_and_fair():
    config = demo_config()
    assert set(config.methods) == {"cohen", "cohen-r", "macer", "csrs", "margin-cs",
                                   "smoothadv", "smoothadv-cs"}
    assert {(s.dataset, s.cost) for s in config.settings} >= {
        ("breast-cancer", "malignant->benign:10;benign->malignant:1")}
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
    ({"methods": {"nope@v2": {}}}, "unknown method 'nope'"),
    ({"methods": {"csrs@": {}}}, "variant 'csrs@' needs a name"),
    ({"methods": {"csrs@v2": {"weight": 1.2}}}, "methods.csrs@v2: unknown key 'weight'"),
    ({"methods": {"cohen-r@g": {"weighting": "groups"}}},
     "methods.cohen-r@g: hyperparameter weighting must be one of example, group"),
    ({"certify": {"adaptive_skip": 0}}, "certify: adaptive_skip must be an integer >= 1"),
    ({"certify": {"adaptive_max_examples": 0}}, "adaptive_max_examples must be an integer"),
    ({"certify": {"all_candidates": "yes"}}, "all_candidates must be true or false"),
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


# The paper's protocol on a tiny config: variants, the sequential test on the whole test split
# beside fixed n on a subset, and every candidate certified on the test split.
PROTOCOL = {**TINY,
            "settings": [{"dataset": "breast-cancer", "cost": "malignant->benign",
                          "arch": "linear"}],
            "train": {"epochs": 1, "lr": 0.05},
            "methods": {"cohen": {}, "cohen-r": {"weight": [1.2, 2.0]},
                        "cohen-r@group": {"weighting": "group"},
                        "csrs@lam3": {"lam": 3.0, "num_noise": 2}},
            "certify": {"n0": 10, "n": 60, "alpha": 0.01, "skip": 3, "max_examples": 20,
                        "adaptive_n": 100, "all_candidates": True}}


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("protocol")
    summary = run_experiment(parse_config(PROTOCOL), out, quiet=True)
    return out, {row["method"]: row for row in summary}


def test_variants_train_as_their_base_method_and_report_under_their_own_name(protocol_run):
    from csrs.checkpoint import load_checkpoint

    out, summary = protocol_run
    assert list(summary) == ["cohen", "cohen-r", "cohen-r@group", "csrs@lam3"]
    folder = out / "checkpoints" / "breast-cancer_malignanttobenign"
    lam3 = load_checkpoint(folder / "csrs@lam3-lam-3_num_noise-2-s0.pt")
    assert lam3.meta["method"] == "csrs" and lam3.meta["hparams"]["lam"] == 3.0
    group = load_checkpoint(folder / "cohen-r@group-weighting-group-s0.pt")
    assert group.meta["method"] == "cohen-r" and group.meta["hparams"]["weighting"] == "group"
    assert summary["csrs@lam3"]["hparams"] == "lam=3, num_noise=2"
    report = (out / "report.md").read_text()
    assert "| cohen-r@group |" in report and "| csrs@lam3 |" in report


def test_tables_decide_the_whole_test_split_while_radii_come_from_a_subset(protocol_run):
    from csrs.data import load_dataset
    from csrs.results import read_results

    out, summary = protocol_run
    test_size = len(load_dataset("breast-cancer").test)
    for row in summary.values():
        assert row["examples"] == 20  # every 3rd test example, at most 20: the curves
        assert row["adaptive_examples"] == test_size  # the sequential test: all of them
    decided = read_results(out / "results" / "breast-cancer_malignanttobenign" /
                           "cohen-s0-adaptive.tsv")
    assert sorted(int(row["idx"]) for row in decided) == list(range(test_size))
    report = (out / "report.md").read_text()
    assert "every 3rd test example, at most 20 (20 examples)" in report
    assert f"on all {test_size} test examples" in report


def test_all_candidates_certifies_every_candidate_on_the_test_split(protocol_run):
    out, summary = protocol_run
    with open(out / "candidates_test.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["method"], row["hparams"]) for row in rows] == [
        ("cohen", ""), ("cohen-r", "weight=1.2"), ("cohen-r", "weight=2"),
        ("cohen-r@group", "weighting=group"), ("csrs@lam3", "lam=3, num_noise=2")]
    chosen = [row for row in rows if row["chosen"] == "True"]
    assert [row["method"] for row in chosen] == list(summary)  # one chosen per method
    for row in chosen:  # the chosen candidate's test numbers are the summary's
        assert float(row["rob_cs"]) == pytest.approx(summary[row["method"]]["rob_cs"], abs=1e-4)
        assert float(row["adaptive_acc"]) == pytest.approx(
            summary[row["method"]]["adaptive_acc"], abs=1e-4)
    assert all(int(row["examples"]) == 20 for row in rows)
    for weight in ("1.2", "2"):
        assert (out / "results" / "breast-cancer_malignanttobenign" /
                f"cohen-r-weight-{weight}-s0.tsv").is_file()
    assert "Every candidate on the test split" in (out / "report.md").read_text()
    assert (out / "tradeoff_test.png").read_bytes().startswith(b"\x89PNG")
