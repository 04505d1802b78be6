"""Zhang & Evans's convex-relaxation baseline: sound l2 margin bounds, the cost-sensitive robust
loss, certification files, and the PGD attack that checks them."""

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import csrs
from csrs.attacks import margins, pgd_l2
from csrs.convex import (
    CONVEX_ARCHITECTURES,
    CONVEX_COLUMNS,
    certify_convex,
    certify_dataset_convex,
    check_convex_supported,
    convex_sequential,
    cost_sensitive_robust_loss,
    margin_lower_bounds,
)
from csrs.costs import CostMatrix
from csrs.models import Normalize, build_model
from csrs.objectives import LossParts, zhang_evans
from csrs.results import ResultsFileError, read_results

COST = CostMatrix.parse("3;1->7,4;8->0,5", 10)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The dual network runs many tiny ops; with a busy CPU, OpenMP threads that spin-wait for
    each other made this file 10-20x slower, and one thread is as fast on these sizes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _digits_batch(digits, count, split="test"):
    data = getattr(digits, split)
    return data.tensors[0][:count], torch.as_tensor(data.labels[:count])


def _exact_linear_margins(model, x, y, eps):
    weight = model[1].weight
    gaps = margins(model, x, y) - eps * (weight[y][:, None, :] - weight[None]).norm(dim=2)
    return gaps.masked_fill(F.one_hot(y, weight.shape[0]).bool(), 0.0)


def _train(model, digits, steps, objective):
    x, y = digits.train.tensors[0], torch.as_tensor(digits.train.labels)
    costly_table = torch.tensor(COST.mask)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(len(y), (64,), generator=generator)
        optimizer.zero_grad()
        objective(model, x[batch], y[batch], costly_table[y[batch]]).backward()
        optimizer.step()
    return model


def _clean_ce(model, x, y, costly_mask):
    return F.cross_entropy(model(x), y)


def _zhang_evans(model, x, y, costly_mask):
    return zhang_evans(model, x, y, costly_mask, 0.5, eps=0.3).total


# ---------------------------------------------------------------------------------------------
# The bounds


def test_linear_model_bound_is_the_exact_worst_case_margin():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(32, 1, 8, 8), torch.randint(10, (32,))
    for eps in (0.0, 0.3, 2.0):
        bounds = margin_lower_bounds(model, x, y, eps)
        assert torch.allclose(bounds, _exact_linear_margins(model, x, y, eps), atol=1e-4)


@pytest.mark.parametrize("arch", sorted(CONVEX_ARCHITECTURES))
def test_bound_at_eps_zero_is_the_clean_margin(arch):
    torch.manual_seed(0)
    model = CONVEX_ARCHITECTURES[arch](10, (1, 8, 8))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(10, (16,))
    assert torch.allclose(margin_lower_bounds(model, x, y, 0.0), margins(model, x, y), atol=1e-5)


def test_pgd_stays_in_the_ball_and_finds_the_linear_worst_case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(1, 10, (16,))
    adversarial = pgd_l2(model, x, y, 0, 0.4, steps=50, restarts=2,
                         generator=torch.Generator().manual_seed(1))
    assert ((adversarial - x).flatten(1).norm(dim=1) <= 0.4 + 1e-5).all()
    attacked = margins(model, adversarial, y)[:, 0]
    assert torch.allclose(attacked, _exact_linear_margins(model, x, y, 0.4)[:, 0], atol=1e-3)


@pytest.fixture(scope="module")
def small_nets(digits):
    """Two random and two briefly trained convex nets, each with an eps at which some but not
    all test examples are certified."""
    torch.manual_seed(0)
    nets = {
        "random-mlp": (CONVEX_ARCHITECTURES["convex-mlp"](10, (1, 8, 8)), 0.02),
        "random-cnn": (CONVEX_ARCHITECTURES["convex-cnn"](10, (1, 8, 8)), 0.05),
        "ce-mlp": (_train(CONVEX_ARCHITECTURES["convex-mlp"](10, (1, 8, 8)), digits, 150,
                          _clean_ce), 0.3),
        "zhang-evans-cnn": (_train(CONVEX_ARCHITECTURES["convex-cnn"](10, (1, 8, 8)), digits,
                                   80, _zhang_evans), 0.3),
    }
    return nets


