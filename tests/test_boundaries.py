"""Where csrs meets users' models and files: broken logits, other models, two writers, 64-bit
noise keys, and the real-valued cost columns of results files."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from csrs.certify import CertifySettings, SequentialSettings, certify_dataset
from csrs.checkpoint import load_checkpoint, save_checkpoint
from csrs.cli import main
from csrs.costs import CostMatrix
from csrs.metrics import summarize
from csrs.results import ResultsFileError, read_results
from csrs.rng import keyed_generator
from csrs.smoothing import ModelOutputError, SmoothedClassifier
from csrs.stats import certify_cost_counts

SMALL = ["--n0", "20", "--n", "300", "--alpha", "0.01", "--quiet"]


# -- noise keys ---------------------------------------------------------------------------------
def test_noise_keys_use_all_64_bits():
    low = torch.empty(500).normal_(generator=keyed_generator(12345))
    high = torch.empty(500).normal_(generator=keyed_generator(12345 + (7 << 32)))
    again = torch.empty(500).normal_(generator=keyed_generator(12345))
    assert torch.equal(low, again)
    assert not torch.equal(low, high)
    # torch's own CPU seeding keeps only the low 32 bits: the bug this module exists for.
    same = [torch.empty(5).normal_(generator=torch.Generator().manual_seed(key))
            for key in (12345, 12345 + (7 << 32))]
    assert torch.equal(*same)


def test_keyed_noise_is_standard_normal_across_keys():
    """First draws of 4000 keys: mean 0 and variance 1 within 4 standard errors."""
    first = torch.stack([torch.empty(1).normal_(generator=keyed_generator(key * 0x9E3779B9))
                         for key in range(4000)]).double()
    assert abs(first.mean().item()) < 4 / np.sqrt(4000)
    assert abs(first.var().item() - 1) < 4 * np.sqrt(2 / 4000)


def test_keyed_state_round_trips_through_torch():
    generator = keyed_generator(2**63 + 17)
    state = generator.get_state()
    torch.Generator().set_state(state)  # a layout torch would not accept raises here
    assert torch.equal(torch.empty(10).normal_(generator=generator),
                       torch.empty(10).normal_(generator=keyed_generator(2**63 + 17)))


# -- broken models ------------------------------------------------------------------------------
class FlaggedNaN(nn.Module):
    """A linear model that returns NaN logits for inputs whose first feature is huge."""

    def __init__(self, num_classes=3, outputs=None):
        super().__init__()
        self.linear = nn.Linear(4, outputs or num_classes)

    def forward(self, x):
        logits = self.linear(x)
        return torch.where(x[:, :1] > 100, torch.full_like(logits, float("nan")), logits)


def _dataset():
    x = torch.zeros(3, 4)
    x[2, 0] = 1000.0  # example 2 makes the model return NaN
    return TensorDataset(x, torch.tensor([0, 1, 2]))


def test_nan_logits_stop_certification_naming_the_example_and_keep_written_rows(tmp_path):
    torch.manual_seed(0)
    smoothed = SmoothedClassifier(FlaggedNaN(), 3, 0.5)
    settings = CertifySettings(n0=10, n=90, alpha=0.01)
    out = tmp_path / "r.tsv"
    with pytest.raises(ModelOutputError, match="example 2: .*NaN or infinite") as error:
        certify_dataset(smoothed, _dataset(), CostMatrix.parse("0", 3), settings=settings,
                        out=out, batch_size=20, progress=False)  # one example a chunk
    assert "\n" not in str(error.value)
    assert [row["idx"] for row in read_results(out)] == ["0", "1"]


def test_wrong_output_shape_is_refused_naming_the_example(tmp_path):
    smoothed = SmoothedClassifier(FlaggedNaN(3, outputs=2), 3, 0.5)
    with pytest.raises(ModelOutputError, match=r"example 0: .*shape \(30, 2\).*expected "
                                               r"\(30, 3\)"):
        smoothed.sample_counts(torch.zeros(4), 30)


def test_nan_logits_are_refused_by_the_sequential_test_too():
    smoothed = SmoothedClassifier(FlaggedNaN(), 3, 0.5)
    with pytest.raises(ModelOutputError, match="example 7"):
        smoothed.decide(torch.tensor([1000.0, 0, 0, 0]), eps=0.1, index=7, n_max=500)


def test_cli_reports_a_broken_model_in_one_line(digits_checkpoint, tmp_path, capsys):
    checkpoint = load_checkpoint(digits_checkpoint)
    state = {name: torch.full_like(value, float("inf")) if name.endswith("bias") else value
             for name, value in checkpoint.model_state.items()}
    broken = tmp_path / "broken.pt"
    model = checkpoint.build_model()
    model.load_state_dict(state)
    save_checkpoint(broken, model, checkpoint.meta)
    assert main(["certify", str(broken), "--out", str(tmp_path / "r.tsv"), *SMALL,
                 "--max", "2"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: example 0:") and "NaN or infinite" in message
    assert "\n" not in message


# -- one model, one writer, one row per example ---------------------------------------------------
def _retrained(checkpoint_path, tmp_path):
    checkpoint = load_checkpoint(checkpoint_path)
    model = checkpoint.build_model()
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    return save_checkpoint(tmp_path / "retrained.pt", model, checkpoint.meta)


def test_resume_with_another_model_is_refused(digits_checkpoint, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert main(["certify", str(digits_checkpoint), "--out", str(out), *SMALL,
                 "--max", "3"]) == 0
    other = _retrained(digits_checkpoint, tmp_path)
    assert main(["certify", str(other), "--out", str(out), *SMALL, "--max", "6"]) == 2
    message = capsys.readouterr().err.strip()
    assert "another model" in message and "\n" not in message
    assert len(read_results(out)) == 3
    # The same model resumes as before.
    assert main(["certify", str(digits_checkpoint), "--out", str(out), *SMALL,
                 "--max", "6"]) == 0
    assert len(read_results(out)) == 6


_HOLD_LOCK = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_refused(digits_checkpoint, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(tmp_path / "r.tsv.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["certify", str(digits_checkpoint), "--out", str(out), *SMALL,
                     "--max", "2"]) == 2
        message = capsys.readouterr().err.strip()
        assert "being written by another process" in message and "\n" not in message
        assert not out.exists() or read_results(out) == []
    finally:
        holder.kill()
        holder.wait()
    # The kernel released the dead writer's lock: the run goes ahead.
    assert main(["certify", str(digits_checkpoint), "--out", str(out), *SMALL,
                 "--max", "2"]) == 0
    assert len(read_results(out)) == 2


def test_duplicate_example_rows_are_refused(digits_checkpoint, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert main(["certify", str(digits_checkpoint), "--out", str(out), *SMALL,
                 "--max", "2"]) == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join([*lines, lines[1]]))
    before = out.read_text()
    with pytest.raises(ResultsFileError, match="example 0 twice"):
        read_results(out)
    assert main(["report", str(out)]) == 2
    assert "twice" in capsys.readouterr().err
    assert main(["certify", str(digits_checkpoint), "--out", str(out), *SMALL,
                 "--max", "3"]) == 2
    assert out.read_text() == before  # nothing written, nothing lost


# -- real-valued costs through certify and report -----------------------------------------------
def test_certify_writes_what_kappa_needs_at_every_eps(digits_checkpoint, tmp_path, capsys):
    out = tmp_path / "r.tsv"
    assert main(["certify", str(digits_checkpoint), "--out", str(out), *SMALL,
                 "--cost", "3->5:10,8:2", "--max", "60"]) == 0
    rows = read_results(out)
    sensitive = [row for row in rows if row["sensitive"] == "1"]
    assert sensitive and all(row["label"] == "3" for row in sensitive)
    for row in sensitive:
        radii = dict(item.split(":") for item in row["pair_radii"].split(","))
        costs = dict(item.split(":") for item in row["pair_costs"].split(","))
        candidate = int(row["predict"]) if row["predict"] != "-1" else None
        assert set(radii) == set(costs) == {"5", "8"} - {str(candidate)}
        assert {costs[k] for k in costs} <= {"10", "2"}
    for row in rows:
        label, predict = int(row["label"]), int(row["predict"])
        expected = (10.0 if label == 3 else 0.0) if predict == -1 else \
            {(3, 5): 10.0, (3, 8): 2.0}.get((label, predict), 0.0)
        assert float(row["clean_cost"]) == expected
    capsys.readouterr()
    assert main(["report", str(out), "--eps", "0.25", "--out", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    assert "clean cost" in printed and "Cost_cert" in printed
    assert (tmp_path / "rep" / "certified_cost.png").read_bytes().startswith(b"\x89PNG")
    summary = (tmp_path / "rep" / "summary.csv").read_text().splitlines()
    assert "clean_cost" in summary[0] and "cert_cost_sensitive" in summary[0]


def test_certified_cost_metrics_follow_the_definitions():
    rows = [  # label 0 sensitive: C[0] = (0, 10, 2); label 1 not
        {"label": 0, "predict": 0, "radius": 0.4, "correct": 1, "sensitive": 1,
         "cs_predict": 0, "cs_costly": 0, "r1": 0.3, "cost_r1": 0.3, "cs_radius": 0.6,
         "clean_cost": 0, "cs_cost": 0, "pair_radii": "1:0.9,2:0.6", "pair_costs": "1:10,2:2"},
        {"label": 0, "predict": 2, "radius": 0.5, "correct": 0, "sensitive": 1,
         "cs_predict": 2, "cs_costly": 1, "r1": 0.5, "cost_r1": 0.5, "cs_radius": 0,
         "clean_cost": 2, "cs_cost": 2, "pair_radii": "1:0.7", "pair_costs": "1:10"},
        {"label": 0, "predict": -1, "radius": 0, "correct": 0, "sensitive": 1,
         "cs_predict": -1, "cs_costly": 0, "r1": -0.2, "cost_r1": -0.2, "cs_radius": 0,
         "clean_cost": 10, "cs_cost": 0, "pair_radii": "1:-0.1,2:0.2", "pair_costs": "1:10,2:2"},
        {"label": 1, "predict": 1, "radius": 0.5, "correct": 1, "sensitive": 0,
         "clean_cost": 0, "cs_cost": 0, "pair_radii": "", "pair_costs": ""},
    ]
    # kappa at eps 0.65: row 1: R1 0.3 < eps, class 2 reachable (0.6) -> 2; row 2: R1 0.5 <
    # eps, class 1 at 0.7 not reachable -> its own cost 2; row 3: -> 10; row 4: 0.
    summary = summarize(rows, 0.65)
    assert summary["clean_cost"] == pytest.approx(12 / 4)
    assert summary["cert_cost"] == pytest.approx((2 + 2 + 10 + 0) / 4)
    assert summary["cert_cost_sensitive"] == pytest.approx(14 / 3)
    assert summarize(rows, 0.25)["cert_cost"] == pytest.approx((0 + 2 + 10) / 4)
    # Two classes: recall and precision of the costly seed class 0.
    assert summary["seed_class"] == 0
    assert summary["recall"] == pytest.approx(1 / 3)
    assert summary["precision"] == pytest.approx(1.0)


def test_smoothed_classifier_certifies_the_cost_of_a_tensor_input():
    torch.manual_seed(1)
    model = nn.Linear(4, 3)
    smoothed = SmoothedClassifier(model, 3, 0.5, seed=3)
    x = torch.tensor([0.5, -0.2, 0.1, 0.3])
    cert = smoothed.certify_cost(x, cost_row=[0, 10, 2], n0=20, n=400, alpha=0.01, index=4)
    counts = smoothed.sample_counts_many(x[None], [(0, 4, 0, 20), (0, 4, 1, 400)])
    assert cert == certify_cost_counts(counts[0], counts[1], sigma=0.5, alpha=0.01,
                                       cost_row=[0, 10, 2])


def test_max_cost_decides_the_binary_question_of_the_classes_above_it(digits_checkpoint,
                                                                      digits):
    checkpoint = load_checkpoint(digits_checkpoint)
    cost = CostMatrix.parse("3->5:10,8:2", 10)
    indices = [i for i in range(200) if int(digits.test[i][1]) == 3][:6]

    def run(matrix, max_cost=None):
        smoothed = SmoothedClassifier(checkpoint.build_model(), 10, 0.5)
        settings = SequentialSettings(eps=(0.1,), alpha=0.01, n0=20, n_max=2000,
                                      max_cost=max_cost)
        rows = certify_dataset(smoothed, digits.test, matrix, settings=settings,
                               indices=indices, progress=False)
        return [(r["sensitive"], r["certified@0.1"]) for r in rows]

    assert run(cost, max_cost=0.0) == run(cost)
    # Above 2, only 3 -> 5 (cost 10) must be avoided: the binary question for '3->5'.
    assert run(cost, max_cost=2.0) == run(CostMatrix.parse("3->5", 10))
    assert all(sensitive == "0" for sensitive, _ in run(cost, max_cost=10.0))
