"""Sequential certification with a model: one engine for fixed n and sequential tests, the
noise stream, determinism, grid rows, resume, the CLI round trip."""

import json

import numpy as np
import pytest
import torch

from csrs.certify import CertifySettings, SequentialSettings, certify_dataset
from csrs.checkpoint import load_checkpoint
from csrs.metrics import DecisionArrays, summarize
from csrs.results import ResultsFileError, load_results, read_results, sequential_columns
from csrs.sampling import ESTIMATION, SELECTION, Engine, Job
from csrs.sequential import ABSTAIN
from csrs.smoothing import SmoothedClassifier

GRID = (0.25, 0.5)
SMALL = SequentialSettings(eps=GRID, alpha=0.01, n0=20, n_max=2000)


@pytest.fixture(scope="module")
def checkpoint(digits_checkpoint):
    return load_checkpoint(digits_checkpoint)


def _smoothed(checkpoint, seed=0):
    return SmoothedClassifier(checkpoint.build_model(), 10, 0.5, seed=seed)


def _without_time(rows):
    return sorted(({k: v for k, v in row.items() if k != "time"} for row in rows),
                  key=lambda row: int(row["idx"]))


def _sequential(checkpoint, digits, indices, settings=SMALL, **kwargs):
    return certify_dataset(_smoothed(checkpoint), digits.test, checkpoint.cost_matrix(),
                           settings=settings, indices=indices, progress=False, **kwargs)


def test_looks_read_prefixes_of_the_fixed_n_noise_stream(checkpoint, digits):
    """Three looks at 700, 1500 and 2500 samples of a stream of 2500 count exactly what one
    look at 2500 counts: the sequential path with one look is fixed n."""
    smoothed = _smoothed(checkpoint)
    x = digits.test[5][0]
    looks = iter([(SELECTION, 20), (ESTIMATION, 700), (ESTIMATION, 1500), (ESTIMATION, 2500)])
    job = Job(5, x, {SELECTION: 20, ESTIMATION: 2500}, lambda job: next(looks, None))
    (finished,) = Engine(smoothed, batch_size=333).run([job])
    assert np.array_equal(finished.counts[SELECTION],
                          smoothed.sample_counts(x, 20, index=5, stage=SELECTION))
    assert np.array_equal(finished.counts[ESTIMATION],
                          smoothed.sample_counts(x, 2500, index=5, stage=ESTIMATION))


@pytest.mark.parametrize("costly", [None, [5, 8]], ids=["standard", "pairwise"])
def test_one_look_at_n_gives_the_fixed_n_certificate(checkpoint, digits, costly):
    """The sequential test with a single look at n spends alpha as the fixed-n certificate
    does, on the same samples: the same radius bound, so the same decision at every eps."""
    smoothed = _smoothed(checkpoint)
    for index in range(8):
        x = digits.test[index][0]
        if costly is None:
            fixed = smoothed.certify_standard(x, n0=20, n=3000, alpha=0.01, index=index)
            radius, p_a_lower = fixed.radius, fixed.p_a_lower
        else:
            fixed = smoothed.certify(x, costly=costly, n0=20, n=3000, alpha=0.01, index=index)
            radius, p_a_lower = max(fixed.r1, fixed.r2), fixed.p_a_lower
        grid = (0.05, 0.2, 0.4, 0.8)
        decision = smoothed.decide(x, eps=grid, costly=costly, alpha=0.01, n0=20, n_max=3000,
                                   looks=(3000,), index=index)
        if costly is not None and fixed.is_costly:  # never certified; no estimation spent
            assert not any(decision.certified) and decision.samples == 20
            continue
        assert decision.samples == 3020
        assert decision.certified == tuple(radius > eps for eps in grid)
        if any(decision.certified):
            assert decision.radius_lower == pytest.approx(radius, rel=1e-12)
            assert decision.p_a_lower == p_a_lower


def test_decide_returns_the_same_decision_for_any_batch_size(checkpoint, digits):
    smoothed = _smoothed(checkpoint)
    x, label = digits.test[0]
    decisions = [smoothed.decide(x, eps=(0.1, 0.25, 0.5), alpha=0.01, n0=20, n_max=2000,
                                 batch_size=size, index=3) for size in (7, 64, 5000)]
    assert decisions[0] == decisions[1] == decisions[2]
    decision = decisions[0]
    assert 20 < decision.samples <= 2020
    assert (decision.prediction != ABSTAIN) == any(decision.certified)


