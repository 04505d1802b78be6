"""Experiments and the demo: the pipeline end to end, config errors, resuming."""

import csv
import json

import pytest

from csrs.cli import main
from csrs.experiment import parse_config, run_experiment

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


def _by_hand(rows, eps):
    """Acc, Rob_cs and the clean cost of per-example rows, from the definitions: not through
    csrs.metrics."""
    correct = [int(r["correct"]) == 1 and int(r["predict"]) >= 0 and float(r["radius"]) > 0
               for r in rows]
    sensitive = [r for r in rows if r["sensitive"] == "1"]
    robust = [r["cs_predict"] != "" and int(r["cs_predict"]) >= 0 and r["cs_costly"] == "0"
              and float(r["cs_radius"]) > eps for r in sensitive]
    return {"acc": sum(correct) / len(rows),
            "rob_cs": sum(robust) / len(sensitive) if sensitive else None,
            "clean_cost": sum(float(r["clean_cost"]) for r in rows) / len(rows)}


@pytest.mark.slow
def test_demo_summary_holds_the_means_of_its_per_example_rows(quick_demo):
    from csrs.results import read_results

    with open(quick_demo / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:10] == ["dataset", "cost", "method", "seeds", "acc", "acc_sd",
                                  "rob_cs", "rob_cs_sd", "cert_cost", "cert_cost_sd"]
    settings = {(row["dataset"], row["cost"]) for row in rows}
    assert settings == {("digits", "3"), ("digits", "3->5:10,8:4"),
                        ("breast-cancer", "malignant->benign"),
                        ("breast-cancer", "malignant->benign:10;benign->malignant:1")}
    assert {row["method"] for row in rows} == {"cohen", "cohen-r", "macer", "csrs", "margin-cs",
                                               "smoothadv", "smoothadv-cs"}
    for row in rows:
        assert (row["seeds"], row["seed_values"], row["acc_sd"]) == ("1", "0", "")
        tested = read_results(quick_demo / row["results_files"])
        expected = _by_hand(tested, float(row["eps"]))
        assert int(row["examples"]) == len(tested)
        for metric, value in expected.items():
            assert float(row[metric]) == pytest.approx(value, abs=5e-5), (row["method"], metric)
    # The comparison above bites: some numbers are not zero.
    assert any(float(row["acc"]) > 0 for row in rows)
    assert any(float(row["clean_cost"]) > 0 for row in rows)


@pytest.mark.slow
def test_demo_report_says_what_it_summarises_and_draws_its_plots(quick_demo):
    report = (quick_demo / "report.md").read_text()
    assert "## What this report summarises" in report
    assert "`0:10;1`: malignant -> benign (10); benign -> malignant (1)" in report
    assert "n0 = 10, n = 50, alpha = 0.001, bounds 'sound'" in report
    assert "| CS-RS |" in report and "| Margin-CS |" in report and "Table 4" in report
    assert "claim hold" in report and "2025 claim hold" in report
    for name in ("curves_digits_3.png", "r1_vs_r2_digits_3.png", "cost_digits_3to5x10_8x4.png",
                 "tradeoff.png", "tradeoff_cost.png"):
        assert (quick_demo / name).read_bytes().startswith(b"\x89PNG")
    assert not (quick_demo / "cost_digits_3.png").exists()  # a 0/1 matrix: no cost curve
    with open(quick_demo / "candidates.csv") as handle:
        candidates = list(csv.DictReader(handle))
    chosen = [row for row in candidates if row["method"] == "cohen-r" and row["chosen"] == "True"]
    assert len(chosen) == 4 and all(row["reason"] for row in chosen)  # one per setting


def test_demo_help_names_what_demo_toml_runs(capsys, monkeypatch):
    import tomllib
    from importlib.resources import files

    demo = tomllib.loads(files("csrs").joinpath("demo.toml").read_text())
    monkeypatch.setenv("COLUMNS", "2000")  # no line breaks inside names
    assert main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    for method in demo["methods"]:
        assert method in text
    for setting in demo["settings"]:
        assert setting["dataset"] in text
        assert all(f"'{cost}'" in text for cost in setting["costs"])
    assert f"sigma = {demo['sigma']}" in text and f"n = {demo['certify']['n']}" in text
    assert f"{demo['train']['epochs']} epochs" in text


