"""Reports of results files: each file by its own kind, hand-computed numbers, what the report
says it summarises, and every way a user can ask for something a file cannot give."""

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from csrs.certify import CertifySettings, certify_dataset
from csrs.cli import main
from csrs.costs import CostMatrix
from csrs.metrics import ResultArrays, certified_costs
from csrs.report import _lines
from csrs.results import COLUMNS, read_results, sequential_columns
from csrs.sampling import ESTIMATION, SELECTION
from csrs.smoothing import SmoothedClassifier
from csrs.stats import certify_cost_counts

SMALL = ["--n0", "20", "--n", "300", "--alpha", "0.01", "--quiet"]


def _write(path, columns, rows, settings=None):
    lines = ["\t".join(columns)] + ["\t".join(str(row.get(c, "")) for c in columns)
                                    for row in rows]
    path.write_text("\n".join(lines) + "\n")
    if settings is not None:
        path.with_name(path.name + ".json").write_text(json.dumps(settings))
    return path


def _summary(folder):
    with open(folder / "summary.csv") as handle:
        return list(csv.DictReader(handle))


# Seven examples of a 10-class task with cost '3->5' (C[3][5] = 1): radii, hand-scored.
FIXED = [
    {"idx": 0, "label": 3, "predict": 3, "radius": 0.7, "correct": 1, "sensitive": 1,
     "cs_predict": 3, "cs_costly": 0, "r1": 0.7, "r2": 0.9, "cs_radius": 0.9, "clean_cost": 0,
     "cost_r1": 0.6, "cs_cost": 0, "pair_radii": "5:0.9", "pair_costs": "5:1"},
    {"idx": 1, "label": 3, "predict": 2, "radius": 0.6, "correct": 0, "sensitive": 1,
     "cs_predict": 2, "cs_costly": 0, "r1": 0.3, "r2": 0.8, "cs_radius": 0.8, "clean_cost": 0,
     "cost_r1": 0.3, "cs_cost": 0, "pair_radii": "5:0.8", "pair_costs": "5:1"},
    {"idx": 2, "label": 3, "predict": 5, "radius": 0.9, "correct": 0, "sensitive": 1,
     "cs_predict": 5, "cs_costly": 1, "r1": 0.9, "r2": 0.9, "cs_radius": 0, "clean_cost": 1,
     "cost_r1": 0.9, "cs_cost": 1, "pair_radii": "", "pair_costs": ""},
    {"idx": 3, "label": 3, "predict": -1, "radius": 0, "correct": 0, "sensitive": 1,
     "cs_predict": -1, "cs_costly": 0, "r1": -0.1, "r2": -0.2, "cs_radius": 0,
     "clean_cost": 1, "cost_r1": -0.1, "cs_cost": 0, "pair_radii": "5:-0.2", "pair_costs": "5:1"},
    {"idx": 4, "label": 1, "predict": 1, "radius": 0.6, "correct": 1, "sensitive": 0,
     "clean_cost": 0, "cs_cost": 0},
    {"idx": 5, "label": 1, "predict": 1, "radius": 0.2, "correct": 1, "sensitive": 0,
     "clean_cost": 0, "cs_cost": 0},
    {"idx": 6, "label": 2, "predict": -1, "radius": 0, "correct": 0, "sensitive": 0,
     "clean_cost": 0, "cs_cost": 0},
]
# At eps 0.5 by hand: Acc 3/7 (rows 0, 4, 5); Rob_cs 2/4 (rows 0, 1); Rob_cs^(std) 2/4 (rows 0,
# 1: standard radius > 0.5, candidate not costly); Rob_non^(std) 1/3 (row 4); kappa: row 0 ->
# cost_r1 0.6 > 0.5: 0; row 1 -> pair 0.8 > 0.5: 0; row 2 -> its own cost 1; row 3 -> 1;
# so Cost_cert 2/7 and 2/4 over the sensitive ones.
FIXED_AT_HALF = {"acc": 3 / 7, "rob_cs": 2 / 4, "rob_cs_std": 2 / 4, "rob_non_std": 1 / 3,
                 "cert_cost": 2 / 7, "cert_cost_sensitive": 2 / 4, "clean_cost": 2 / 7}
