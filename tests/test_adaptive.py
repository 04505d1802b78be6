"""Adaptive certification with a model: the noise stream, determinism, dataset rows, resume."""

import json

import numpy as np
import pytest
import torch

from csrs.adaptive import certify_dataset_adaptive, decide
from csrs.certify import CertifySettings, certify_dataset
from csrs.checkpoint import load_checkpoint
from csrs.metrics import summarize, summarize_decisions
from csrs.results import ResultsFileError, read_results
from csrs.sequential import ABSTAIN, ADAPTIVE_COLUMNS
from csrs.smoothing import ESTIMATION, SELECTION, ExampleTests, SmoothedClassifier, _count_pieces

SMALL = {"eps": 0.25, "alpha": 0.01, "n0": 20, "n_max": 2000, "progress": False}


@pytest.fixture(scope="module")
def checkpoint(digits_checkpoint):
    return load_checkpoint(digits_checkpoint)


def _smoothed(checkpoint):
    return SmoothedClassifier(checkpoint.build_model(), 10, 0.5)


def _without_time(rows):
    return sorted(({k: v for k, v in row.items() if k != "time"} for row in rows),
                  key=lambda row: int(row["idx"]))


def test_adaptive_samples_are_the_fixed_n_noise_stream(checkpoint, digits):
    smoothed = _smoothed(checkpoint)
    x = digits.test[5][0]
    example = ExampleTests(5, x, lambda selection: [], np.zeros(10, np.int64),
                       np.zeros(10, np.int64))
    pieces = [(example, SELECTION, 0, 20), (example, ESTIMATION, 0, 700),
              (example, ESTIMATION, 700, 1500), (example, ESTIMATION, 1500, 2500)]
    counts = _count_pieces(smoothed, pieces, n0=20, estimation_block=1000)
    assert np.array_equal(counts[0], smoothed.sample_counts(x, 20, index=5, stage=SELECTION))
    assert np.array_equal(counts[1:].sum(axis=0),
                          smoothed.sample_counts(x, 2500, index=5, stage=ESTIMATION))


def test_decide_returns_the_same_decision_for_any_batch_size(checkpoint, digits):
    smoothed = _smoothed(checkpoint)
    x, label = digits.test[0]
    decisions = [decide(smoothed, x, eps=0.25, alpha=0.01, n0=20, n_max=2000, batch_size=size,
                        index=3) for size in (7, 64, 5000)]
    assert decisions[0] == decisions[1] == decisions[2]
    decision = decisions[0]
    assert decision.stopped in ("certified", "futile", "budget")
    assert 20 < decision.samples <= 2020
    assert decision.certified == (decision.prediction != ABSTAIN)


def test_a_costly_prediction_is_never_certified(checkpoint, digits):
    smoothed = _smoothed(checkpoint)
    x, label = digits.test[0]
    standard = decide(smoothed, x, eps=0.0, alpha=0.01, n0=20, n_max=2000)
    assert standard.certified and standard.prediction == label
    costly = decide(smoothed, x, eps=0.0, alpha=0.01, n0=20, n_max=2000, costly=[label])
    assert not costly.certified and costly.prediction == label and costly.samples == 20


def test_rows_decide_every_example(checkpoint, digits):
    rows = certify_dataset_adaptive(_smoothed(checkpoint), digits.test,
                                    checkpoint.cost_matrix(), indices=range(60), **SMALL)
    assert [int(row["idx"]) for row in rows] == list(range(60))
    assert all(tuple(row) == ADAPTIVE_COLUMNS for row in rows)
    for row in rows:
        assert row["sensitive"] == ("1" if row["label"] == "3" else "0")
        assert row["correct"] == str(int(row["predict"] == row["label"]))
        assert 20 < int(row["samples"]) <= 2020
        if row["certified"] == "1":
            assert float(row["radius_lower"]) > 0.25 and row["costly"] == "0"
            assert row["stopped"] == "certified"
    summary = summarize_decisions(rows)
    assert summary["sensitive"] > 0 and summary["acc"] > 0.5
    assert summary["mean_samples"] < 1000  # most examples stop long before n_max


def test_agrees_with_fixed_n_certification(checkpoint, digits):
    smoothed, cost = _smoothed(checkpoint), checkpoint.cost_matrix()
    indices = range(0, 450, 5)
    adaptive = summarize_decisions(certify_dataset_adaptive(
        smoothed, digits.test, cost, indices=indices, **{**SMALL, "n_max": 5000}))
    settings = CertifySettings(n0=20, n=5000, alpha=0.01, sigma=0.5, cost=cost.spec())
    fixed = summarize(certify_dataset(smoothed, digits.test, cost, settings=settings,
                                      indices=indices, progress=False), 0.25)
    assert adaptive["acc"] == pytest.approx(fixed["acc"], abs=0.05)
    assert adaptive["rob_non_std"] == pytest.approx(fixed["rob_non_std"], abs=0.05)
    assert adaptive["rob_cs"] == pytest.approx(fixed["rob_cs"], abs=1.01 / fixed["sensitive"])
    assert adaptive["mean_samples"] < 5020 / 3