def test_a_costly_prediction_is_never_certified(checkpoint, digits):
    smoothed = _smoothed(checkpoint)
    x, label = digits.test[0]
    standard = smoothed.decide(x, eps=0.0, alpha=0.01, n0=20, n_max=2000)
    assert standard.certified and standard.prediction == label
    costly = smoothed.decide(x, eps=0.0, alpha=0.01, n0=20, n_max=2000, costly=[label])
    assert not costly.certified and costly.prediction == label and costly.samples == 20


def test_rows_decide_every_eps_of_every_example(checkpoint, digits):
    rows = _sequential(checkpoint, digits, range(60))
    assert [int(row["idx"]) for row in rows] == list(range(60))
    assert all(tuple(row) == sequential_columns(GRID) for row in rows)
    for row in rows:
        sensitive = row["label"] == "3"
        assert row["sensitive"] == str(int(sensitive))
        assert row["correct"] == str(int(row["predict"] == row["label"]))
        assert 20 < int(row["samples"]) <= 2020
        for eps in GRID:
            standard, certified = row[f"standard@{eps}"], row[f"certified@{eps}"]
            if standard == "1":
                assert float(row["std_radius_lower"]) > eps
            if sensitive:
                if certified == "1":
                    assert float(row["radius_lower"]) > eps and row["costly"] == "0"
            else:
                assert certified == ""
        assert row["standard@0.25"] >= row["standard@0.5"]  # nested
        if row["predict"] != str(ABSTAIN):
            assert row["predict"] == row["candidate"]
    summary = summarize(DecisionArrays.from_sequential(rows, GRID, {}), 0.25)
    assert summary["sensitive"] > 0 and summary["acc"] > 0.5
    assert summary["mean_samples"] < 1000  # most examples stop long before n_max


def test_agrees_with_fixed_n_certification(checkpoint, digits):
    cost = checkpoint.cost_matrix()
    indices = range(0, 450, 5)
    settings = SequentialSettings(eps=GRID, alpha=0.01, n0=20, n_max=5000)
    rows = _sequential(checkpoint, digits, indices, settings)
    decisions = DecisionArrays.from_sequential(rows, GRID, {"cost_matrix": cost.to_list()})
    fixed = certify_dataset(_smoothed(checkpoint), digits.test, cost, indices=indices,
                            settings=CertifySettings(n0=20, n=5000, alpha=0.01), progress=False)
    for eps in GRID:
        adaptive, radii = summarize(decisions, eps), summarize(fixed, eps)
        for metric in ("acc", "rob_non_std", "rob_cs_std"):
            assert adaptive[metric] == pytest.approx(radii[metric], abs=0.05)
        assert adaptive["rob_cs"] == pytest.approx(radii["rob_cs"], abs=1.01 / radii["sensitive"])
        # A 0/1 cost matrix: the decisions give kappa exactly.
        assert adaptive["cert_cost"] == pytest.approx(radii["cert_cost"], abs=1.01 / len(rows))
    assert summarize(decisions, 0.25)["mean_samples"] < 5020 / 3


def test_same_rows_for_any_batch_size_and_order(checkpoint, digits):
    indices = list(range(0, 60, 3))

    def run(batch_size, order):
        return _without_time(_sequential(checkpoint, digits, order, batch_size=batch_size))

    reference = run(1000, indices)
    assert run(64, indices) == reference
    assert run(5000, indices[::-1]) == reference