GRID = (0.25, 0.5)
SEQUENTIAL = [  # the same task decided at eps 0.25 and 0.5
    {"idx": 0, "label": 3, "predict": 3, "correct": 1, "sensitive": 1, "candidate": 3,
     "costly": 0, "clean_cost": 0, "samples": 300, "standard@0.25": 1, "certified@0.25": 1,
     "standard@0.5": 1, "certified@0.5": 1},
    {"idx": 1, "label": 3, "predict": 3, "correct": 1, "sensitive": 1, "candidate": 3,
     "costly": 0, "clean_cost": 0, "samples": 900, "standard@0.25": 1, "certified@0.25": 1,
     "standard@0.5": 0, "certified@0.5": 0},
    {"idx": 2, "label": 3, "predict": 5, "correct": 0, "sensitive": 1, "candidate": 5,
     "costly": 1, "clean_cost": 1, "samples": 100, "standard@0.25": 1, "certified@0.25": 0,
     "standard@0.5": 1, "certified@0.5": 0},
    {"idx": 3, "label": 1, "predict": 1, "correct": 1, "sensitive": 0, "candidate": 1,
     "costly": "", "clean_cost": 0, "samples": 200, "standard@0.25": 1, "certified@0.25": "",
     "standard@0.5": 1, "certified@0.5": ""},
    {"idx": 4, "label": 2, "predict": -1, "correct": 0, "sensitive": 0, "candidate": 2,
     "costly": "", "clean_cost": 0, "samples": 1500, "standard@0.25": 0, "certified@0.25": "",
     "standard@0.5": 0, "certified@0.5": ""},
]
# At eps 0.5 by hand: Acc 3/5; Rob_cs 1/3; Rob_cs^(std) 1/3 (row 0; row 2 is costly);
# Rob_non^(std) 1/2; 0/1 costs without a threshold: kappa 0, 1, 1 for the sensitive rows, so
# Cost_cert 2/5; mean samples 600.
SEQUENTIAL_AT_HALF = {"acc": 3 / 5, "rob_cs": 1 / 3, "rob_cs_std": 1 / 3, "rob_non_std": 1 / 2,
                      "cert_cost": 2 / 5, "clean_cost": 1 / 5, "mean_samples": 600.0}


@pytest.fixture()
def files(tmp_path):
    cost = CostMatrix.parse("3->5", 10)
    common = {"format": "csrs-results-2", "sigma": 0.5, "seed": 0, "alpha": 0.001,
              "n0": 100, "cost": cost.spec(), "cost_matrix": cost.to_list(),
              "checkpoint": "m.pt", "model": "abc123"}
    fixed = _write(tmp_path / "fixed.tsv", COLUMNS, FIXED,
                   {**common, "kind": "fixed-n", "n": 100000, "bounds": "sound"})
    sequential = _write(tmp_path / "seq.tsv", sequential_columns(GRID), SEQUENTIAL,
                        {**common, "kind": "sequential", "n_max": 100000, "method": "looks",
                         "eps": list(GRID), "max_cost": None})
    return fixed, sequential


def test_files_of_two_kinds_side_by_side_are_each_summarised_by_their_kind(files, tmp_path,
                                                                           capsys):
    fixed, sequential = files
    assert main(["report", str(fixed), str(sequential), "--eps", "0.5",
                 "--out", str(tmp_path / "rep")]) == 0
    rows = {row["results"]: row for row in _summary(tmp_path / "rep")}
    for name, expected in (("fixed", FIXED_AT_HALF), ("seq", SEQUENTIAL_AT_HALF)):
        for metric, value in expected.items():
            assert float(rows[name][metric]) == pytest.approx(value, abs=1e-4), (name, metric)
    assert rows["fixed"]["kind"] == "fixed-n" and rows["seq"]["kind"] == "sequential"
    assert rows["seq"]["eps_decided"] == "0.25,0.5"
    # The same files without --eps: the radii the sequential file decided, for both.
    assert main(["report", str(fixed), str(sequential), "--out", str(tmp_path / "both")]) == 0
    eps = sorted({(row["results"], row["eps"]) for row in _summary(tmp_path / "both")})
    assert eps == [("fixed", "0.25"), ("fixed", "0.5"), ("seq", "0.25"), ("seq", "0.5")]
    capsys.readouterr()
    # A radius the sequential file did not decide: one line, nothing guessed.
    assert main(["report", str(fixed), str(sequential), "--eps", "0.3",
                 "--out", str(tmp_path / "no")]) == 2
    error = capsys.readouterr().err.strip()
    assert "eps 0.3 was not decided in 'seq'" in error and "\n" not in error