def test_same_rows_for_any_batch_size_and_order(checkpoint, digits):
    cost = checkpoint.cost_matrix()
    indices = list(range(0, 60, 3))

    def run(batch_size, order):
        return _without_time(certify_dataset_adaptive(
            _smoothed(checkpoint), digits.test, cost, indices=order, batch_size=batch_size,
            **SMALL))

    reference = run(1000, indices)
    assert run(64, indices) == reference
    assert run(5000, indices[::-1]) == reference


def test_resume_after_a_kill_equals_an_uninterrupted_run(checkpoint, digits, tmp_path):
    cost = checkpoint.cost_matrix()
    whole, resumed = tmp_path / "whole.tsv", tmp_path / "resumed.tsv"

    def run(out, count):
        return certify_dataset_adaptive(_smoothed(checkpoint), digits.test, cost,
                                        indices=range(count), out=out, **SMALL)

    reference = run(whole, 15)
    run(resumed, 6)
    with open(resumed, "a") as handle:  # a kill in the middle of writing a row
        handle.write("14\t3\t3\t1\t1\t0.4")
    rows = run(resumed, 15)
    assert _without_time(rows) == _without_time(reference)
    assert _without_time(read_results(resumed)) == _without_time(read_results(whole))
    assert resumed.read_text().endswith("\n")
    settings = json.loads((tmp_path / "resumed.tsv.json").read_text())
    assert settings["mode"] == "adaptive" and settings["eps"] == 0.25


def test_resume_with_other_settings_is_refused(checkpoint, digits, tmp_path):
    cost, out = checkpoint.cost_matrix(), tmp_path / "r.tsv"
    certify_dataset_adaptive(_smoothed(checkpoint), digits.test, cost, indices=range(3),
                             out=out, **SMALL)
    with pytest.raises(ResultsFileError, match="eps=0.25 .now 0.5."):
        certify_dataset_adaptive(_smoothed(checkpoint), digits.test, cost, indices=range(3),
                                 out=out, **{**SMALL, "eps": 0.5})
    assert len(read_results(out)) == 3
    fixed = tmp_path / "fixed.tsv"
    certify_dataset(_smoothed(checkpoint), digits.test, cost, indices=range(2), out=fixed,
                    settings=CertifySettings(n0=20, n=100, sigma=0.5), progress=False)
    with pytest.raises(ResultsFileError, match="other columns than an adaptive"):
        certify_dataset_adaptive(_smoothed(checkpoint), digits.test, cost, indices=range(3),
                                 out=fixed, **SMALL)


def test_bad_settings_fail_before_any_sampling(checkpoint, digits):
    with pytest.raises(ValueError, match="alpha must be in"):
        certify_dataset_adaptive(_smoothed(checkpoint), digits.test,
                                 checkpoint.cost_matrix(), **{**SMALL, "alpha": 0})
    with pytest.raises(ValueError, match="batch_size must be"):
        decide(_smoothed(checkpoint), torch.zeros(1, 8, 8), eps=0.1, batch_size=0)


def test_cli_adaptive_certify_resume_and_report(digits_checkpoint, tmp_path, capsys):
    from csrs.cli import main

    whole, resumed = tmp_path / "whole.tsv", tmp_path / "resumed.tsv"
    common = ["--adaptive", "--eps", "0.25", "--n0", "20", "--n", "2000", "--alpha", "0.01",
              "--quiet"]
    assert main(["certify", str(digits_checkpoint), "--out", str(whole), "--max", "10",
                 *common]) == 0
    assert main(["certify", str(digits_checkpoint), "--out", str(resumed), "--max", "4",
                 "--batch", "64", *common]) == 0
    assert main(["certify", str(digits_checkpoint), "--out", str(resumed), "--max", "10",
                 *common]) == 0

    def rows(path):
        return sorted(({k: v for k, v in row.items() if k != "time"}
                       for row in read_results(path)), key=lambda row: int(row["idx"]))

    assert rows(resumed) == rows(whole)
    capsys.readouterr()
    assert main(["report", str(whole)]) == 0
    assert "mean samples" in capsys.readouterr().out
    assert main(["certify", str(digits_checkpoint), "--out", str(whole), "--adaptive",
                 "--quiet"]) == 2
    assert "--adaptive needs --eps" in capsys.readouterr().err


def test_smoothed_classifier_decide_matches_the_function(checkpoint, digits):
    smoothed = _smoothed(checkpoint)
    x, y = next((x, y) for x, y in digits.test if y == 3)
    cost = checkpoint.cost_matrix()
    method_result = smoothed.decide(x, eps=0.25, costly=cost.costly(y), alpha=0.01, n0=20,
                                    n_max=2000, index=5)
    assert method_result == decide(smoothed, x, eps=0.25, costly=cost.costly(y), alpha=0.01,
                                   n0=20, n_max=2000, index=5)
    assert method_result.samples <= 2020
