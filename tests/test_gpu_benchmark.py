"""benchmarks.gpu runs end to end at tiny sizes on a CPU and writes its JSON and table."""

import json

import pytest
from benchmarks.gpu import CONFIGS, CURVE, EPS, main

from csrs.objectives import OBJECTIVES

pytestmark = pytest.mark.slow  # one run of the whole script at tiny sizes


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    assert main(["--tiny", "--device", "cpu", "--configs", "fp32,amp+channels_last",
                 "--out", str(out)]) == 0
    return json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text()


def test_certification_rates_of_the_classifier_and_the_raw_pass(tiny_report):
    report, _ = tiny_report
    rows = report["certify"]
    assert [(row["arch"], row["config"]) for row in rows] == [
        (arch, config) for arch in ("cifar-resnet20", "resnet50")
        for config in ("fp32", "amp+channels_last")]
    for row in rows:
        assert row["ratio"] == pytest.approx(row["csrs"] / row["raw"])
        assert row["samples"] == row["batch_size"]  # tiny: one full batch per timed run


def test_sequential_test_reports_one_eps_and_the_four_point_curve(tiny_report):
    report, table = tiny_report
    rows = report["sequential"]
    assert [(row["arch"], row["eps"]) for row in rows] == [
        (arch, grid) for arch in ("cifar-resnet20", "resnet50") for grid in ([EPS], list(CURVE))]
    for row in rows:
        assert row["n0"] <= row["mean_samples"] <= row["n0"] + row["n_max"]
        certified = row["standard_certified"]  # nested: certified at eps => below it
        assert certified == sorted(certified, reverse=True) and certified[0] <= row["images"]
    assert "| 0.25, 0.5, 0.75, 1 |" in table


def test_every_registered_method_is_trained_or_skipped_with_a_reason(tiny_report):
    report, _ = tiny_report
    rows = {row["method"]: row for row in report["training"]}
    assert list(rows) == list(OBJECTIVES)
    for row in rows.values():
        assert ("steps_per_second" in row) != ("skipped" in row)
    assert "steps_per_second" in rows["cohen"]


def test_torchrun_without_gpus_is_skipped_with_a_note(tiny_report):
    report, table = tiny_report
    assert report["torchrun"] is None
    assert any(note.startswith("torchrun: skipped (no CUDA") for note in report["notes"])
    assert report["tiny"] and report["machine"]["device"] == "cpu"
    assert "| model | batch | config | raw | csrs | csrs / raw |" in table
    assert "| model | method | B x k | steps / s | examples / s |" in table
    assert "torchrun: skipped" in table


def test_unknown_config_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--tiny", "--configs", "fp16"])
    assert f"choose from: {', '.join(CONFIGS)}" in capsys.readouterr().err