def test_per_class_and_compare(files, tmp_path):
    fixed, sequential = files
    assert main(["report", str(fixed), "--eps", "0.5", "--out", str(tmp_path / "rep")]) == 0
    with open(tmp_path / "rep" / "per_class.csv") as handle:
        classes = {row["label"]: row for row in csv.DictReader(handle)}
    assert float(classes["3"]["rob_cs"]) == pytest.approx(2 / 4)  # rows 0-3
    assert float(classes["1"]["rob_non_std"]) == pytest.approx(1 / 2)  # rows 4, 5
    assert float(classes["2"]["acc"]) == 0.0
    assert main(["compare", str(fixed), str(sequential), "--eps", "0.25",
                 "--out", str(tmp_path / "cmp")]) == 0
    rows = {row["results"]: row for row in _summary(tmp_path / "cmp")}
    assert float(rows["seq"]["rob_cs"]) == pytest.approx(2 / 3)
    # fixed at 0.25: rows 0, 1 (cs radii 0.9, 0.8); rows 2 costly, 3 abstained.
    assert float(rows["fixed"]["rob_cs"]) == pytest.approx(2 / 4)
    assert (tmp_path / "cmp" / "compare_curves.png").read_bytes().startswith(b"\x89PNG")


def test_the_report_says_what_it_summarises(digits_checkpoint, tmp_path):
    out = tmp_path / "r.tsv"
    assert main(["certify", str(digits_checkpoint), "--out", str(out), *SMALL, "--max", "6",
                 "--seed", "7", "--cost", "3->5:10,8:2"]) == 0
    settings = json.loads((tmp_path / "r.tsv.json").read_text())
    assert settings["cost"] == "3->5:10,8:2" and settings["seed"] == 7
    assert settings["cost_description"] == "3 -> 5 (10), 8 (2)"
    assert settings["cost_matrix"][3][5] == 10 and settings["checkpoint"] == str(
        digits_checkpoint)
    text = (tmp_path / "r.tsv.json").read_text()
    assert '[0.0, 0.0, 0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 2.0, 0.0]' in text  # a row per line
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    row = _summary(tmp_path / "rep")[0]
    expected = {"kind": "fixed-n", "cost": "3->5:10,8:2", "sigma": "0.5", "n0": "20",
                "n": "300", "alpha": "0.01", "bounds": "sound", "seed": "7",
                "checkpoint": str(digits_checkpoint), "model": settings["model"]}
    assert {key: row[key] for key in expected} == expected
    report = (tmp_path / "rep" / "report.md").read_text()
    assert all(str(value) in report for value in expected.values())


