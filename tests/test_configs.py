"""The shipped experiment configs: every one parses and names only methods and hyperparameters
that exist, and the GPU configs follow the paper's protocol (Section 5, Tables 1-7, Figure 1)."""

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from csrs.data import load_dataset
from csrs.experiment import KNOWN_METHODS, _candidates, base_method, load_config
from csrs.models import build_model
from csrs.objectives import resolve_hparams

EXPERIMENTS = Path(__file__).parent.parent / "experiments"
ALL = sorted(EXPERIMENTS.rglob("*.toml"))
# The 2023 paper's GPU configs (the 2025 ones are tested in test_configs_2025.py).
GPU = sorted(p for p in EXPERIMENTS.glob("*.toml") if "2025" not in p.name)


def _name(path: Path) -> str:
    return str(path.relative_to(EXPERIMENTS))


@pytest.mark.parametrize("path", ALL, ids=_name)
def test_every_config_parses_with_known_methods_and_valid_hyperparameters(path):
    config = load_config(path)
    assert config.settings and config.methods
    for method, grid in config.methods.items():
        assert base_method(method) in KNOWN_METHODS
        for candidate in _candidates(grid):
            resolve_hparams(base_method(method), candidate)


def test_the_paper_has_a_config_for_each_table_and_figure():
    names = {path.name for path in GPU}
    assert {"table1_cifar10_seedwise.toml", "table1_imagenette_seedwise.toml",
            "table2_pairwise.toml", "table3_ham10000.toml", "table4_zhang_evans.toml",
            "table5_gamma_sweep.toml", "table6_sigma025_seedwise.toml",
            "table7_sigma025_pairwise.toml", "figure1_omega_size.toml",
            "figure1c_tradeoff.toml"} <= names
    small = {path.name for path in (EXPERIMENTS / "small").glob("*.toml")}
    assert {"table6_sigma025_seedwise.toml", "table7_sigma025_pairwise.toml",
            "figure1c_tradeoff.toml"} <= small


@pytest.mark.parametrize("path", [p for p in GPU if p.name.startswith("table")], ids=_name)
def test_gpu_tables_decide_the_whole_test_split_and_draw_curves_from_every_20th(path):
    """The tables: the sequential test at the paper's n on every test image; the radii and
    curves: n = 100,000 on every 20th image (Cohen's protocol)."""
    config = load_config(path)
    certify = config.certify
    assert config.device == "cuda"
    assert (certify["n0"], certify["n"], certify["alpha"]) == (100, 100_000, 0.001)
    assert certify["skip"] == 20 and certify["max_examples"] is None
    assert certify["adaptive_n"] == 100_000
    assert certify["adaptive_skip"] == 1 and certify["adaptive_max_examples"] is None


@pytest.mark.parametrize("name", ["table1_cifar10_seedwise.toml",
                                  "table1_imagenette_seedwise.toml", "table2_pairwise.toml",
                                  "table3_ham10000.toml", "table6_sigma025_seedwise.toml",
                                  "table7_sigma025_pairwise.toml"])
def test_tables_run_both_lambdas_of_csrs_and_both_weightings_of_cohen_r(name):
    """CS-RS at the text's lambda (12, MACER's) and the authors' code's (3); Cohen-R per example
    and per group (the authors' code), each its own row."""
    methods = load_config(EXPERIMENTS / name).methods
    assert {"cohen", "cohen-r", "macer", "csrs", "csrs@lam3", "cohen-r@group"} <= set(methods)
    assert resolve_hparams("csrs", {k: v[0] for k, v in methods["csrs"].items()})["lam"] == 12
    assert methods["csrs@lam3"] == {"lam": [3.0]}
    assert methods["cohen-r"]["weight"] == methods["cohen-r@group"]["weight"] == [1.2]
    assert methods["cohen-r@group"]["weighting"] == ["group"]


@pytest.mark.parametrize("name, costs", [
    ("table6_sigma025_seedwise.toml", ["3", "2,4", "7", "3,7"]),
    ("table7_sigma025_pairwise.toml", ["3->5", "3->2,4,5", "7->2", "7->2,4,6"]),
])
def test_appendix_tables_run_at_sigma_and_eps_025(name, costs):
    config = load_config(EXPERIMENTS / name)
    assert config.sigma == config.eps == 0.25
    assert [setting.cost for setting in config.settings] == costs
    assert {setting.dataset for setting in config.settings} == {"cifar10", "imagenette"}
    assert "lam" not in config.methods["macer"]  # MACER's lambda at sigma 0.25 is its 12


def test_table3_has_both_cohen_r_weights_of_the_paper():
    methods = load_config(EXPERIMENTS / "table3_ham10000.toml").methods
    assert methods["cohen-r"]["weight"] == [1.2]  # Cohen-R-II
    assert methods["cohen-r@1.1"]["weight"] == [1.1]  # Cohen-R-I
    # ... and Cohen-R as the authors' code computes it (batch mean + 0.1 x sensitive mean).
    assert methods["cohen-r@code"] == {"weight": [1.1], "weighting": ["batch"]}


def test_table4_certifies_both_methods_at_both_radii():
    config = load_config(EXPERIMENTS / "table4_zhang_evans.toml")
    assert config.zhang_evans["eps"] == [0.25, 0.5] and config.eps == 0.5


@pytest.mark.parametrize("path", [EXPERIMENTS / "table5_gamma_sweep.toml",
                                  EXPERIMENTS / "figure1c_tradeoff.toml",
                                  EXPERIMENTS / "small" / "table5_gamma_sweep.toml",
                                  EXPERIMENTS / "small" / "figure1c_tradeoff.toml"], ids=_name)
def test_sweeps_certify_every_candidate_on_the_test_split(path):
    config = load_config(path)
    assert config.certify["all_candidates"] is True
    assert len(_candidates(config.methods["csrs"])) > 1


def test_table5_sweeps_the_papers_gamma_grid():
    grid = load_config(EXPERIMENTS / "table5_gamma_sweep.toml").methods["csrs"]
    assert grid == {"gamma1": [2.0, 4.0, 6.0, 8.0], "gamma2": [8.0, 10.0, 12.0, 16.0]}


def test_ham10000_config_loads_its_image_size_into_its_model(tmp_path):
    """The authors' code reads HAM10000 at 299 px: the loader takes that size from real-sized
    (600 x 450) JPEGs, and the config's network classifies it."""
    config = load_config(EXPERIMENTS / "table3_ham10000.toml")
    setting = config.settings[0]
    assert (setting.image_size, setting.arch) == (299, "ham-resnet56")
    rows = [(f"HAM_{k:04d}", f"ISIC_{k:04d}", dx) for k, dx in enumerate(["mel", "nv"] * 3)]
    for _, image, _ in rows:
        Image.new("RGB", (600, 450), (200, 120, 90)).save(tmp_path / f"{image}.jpg")
    with open(tmp_path / "HAM10000_metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["lesion_id", "image_id", "dx"])
        writer.writerows(rows)
    data = load_dataset("ham10000", tmp_path, image_size=setting.image_size)
    image, _ = data.test[0]
    assert image.shape == data.input_shape == (3, 299, 299)
    assert data.augment(image[None], torch.Generator().manual_seed(0)).shape == (1, 3, 299, 299)
    model = build_model(setting.arch, num_classes=data.num_classes,
                        input_shape=data.input_shape, mean=data.mean, std=data.std).eval()
    with torch.no_grad():
        assert model(image[None]).shape == (1, 2)
