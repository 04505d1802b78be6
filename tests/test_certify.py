"""Certifying datasets: result rows, metrics, resume after a kill, CLI errors, the report."""

import numpy as np
import pytest

from csrs.certify import CertifySettings, certify_dataset, select_indices
from csrs.checkpoint import load_checkpoint
from csrs.cli import main
from csrs.metrics import curves, summarize
from csrs.results import COLUMNS, read_results
from csrs.smoothing import SmoothedClassifier

SMALL = ["--n0", "20", "--n", "300", "--alpha", "0.01", "--quiet"]


def _without_time(rows):
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def _certify(checkpoint, out, *extra):
    return main(["certify", str(checkpoint), "--out", str(out), *SMALL, *extra])


def test_rows_carry_both_certificates(digits_checkpoint, tmp_path):
    out = tmp_path / "r.tsv"
    assert _certify(digits_checkpoint, out, "--max", "40") == 0
    rows = read_results(out)
    assert len(rows) == 40 and tuple(rows[0]) == COLUMNS
    for row in rows:
        label = int(row["label"])
        assert row["sensitive"] == ("1" if label == 3 else "0")
        if row["sensitive"] == "1":
            radius = float(row["cs_radius"])
            assert radius == 0 or radius == max(float(row["r1"]), float(row["r2"]))
        else:
            assert row["r1"] == row["cs_radius"] == ""
        assert row["correct"] == str(int(row["predict"] == row["label"]))


def test_same_rows_for_any_batch_size_and_order(digits_checkpoint, digits, tmp_path):
    checkpoint = load_checkpoint(digits_checkpoint)
    settings = CertifySettings(n0=20, n=300, alpha=0.01)
    cost = checkpoint.cost_matrix()

    def run(batch_size, indices):
        smoothed = SmoothedClassifier(checkpoint.build_model(), 10, 0.5)
        rows = certify_dataset(smoothed, digits.test, cost, settings=settings,
                               indices=indices, batch_size=batch_size, progress=False)
        return {row["idx"]: {k: v for k, v in row.items() if k != "time"} for row in rows}

    indices = list(range(0, 60, 3))
    reference = run(1000, indices)
    assert run(64, indices) == reference
    assert run(5000, indices[::-1]) == reference


def test_resume_after_a_kill_equals_an_uninterrupted_run(digits_checkpoint, tmp_path):
    whole, resumed = tmp_path / "whole.tsv", tmp_path / "resumed.tsv"
    assert _certify(digits_checkpoint, whole, "--max", "12") == 0
    assert _certify(digits_checkpoint, resumed, "--max", "5") == 0
    with open(resumed, "a") as handle:  # a kill in the middle of writing a row
        handle.write("15\t3\t3\t0.4")
    assert _certify(digits_checkpoint, resumed, "--max", "12") == 0
    assert _without_time(read_results(resumed)) == _without_time(read_results(whole))
    text = resumed.read_text()
    assert text.endswith("\n") and "0.4\n" not in text.splitlines()[6]


def test_resume_with_other_settings_is_refused(digits_checkpoint, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert _certify(digits_checkpoint, out, "--max", "3") == 0
    assert main(["certify", str(digits_checkpoint), "--out", str(out), "--n0", "20", "--n",
                 "400", "--alpha", "0.01", "--quiet", "--max", "3"]) == 2
    message = capsys.readouterr().err.strip()
    assert "n=300" in message and "400" in message and "\n" not in message
    assert len(read_results(out)) == 3  # nothing already computed is lost


def test_metrics_follow_the_definitions():
    rows = [  # label 3 sensitive with Omega = {5}; others not
        {"label": 3, "predict": 3, "radius": 0.7, "correct": 1, "sensitive": 1,
         "cs_predict": 3, "cs_costly": 0, "r1": 0.7, "cs_radius": 0.9},
        {"label": 3, "predict": 2, "radius": 0.6, "correct": 0, "sensitive": 1,
         "cs_predict": 2, "cs_costly": 0, "r1": 0.3, "cs_radius": 0.8},   # wrong, not costly
        {"label": 3, "predict": 5, "radius": 0.9, "correct": 0, "sensitive": 1,
         "cs_predict": 5, "cs_costly": 1, "r1": 0.9, "cs_radius": 0.0},   # costly: never robust
        {"label": 3, "predict": -1, "radius": 0.0, "correct": 0, "sensitive": 1,
         "cs_predict": -1, "cs_costly": 0, "r1": -0.1, "cs_radius": 0.0},  # abstain
        {"label": 1, "predict": 1, "radius": 0.6, "correct": 1, "sensitive": 0},
        {"label": 1, "predict": 1, "radius": 0.2, "correct": 1, "sensitive": 0},
        {"label": 2, "predict": -1, "radius": 0.0, "correct": 0, "sensitive": 0},
    ]
    summary = summarize(rows, 0.5)
    assert summary["acc"] == pytest.approx(3 / 7)
    assert summary["rob_cs"] == pytest.approx(2 / 4)
    # Rob_cs^(std) counts the standard radius at alpha (column radius), not R1 at alpha/2.
    assert summary["rob_cs_std"] == pytest.approx(2 / 4)
    assert summary["rob_non_std"] == pytest.approx(1 / 3)
    values = curves(rows, [0.0, 0.5, 0.85, 1.0])
    assert values["rob_cs"].tolist() == pytest.approx([0.5, 0.5, 0.25, 0.0])
    assert np.all(values["rob_cs"] >= values["rob_cs_std"])


@pytest.mark.parametrize("argv, fragment", [
    (["certify", "missing.pt", "--out", "x.tsv"], "does not exist"),
    (["certify", "{ckpt}", "--out", "{tmp}/x.tsv", "--cost", "3->12"], "class 12"),
    (["certify", "{ckpt}", "--out", "{tmp}/x.tsv", "--n", "0"], "positive integer"),
    (["certify", "{ckpt}", "--out", "{tmp}/x.tsv", "--alpha", "2"], "(0, 1)"),
    (["certify", "{ckpt}", "--out", "{tmp}/x.tsv", "--sigma", "nan"], "got nan"),
    (["certify", "{ckpt}", "--out", "{tmp}/x.tsv", "--eps", "inf", "--adaptive"], "got inf"),
    (["certify", "{ckpt}", "--out", "{tmp}/x.tsv", "--bounds", "loose"], "invalid choice"),
    (["certify", "{foreign}", "--out", "{tmp}/x.tsv"], "not a readable csrs checkpoint"),
    (["report", "{tmp}/none.tsv"], "does not exist"),
    (["nonsense"], "invalid choice"),
])
def test_cli_errors_are_one_line_without_traceback(argv, fragment, digits_checkpoint, tmp_path,
                                                   capsys):
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"this is not a checkpoint")
    argv = [a.format(ckpt=digits_checkpoint, tmp=tmp_path, foreign=foreign) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_select_indices():
    assert select_indices(10, skip=3) == [0, 3, 6, 9]
    assert select_indices(10, skip=2, max_examples=2) == [0, 2]
    with pytest.raises(ValueError, match="--skip"):
        select_indices(10, skip=0)