@pytest.mark.slow
@pytest.mark.parametrize("name", ["random-mlp", "random-cnn", "ce-mlp", "zhang-evans-cnn"])
def test_certified_examples_survive_pgd_and_bounds_never_exceed_attacks(name, small_nets, digits):
    """Soundness: J_k <= min over the ball of f_y - f_k <= the margin PGD reaches, for every k;
    so a certified example keeps a positive margin against every costly class under attack."""
    model, eps = small_nets[name]
    x, y = _digits_batch(digits, 24)
    costly = torch.tensor(COST.mask)[y]
    cert = certify_convex(model, x, y, costly, eps)
    bounds = margin_lower_bounds(model, x, y, eps).detach()
    assert 0 < int(cert.certified.sum()) < len(y), "eps should certify some examples, not all"

    rows, targets = torch.nonzero(~F.one_hot(y, 10).bool(), as_tuple=True)
    adversarial = pgd_l2(model, x[rows], y[rows], targets, eps,
                         generator=torch.Generator().manual_seed(0))
    assert ((adversarial - x[rows]).flatten(1).norm(dim=1) <= eps + 1e-5).all()
    attacked = margins(model, adversarial, y[rows]).gather(1, targets[:, None]).squeeze(1)
    assert (bounds[rows, targets] <= attacked.detach() + 1e-4).all()

    relevant = torch.where(cert.sensitive[rows], costly[rows, targets], True)
    certified_pairs = cert.certified[rows] & relevant
    assert (attacked[certified_pairs] > 0).all()
    assert (attacked < margins(model, x[rows], y[rows]).gather(1, targets[:, None]).squeeze(1)
            ).any(), "the attack should move the margins"


def test_certificate_uses_costly_classes_for_sensitive_examples_and_all_for_the_others():
    torch.manual_seed(0)
    model = CONVEX_ARCHITECTURES["convex-mlp"](10, (1, 8, 8))
    x, y = torch.rand(40, 1, 8, 8), torch.arange(40) % 10
    costly = torch.tensor(COST.mask)[y]
    eps = 0.01
    bounds = margin_lower_bounds(model, x, y, eps)
    cert = certify_convex(model, x, y, costly, eps)
    others = ~F.one_hot(y, 10).bool()
    relevant = torch.where(costly.any(1)[:, None], costly, others)
    expected = ((bounds > 0) | ~relevant).all(1)
    assert torch.equal(cert.certified, expected)
    assert torch.equal(cert.certified, cert.margin > 0)
    assert torch.equal(cert.sensitive, costly.any(1))


# ---------------------------------------------------------------------------------------------
# Supported models


def test_convex_models_are_built_by_name_and_imports_look_down_only():
    for arch in CONVEX_ARCHITECTURES:
        model = build_model(arch, num_classes=10, input_shape=(1, 8, 8))
        check_convex_supported(model, (1, 8, 8))
    # models <- attacks, convex <- objectives <- training: every import of csrs, lazy ones
    # inside functions included, points down this chain.
    above = {"models": {"attacks", "convex", "objectives", "training"},
             "attacks": {"convex", "objectives", "training"},
             "convex": {"objectives", "training"}, "objectives": {"training"}}
    package = Path(csrs.__file__).parent
    for module, forbidden in above.items():
        imported = set()
        for node in ast.walk(ast.parse((package / f"{module}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("csrs."):
                imported.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[1] for alias in node.names
                             if alias.name.startswith("csrs.")}
        assert not imported & forbidden, (module, imported & forbidden)


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                  nn.Linear(64, 10)),
    nn.Sequential(nn.Conv2d(1, 4, 4, 2, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                  nn.Linear(64, 10)),
    nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(),
                  nn.Linear(64, 10)),
    nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU()),
    nn.Sequential(Normalize([0.5], [0.25]), CONVEX_ARCHITECTURES["convex-cnn"](10, (1, 8, 8))),
], ids=["conv-k3-s2", "batchnorm", "maxpool", "ends-in-relu", "normalised-conv"])
def test_unsupported_architectures_raise_a_one_line_value_error(model):
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    with pytest.raises(ValueError) as error:
        margin_lower_bounds(model, x, y, 0.1)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError):
        check_convex_supported(model, (1, 8, 8))