@pytest.mark.parametrize("patch, message", [
    ({"colour": 1}, "config: unknown key 'colour'"),
    ({"methods": {"adversarial": {}}}, "unknown method 'adversarial'"),
    ({"methods": {"csrs": {"gamma3": 1}}}, "methods.csrs: unknown key 'gamma3'"),
    ({"settings": [{"dataset": "mnist", "cost": "3"}]}, "unknown dataset 'mnist'"),
    ({"settings": [{"dataset": "digits", "cost": "3", "arch": "vgg99"}]},
     r"settings\[0\].arch: unknown architecture 'vgg99'"),
    ({"settings": [{"dataset": "digits"}]}, "give 'cost'"),
    ({"certify": {"n_samples": 3}}, "certify: unknown key 'n_samples'"),
    ({"certify": {"n0": 1.5}}, "certify.n0: expected an integer >= 1; got 1.5"),
    ({"certify": {"alpha": 1}}, r"certify.alpha: expected a number in \(0, 1\); got 1"),
    ({"train": {"epochs": 2, "optimiser": "adam"}}, "train: unknown key 'optimiser'"),
    ({"train": {"lr": 0.05}}, "train.epochs is missing: expected an integer >= 1"),
    ({"train": {"epochs": "30"}}, "train.epochs: expected an integer >= 1; got '30'"),
    ({"train": {"epochs": 2, "milestones": 5}}, "train.milestones: expected a list of epochs"),
    ({"train": {"epochs": 2, "optimizer": "rmsprop"}},
     "train.optimizer: expected one of sgd, adam; got 'rmsprop'"),
    ({"seeds": []}, "config.seeds: expected a non-empty list of integers; got \\[\\]"),
    ({"sigma": 0}, "config.sigma: expected a number > 0; got 0"),
    ({"tuning": {"select": "best"}}, "tuning.select: expected one of rob_cs, cert_cost"),
    ({"methods": {"nope@v2": {}}}, "unknown method 'nope'"),
    ({"methods": {"csrs@": {}}}, "variant 'csrs@' needs a name"),
    ({"methods": {"csrs@v2": {"weight": 1.2}}}, "methods.csrs@v2: unknown key 'weight'"),
    ({"methods": {"cohen-r@g": {"weighting": "groups"}}},
     "methods.cohen-r@g: hyperparameter weighting must be one of example, group"),
    ({"certify": {"adaptive_skip": 0}}, "certify.adaptive_skip: expected an integer >= 1"),
    ({"certify": {"adaptive_max_examples": 0}}, "adaptive_max_examples: expected an integer"),
    ({"certify": {"all_candidates": "yes"}}, "all_candidates: expected true or false"),
    ({"zhang_evans": {"costs": ["3"]}}, "zhang_evans.costs: cost '3' is not among"),
])
def test_config_errors_name_the_bad_key(patch, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_config({**TINY, **patch})
    assert "\n" not in str(error.value)


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[methods.nope]\n[[settings]]\ndataset = "digits"\ncost = "3"\n')
    assert main(["experiment", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown method 'nope'" in err and len(err.splitlines()) == 1


def test_a_config_without_epochs_is_one_line_naming_it(tmp_path, capsys):
    path = tmp_path / "no-epochs.toml"
    path.write_text('[[settings]]\ndataset = "digits"\ncost = "3"\n[methods.cohen]\n'
                    '[train]\nlr = 0.05\n')
    assert main(["experiment", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: train.epochs is missing: expected an integer >= 1"
    assert not (tmp_path / "o").exists()  # refused before anything ran


@pytest.mark.slow
def test_rerun_after_a_crash_skips_finished_runs_with_the_same_summary(tmp_path):
    config = parse_config(TINY)
    first = run_experiment(config, tmp_path, quiet=True)
    checkpoints = sorted((tmp_path / "checkpoints").rglob("*.pt"))
    results = sorted((tmp_path / "results").rglob("*.tsv"))
    validation = sorted((tmp_path / "validation").rglob("*.tsv"))
    stamps = {path: path.stat().st_mtime_ns for path in [*checkpoints, *results, *validation]}
    # A crash that lost the last test certification and a half-written candidate checkpoint.
    results[-1].unlink()
    checkpoints[-1].unlink()
    second = run_experiment(config, tmp_path, quiet=True)
    assert second == first
    for path in [*checkpoints[:-1], *results[:-1], *validation]:
        assert path.stat().st_mtime_ns == stamps[path], path  # not trained or certified again
    assert checkpoints[-1].is_file() and results[-1].is_file()


@pytest.mark.slow
def test_a_run_killed_in_the_validation_stage_continues_there(tmp_path, monkeypatch):
    from csrs.experiment import stages

    config = parse_config(TINY)
    whole = run_experiment(config, tmp_path / "whole", quiet=True)
    real, calls = stages.certify_in_process, []

    def killed_on_the_second(*args, **kwargs):
        calls.append(args[0].out)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "certify_in_process", killed_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "cut", quiet=True)
    monkeypatch.undo()
    trained = {path: path.stat().st_mtime_ns for path in (tmp_path / "cut").rglob("*.pt")}
    assert len(trained) == 3 and not (tmp_path / "cut" / "results").exists()
    resumed = run_experiment(config, tmp_path / "cut", quiet=True)
    assert {path: path.stat().st_mtime_ns for path in trained} == trained  # not trained again

    def numbers(rows):
        return [{k: v for k, v in row.items() if k not in ("results_files", "checkpoints")}
                for row in rows]

    assert numbers(resumed) == numbers(whole)


def test_several_seeds_give_the_mean_and_sd_of_their_test_files(tmp_path):
    """summary.csv against the per-example files of each seed, recomputed by hand."""
    import statistics

    from csrs.results import read_results

    run_experiment(parse_config({**TINY, "seeds": [0, 1, 2], "methods": {"cohen": {}}}),
                   tmp_path, quiet=True)
    with open(tmp_path / "summary.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    files = row["results_files"].split()
    assert row["seeds"] == "3" and row["seed_values"] == "0 1 2" and len(files) == 3
    per_seed = [_by_hand(read_results(tmp_path / name), 0.25) for name in files]
    for metric in ("acc", "rob_cs"):
        values = [seed[metric] for seed in per_seed]
        assert float(row[metric]) == pytest.approx(statistics.mean(values), abs=5e-5)
        assert float(row[f"{metric}_sd"]) == pytest.approx(statistics.stdev(values), abs=5e-5)
    assert len({seed["acc"] for seed in per_seed}) > 1  # the seeds differ: the sd bites
    assert "sample standard deviation over seeds (ddof = 1)" in (tmp_path / "report.md").read_text()


def test_matched_accuracy_chooses_the_lowest_validation_cost_within_the_drop(tmp_path):
    config = {**TINY, "settings": [{"dataset": "breast-cancer", "arch": "linear",
                                    "cost": "malignant->benign:10;benign->malignant:1"}],
              "methods": {"cohen": {}, "cohen-r": {"weight": [1.0, 2.0, 4.0, 8.0]}},
              "tuning": {"n0": 10, "n": 40, "max_examples": 40, "select": "cert_cost",
                         "max_acc_drop": 0.1}}
    run_experiment(parse_config(config), tmp_path, quiet=True)
    with open(tmp_path / "candidates.csv") as handle:
        rows = list(csv.DictReader(handle))
    cohen = float(next(row["acc"] for row in rows if row["method"] == "cohen"))
    grid = [row for row in rows if row["method"] == "cohen-r"]
    eligible = [row for row in grid if float(row["acc"]) >= cohen - 0.1 - 1e-9]
    (chosen,) = [row for row in grid if row["chosen"] == "True"]
    if eligible:
        assert float(chosen["cert_cost"]) == min(float(row["cert_cost"]) for row in eligible)
        assert chosen in eligible and "lowest cert_cost" in chosen["reason"]
    else:
        assert float(chosen["acc"]) == max(float(row["acc"]) for row in grid)
    assert len({row["cert_cost"] for row in grid}) > 1  # the candidates differ: the rule bites
    assert (tmp_path / "tradeoff_cost.png").read_bytes().startswith(b"\x89PNG")


def test_grid_without_validation_split_is_refused():
    with pytest.raises(ValueError, match="needs a validation split"):
        parse_config({**TINY, "tuning": {"val_fraction": 0.0}})


@pytest.mark.slow
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
    assert checkpoint.meta["hparams"]["lr"] == 0.05
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
    assert "| Cohen-R@group |" in report and "| CS-RS@lam3 |" in report


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


def test_a_real_valued_matrix_from_a_file_gets_its_certified_cost_plot(tmp_path):
    """Real costs are told by the matrix, not by a ':' in the spec: a .json matrix of real
    costs gets the certified-cost curve; its file name makes the setting's file names."""
    matrix = [[0.0] * 10 for _ in range(10)]
    matrix[3][5], matrix[3][8] = 10.0, 2.0
    path = tmp_path / "graded costs.json"
    path.write_text(json.dumps(matrix))
    config = {**TINY, "settings": [{"dataset": "digits", "cost": str(path), "arch": "linear"}],
              "methods": {"cohen": {}}, "tuning": {"val_fraction": 0.0}}
    run_experiment(parse_config(config), tmp_path / "out", quiet=True)
    plots = sorted(p.name for p in (tmp_path / "out").glob("cost_*.png"))
    assert len(plots) == 1 and "/" not in plots[0]