def test_cohen_logs_without_costs_show_no_costs_and_with_a_cost_use_the_radius_as_r1(tmp_path,
                                                                                    capsys):
    log = _write(tmp_path / "cohen.tsv", ("idx", "label", "predict", "radius", "correct",
                                          "time"),
                 [{"idx": 0, "label": 3, "predict": 3, "radius": 0.8, "correct": 1, "time": 1},
                  {"idx": 1, "label": 3, "predict": 3, "radius": 0.3, "correct": 1, "time": 1},
                  {"idx": 2, "label": 3, "predict": 5, "radius": 0.9, "correct": 0, "time": 1},
                  {"idx": 3, "label": 3, "predict": -1, "radius": 0.0, "correct": 0, "time": 1},
                  {"idx": 4, "label": 9, "predict": 9, "radius": 0.7, "correct": 1, "time": 1}])
    assert main(["report", str(log), "--eps", "0.5", "--out", str(tmp_path / "a")]) == 0
    row = _summary(tmp_path / "a")[0]
    assert row["kind"] == "cohen-log" and float(row["acc"]) == pytest.approx(3 / 5)
    assert float(row["rob_non_std"]) == pytest.approx(2 / 5)  # rows 0 and 4 beyond 0.5
    assert row["rob_cs"] == "" and row.get("cert_cost", "") == ""  # no costs: nothing shown
    printed = capsys.readouterr().out
    assert "Cost_cert" not in printed and "| - |" in printed  # Rob_cs shown as "-"
    # With the cost '3->5:4' of ten classes: Rob_cs from the radius (R1, a lower bound): row 0
    # only; kappa at 0.5: row 0 -> 0 (radius 0.8), row 1 -> 4 (beyond its 0.3), row 2 -> 4
    # (predicts 5), row 3 -> 4 (abstains), row 4 -> 0 (not sensitive).
    assert main(["report", str(log), "--eps", "0.5", "--cost", "3->5:4", "--classes", "10",
                 "--out", str(tmp_path / "b")]) == 0
    row = _summary(tmp_path / "b")[0]
    assert float(row["rob_cs"]) == pytest.approx(1 / 4)
    assert float(row["cert_cost"]) == pytest.approx(12 / 5)
    assert float(row["clean_cost"]) == pytest.approx(8 / 5)  # rows 2 and 3 cost 4
    assert row["cost"] == "3->5:4"
    assert "a lower bound" in (tmp_path / "b" / "report.md").read_text()


class _ThreeWay(nn.Module):
    """Class 0 below t1, 1 between t1 and t2, 2 above t2, of the first coordinate: under N(0, 1)
    noise the smoothed probabilities are Phi(t1), Phi(t2) - Phi(t1), 1 - Phi(t2)."""

    def __init__(self, t1, t2):
        super().__init__()
        self.t1, self.t2 = t1, t2
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        z = x[:, 0]
        return torch.stack([(z < self.t1), (z >= self.t1) & (z < self.t2), (z >= self.t2)],
                           dim=1).float() * 10


def test_the_file_gives_the_cost_certificates_own_kappa_at_every_radius():
    """Issue 17, items 3 and 4: whatever the bounds mode, kappa from the file equals
    certify_cost_counts' on the same counts, also at an eps equal to a printed radius, and
    with bounds='paper' (whose Algorithm 1 r1 is at alpha, not alpha/2)."""
    from scipy.stats import norm

    model = _ThreeWay(norm.ppf(0.6), norm.ppf(0.998))
    smoothed = SmoothedClassifier(model, 3, 1.0, seed=5)
    dataset = TensorDataset(torch.zeros(25, 1), torch.zeros(25, dtype=torch.long))
    cost = CostMatrix([[0, 1, 2], [0, 0, 0], [0, 0, 0]])
    settings = CertifySettings(n0=30, n=1000, alpha=0.2, bounds="paper")
    rows = certify_dataset(smoothed, dataset, cost, settings=settings, progress=False)
    arrays = ResultArrays.from_rows(rows)
    differs = 0
    for i, row in enumerate(rows):
        counts = smoothed.sample_counts_many(torch.zeros(1, 1), [(0, i, SELECTION, 30),
                                                                 (0, i, ESTIMATION, 1000)])
        cert = certify_cost_counts(counts[0], counts[1], sigma=1.0, alpha=0.2,
                                   cost_row=cost.row(0))
        radii = [0.0, cert.r1, float(row["r1"]), *cert.pair_radius.values()]
        between = [(a + b) / 2 for a, b in zip(sorted(radii), sorted(radii)[1:], strict=False)]
        differs += cert.r1 != float(row["r1"])
        for eps in {abs(r) for r in radii + between if np.isfinite(r)}:
            assert certified_costs(arrays, eps)[i] == cert.cost_at(eps), (i, eps)
    assert differs == len(rows)  # the paper's r1 is never the cost certificate's own