def test_normalisation_is_folded_exactly_and_gradients_reach_the_model():
    torch.manual_seed(0)
    net = CONVEX_ARCHITECTURES["convex-mlp"](10, (3, 4, 4))
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    model = nn.Sequential(Normalize(mean, std), net)
    x, y = torch.rand(8, 3, 4, 4), torch.randint(10, (8,))
    assert torch.allclose(margin_lower_bounds(model, x, y, 0.0), margins(model, x, y), atol=1e-5)
    # With one std s for all channels, the ball of radius eps around x maps to the ball of
    # radius eps / s around (x - mean) / s, so the folded bound is the plain net's bound there.
    equal_std = nn.Sequential(Normalize(mean, [0.25] * 3), net)
    shift = torch.tensor(mean).view(1, 3, 1, 1)
    assert torch.allclose(margin_lower_bounds(equal_std, x, y, 0.5),
                          margin_lower_bounds(net, (x - shift) / 0.25, y, 0.5 / 0.25), atol=1e-4)
    margin_lower_bounds(model, x, y, 0.3).sum().backward()
    assert net[1].weight.grad is not None and net[1].weight.grad.abs().sum() > 0
    identity = nn.Sequential(Normalize(), CONVEX_ARCHITECTURES["convex-cnn"](10, (3, 4, 4)))
    assert len(convex_sequential(identity, (3, 4, 4))) == 8


# ---------------------------------------------------------------------------------------------
# Training


def test_robust_loss_counts_costly_pairs_only():
    torch.manual_seed(0)
    model = CONVEX_ARCHITECTURES["convex-mlp"](10, (1, 8, 8))
    x, y = torch.rand(20, 1, 8, 8), torch.arange(20) % 10
    costly = torch.tensor(COST.mask)[y]
    bounds = margin_lower_bounds(model, x, y, 0.2)
    expected = (F.softplus(-bounds) * costly).sum() / len(y)
    loss = cost_sensitive_robust_loss(model, x, y, costly, 0.2)
    assert torch.allclose(loss, expected, atol=1e-5)
    assert cost_sensitive_robust_loss(model, x, y, torch.zeros_like(costly), 0.2) == 0


def test_robust_loss_weights_each_costly_pair_by_its_cost():
    torch.manual_seed(0)
    model = CONVEX_ARCHITECTURES["convex-mlp"](10, (1, 8, 8))
    x, y = torch.rand(20, 1, 8, 8), torch.arange(20) % 10
    weighted = CostMatrix.parse("3:2;1->7:10,4:0.5;8->0,5", 10)
    costs = torch.tensor(weighted.matrix, dtype=torch.float32)[y]
    bounds = margin_lower_bounds(model, x, y, 0.2)
    expected = (F.softplus(-bounds) * costs).sum() / len(y)
    assert torch.allclose(cost_sensitive_robust_loss(model, x, y, costs, 0.2), expected,
                          atol=1e-5)
    assert not torch.allclose(expected, cost_sensitive_robust_loss(model, x, y, costs > 0, 0.2))


def test_objective_is_clean_cross_entropy_plus_kappa_times_robust_loss():
    torch.manual_seed(0)
    model = CONVEX_ARCHITECTURES["convex-cnn"](10, (1, 8, 8))
    x, y = torch.rand(20, 1, 8, 8), torch.arange(20) % 10
    costly = torch.tensor(COST.mask)[y]
    parts = zhang_evans(model, x, y, costly, 0.5, eps=0.2, kappa=0.5)
    assert isinstance(parts, LossParts)
    assert torch.allclose(parts.classification, F.cross_entropy(model(x), y))
    assert torch.allclose(parts.robust_sensitive,
                          cost_sensitive_robust_loss(model, x, y, costly, 0.2))
    assert torch.allclose(parts.total, parts.classification + 0.5 * parts.robust_sensitive)
    assert parts.robust_normal == 0 and 0 <= parts.accuracy <= 1