def test_resume_after_a_kill_equals_an_uninterrupted_run(checkpoint, digits, tmp_path):
    whole, resumed = tmp_path / "whole.tsv", tmp_path / "resumed.tsv"
    reference = _sequential(checkpoint, digits, range(15), out=whole)
    _sequential(checkpoint, digits, range(6), out=resumed)
    with open(resumed, "a") as handle:  # a kill in the middle of writing a row
        handle.write("14\t3\t3\t1\t1\t0.4")
    rows = _sequential(checkpoint, digits, range(15), out=resumed)
    assert _without_time(rows) == _without_time(reference)
    written = read_results(resumed)
    assert [int(row["idx"]) for row in written] == list(range(15))  # in idx order
    assert _without_time(written) == _without_time(read_results(whole))
    settings = json.loads((tmp_path / "resumed.tsv.json").read_text())
    assert settings["kind"] == "sequential" and settings["eps"] == list(GRID)
    assert settings["seed"] == 0 and settings["sigma"] == 0.5


def test_resume_with_other_settings_is_refused(checkpoint, digits, tmp_path):
    out = tmp_path / "r.tsv"
    _sequential(checkpoint, digits, range(3), out=out)
    with pytest.raises(ResultsFileError, match="alpha=0.01 .now 0.05."):
        _sequential(checkpoint, digits, range(3), SequentialSettings(eps=GRID, alpha=0.05, n0=20,
                                                                     n_max=2000), out=out)
    with pytest.raises(ResultsFileError, match="seed=0 .now 1."):
        certify_dataset(_smoothed(checkpoint, seed=1), digits.test, checkpoint.cost_matrix(),
                        settings=SMALL, indices=range(3), out=out, progress=False)
    assert len(read_results(out)) == 3
    fixed = tmp_path / "fixed.tsv"
    certify_dataset(_smoothed(checkpoint), digits.test, checkpoint.cost_matrix(),
                    indices=range(2), out=fixed, settings=CertifySettings(n0=20, n=100),
                    progress=False)
    with pytest.raises(ResultsFileError, match="holds fixed-n results, not sequential"):
        _sequential(checkpoint, digits, range(3), out=fixed)


def test_bad_settings_fail_before_any_sampling(checkpoint):
    with pytest.raises(ValueError, match="alpha must be in"):
        SequentialSettings(eps=GRID, alpha=0)
    with pytest.raises(ValueError, match="increase strictly"):
        SequentialSettings(eps=(0.5, 0.25))
    with pytest.raises(ValueError, match="batch_size must be"):
        _smoothed(checkpoint).decide(torch.zeros(1, 8, 8), eps=0.1, batch_size=0)
    with pytest.raises(ValueError, match="sigma must be a finite positive number"):
        SmoothedClassifier(checkpoint.build_model(), 10, float("inf"))


@pytest.mark.slow
def test_cli_grid_certify_resume_and_report(digits_checkpoint, tmp_path, capsys):
    from csrs.cli import main

    whole, resumed = tmp_path / "whole.tsv", tmp_path / "resumed.tsv"
    common = ["--adaptive", "--eps", "0.25,0.5,0.75,1.0", "--n0", "20", "--n", "2000",
              "--alpha", "0.01", "--quiet"]
    assert main(["certify", str(digits_checkpoint), "--out", str(whole), "--max", "10",
                 *common]) == 0
    assert main(["certify", str(digits_checkpoint), "--out", str(resumed), "--max", "4",
                 "--batch", "64", *common]) == 0
    assert main(["certify", str(digits_checkpoint), "--out", str(resumed), "--max", "10",
                 *common]) == 0
    assert _without_time(read_results(resumed)) == _without_time(read_results(whole))
    capsys.readouterr()
    for eps in ("0.25", "0.5", "0.75", "1.0"):
        assert main(["report", str(whole), "--eps", eps, "--out", str(tmp_path / eps)]) == 0
        assert f"eps = {float(eps):g}" in capsys.readouterr().out
    assert main(["report", str(whole), "--out", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    assert all(f"eps = {eps}" in out for eps in ("0.25", "0.5", "0.75", "1"))
    assert "mean samples" in out
    assert (tmp_path / "all" / "certified_curves.png").read_bytes().startswith(b"\x89PNG")
    assert main(["report", str(whole), "--eps", "0.6"]) == 2
    assert "eps 0.6 was not decided" in capsys.readouterr().err
    assert main(["certify", str(digits_checkpoint), "--out", str(whole), "--adaptive",
                 "--quiet"]) == 2
    assert "--adaptive needs --eps" in capsys.readouterr().err
    assert load_results(whole).grid == (0.25, 0.5, 0.75, 1.0)