def test_bounds_paper_through_the_cli_puts_algorithm_1_at_alpha(digits_checkpoint, tmp_path):
    paper, sound = tmp_path / "paper.tsv", tmp_path / "sound.tsv"
    assert main(["certify", str(digits_checkpoint), "--out", str(paper), *SMALL, "--max", "40",
                 "--bounds", "paper"]) == 0
    assert main(["certify", str(digits_checkpoint), "--out", str(sound), *SMALL,
                 "--max", "40"]) == 0
    assert json.loads((tmp_path / "paper.tsv.json").read_text())["bounds"] == "paper"
    compared = 0
    for a, b in zip(read_results(paper), read_results(sound), strict=True):
        if a["sensitive"] == "1" and a["predict"] != "-1":
            # Paper: R1 from pA_lower at alpha, which is Cohen's radius; sound: at alpha/2.
            assert float(a["r1"]) == pytest.approx(float(a["radius"]), rel=1e-12)
            assert float(b["r1"]) < float(b["radius"])
            assert a["cost_r1"] == b["cost_r1"]  # the cost certificate is the same in both
            compared += 1
    assert compared


def test_split_train_certifies_the_training_examples(digits_checkpoint, digits, tmp_path):
    out = tmp_path / "train.tsv"
    assert main(["certify", str(digits_checkpoint), "--out", str(out), *SMALL,
                 "--split", "train", "--max", "5"]) == 0
    labels = [str(int(digits.train[i][1])) for i in range(5)]
    assert [row["label"] for row in read_results(out)] == labels


def test_a_resumed_run_says_what_it_kept_and_a_finished_one_that_it_is(digits_checkpoint,
                                                                       tmp_path, capsys):
    out = tmp_path / "r.tsv"
    quiet = [arg for arg in SMALL if arg != "--quiet"]
    assert main(["certify", str(digits_checkpoint), "--out", str(out), *quiet, "--max", "3"]) == 0
    capsys.readouterr()
    assert main(["certify", str(digits_checkpoint), "--out", str(out), *quiet, "--max", "5"]) == 0
    assert "kept 3 of 5 examples, 2 to go" in capsys.readouterr().err
    assert main(["certify", str(digits_checkpoint), "--out", str(out), *quiet, "--max", "5"]) == 0
    assert "already complete (5 examples)" in capsys.readouterr().err


@pytest.mark.parametrize("extra, fragment", [
    (["--eps", "0.5"], "--eps applies to --adaptive or --convex only"),
    (["--adaptive", "--convex", "--eps", "0.5"], "choose one"),
    (["--adaptive", "--eps", "0.5", "--bounds", "paper"], "--bounds applies to fixed-n"),
    (["--convex", "--eps", "0.5", "--seed", "3"], "--seed applies to"),
    (["--convex", "--eps", "0.5", "--n", "10"], "--n applies to"),
    (["--convex", "--eps", "0.5", "--amp"], "--amp applies to"),
    (["--convex", "--eps", "0.25,0.5"], "certifies one radius"),
    (["--sequential", "mixture"], "--sequential applies to --adaptive only"),
    (["--max-cost", "1"], "--max-cost applies to --adaptive only"),
    (["--adaptive"], "--adaptive needs --eps"),
    (["--adaptive", "--eps", "0.5,0.25"], "increasing radii"),
])
def test_a_flag_the_mode_would_ignore_is_refused(extra, fragment, digits_checkpoint, tmp_path,
                                                 capsys):
    out = tmp_path / "x.tsv"
    assert main(["certify", str(digits_checkpoint), "--out", str(out), "--quiet", *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert fragment in error and "\n" not in error
    assert not out.exists()


def test_report_refuses_a_cost_for_files_that_have_one(files, tmp_path, capsys):
    fixed, _ = files
    assert main(["report", str(fixed), "--cost", "3", "--out", str(tmp_path / "r")]) == 2
    assert "--cost is for Cohen's logs" in capsys.readouterr().err
    assert main(["report", str(fixed), "--classes", "10", "--out", str(tmp_path / "r")]) == 2
    assert "--classes goes with --cost" in capsys.readouterr().err


def test_identical_curves_are_named_together_in_one_legend_entry(files):
    fixed, _ = files
    rows = read_results(fixed)
    arrays = {"cohen": ResultArrays.from_rows(rows), "macer": ResultArrays.from_rows(rows),
              "other": ResultArrays.from_rows(rows[1:])}
    lines = _lines(arrays, "rob_cs", np.linspace(0, 1, 11))
    assert [names for names, *_ in lines] == [["cohen", "macer"], ["other"]]