def test_a_few_zhang_evans_steps_reduce_the_robust_loss_on_digits(digits):
    torch.manual_seed(0)
    model = CONVEX_ARCHITECTURES["convex-mlp"](10, digits.input_shape)
    x, y = _digits_batch(digits, 200, split="train")
    costly = torch.tensor(COST.mask)[y]
    with torch.no_grad():
        before = float(cost_sensitive_robust_loss(model, x, y, costly, 0.3))
    _train(model, digits, 40, _zhang_evans)
    with torch.no_grad():
        after = float(cost_sensitive_robust_loss(model, x, y, costly, 0.3))
    assert after < 0.5 * before


# ---------------------------------------------------------------------------------------------
# Certifying a dataset


def _without_time(rows):
    return [{key: str(value) for key, value in row.items() if key != "time"} for row in rows]


def test_certify_dataset_writes_columns_and_resumes_after_a_torn_line(tmp_path, digits):
    torch.manual_seed(0)
    model = _train(CONVEX_ARCHITECTURES["convex-mlp"](10, digits.input_shape), digits, 60,
                   _clean_ce)
    out = tmp_path / "convex.tsv"
    indices = list(range(0, 90, 3))
    full = certify_dataset_convex(model, digits.test, COST, eps=0.1, batch_size=8,
                                  indices=indices, out=out, progress=False)
    assert [int(row["idx"]) for row in full] == indices
    lines = out.read_text().splitlines()
    assert tuple(lines[0].split("\t")) == CONVEX_COLUMNS and len(lines) == 1 + len(indices)
    assert _without_time(read_results(out)) == _without_time(full)
    assert {row["sensitive"] for row in full} == {0, 1}
    assert any(row["certified"] for row in full)

    torn = "\n".join(lines[:13]) + "\n" + lines[13][:7]
    out.write_text(torn)
    resumed = certify_dataset_convex(model, digits.test, COST, eps=0.1, batch_size=8,
                                     indices=indices, out=out, progress=False)
    assert _without_time(resumed) == _without_time(full)
    assert _without_time(read_results(out)) == _without_time(full)
    with pytest.raises(ResultsFileError, match="eps"):
        certify_dataset_convex(model, digits.test, COST, eps=0.2, indices=indices, out=out,
                               progress=False)
    assert math.isfinite(float(full[0]["margin"]))


def test_cli_trains_zhang_evans_and_certifies_from_the_checkpoint_alone(tmp_path, capsys):
    from csrs.cli import main

    checkpoint, results = tmp_path / "ze.pt", tmp_path / "ze.tsv"
    # Default optimiser settings (Wong & Kolter's Adam): two epochs give a usable classifier,
    # where MACER's SGD schedule left one predicting a single class.
    assert main(["train", "--dataset", "digits", "--method", "zhang-evans", "--cost", "3->5",
                 "--eps", "0.25", "--epochs", "2", "--out", str(checkpoint), "--quiet"]) == 0
    assert main(["certify", str(checkpoint), "--convex", "--eps", "0.25", "--max", "40",
                 "--out", str(results), "--quiet"]) == 0
    assert main(["report", str(results)]) == 0
    printed = capsys.readouterr().out
    assert "Rob_cs" in printed and "eps = 0.25" in printed
    rows = read_results(results)
    assert sum(int(row["correct"]) for row in rows) / len(rows) > 0.7
    with open(results) as handle:
        header = handle.readline().split()
    assert header[:6] == ["idx", "label", "predict", "correct", "sensitive", "certified"]


def test_cli_refuses_architectures_the_dual_network_cannot_read(tmp_path, capsys):
    from csrs.cli import main

    code = main(["train", "--dataset", "digits", "--method", "zhang-evans", "--arch",
                 "digits-cnn", "--epochs", "1", "--out", str(tmp_path / "x.pt"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "MaxPool" in err
