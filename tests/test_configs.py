"""The shipped experiment configs: every one parses, and every method, hyperparameter, `csrs
train` flag, architecture and cost class it names exists; the GPU tables keep the paper's
protocol where a quick edit could silently weaken it."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from csrs.cli import _METHOD_FLAGS
from csrs.costs import CostMatrix
from csrs.data import CIFAR10_CLASSES, load_dataset
from csrs.experiment import load_config
from csrs.experiment.config import candidates
from csrs.models import build_model
from csrs.objectives import METHOD_DEFAULTS

EXPERIMENTS = Path(__file__).parent.parent / "experiments"
ALL = sorted(EXPERIMENTS.rglob("*.toml"))
GPU_TABLES = sorted(EXPERIMENTS.glob("table*.toml"))
# The classes a cost spec may name, per data set (numbers always work).
CLASSES = {"digits": [str(k) for k in range(10)], "cifar10": CIFAR10_CLASSES,
           "imagenette": [str(k) for k in range(10)], "breast-cancer": ["malignant", "benign"],
           "ham10000": ["malignant", "benign"]}


def _name(path: Path) -> str:
    return str(path.relative_to(EXPERIMENTS))


@pytest.mark.parametrize("path", ALL, ids=_name)
def test_every_config_parses_and_names_only_what_exists(path):
    """Parsing checks the methods, hyperparameters (every candidate of every grid), data sets
    and architectures; here: the costs name classes of their data set, and a launcher could
    pass every hyperparameter to `csrs train`."""
    config = load_config(path)
    flags = {name for _, name, _, _ in _METHOD_FLAGS}
    for grid in config.methods.values():
        for candidate in candidates(grid):
            assert set(candidate) <= flags
    for setting in config.settings:
        names = CLASSES[setting.dataset]
        assert CostMatrix.parse(setting.cost, len(names), names).sensitive_classes


def test_every_hyperparameter_has_a_train_flag():
    """The torchrun command line of an experiment passes each hyperparameter as a flag."""
    flags = {name for _, name, _, _ in _METHOD_FLAGS}
    assert {key for defaults in METHOD_DEFAULTS.values() for key in defaults} <= flags


@pytest.mark.parametrize("path", GPU_TABLES, ids=_name)
def test_gpu_tables_certify_at_the_papers_n_and_alpha(path):
    """The GPU tables certify with the paper's n = 100,000 at alpha = 0.001 and the sound
    bounds, and decide every test image with one sequential test per image at several radii
    (the tables and the curves). A config trimmed for a quick try must not be committed as the
    paper's."""
    config = load_config(path)
    certify = config.certify
    assert certify["alpha"] == 0.001 and certify["bounds"] == "sound"
    assert certify["n"] == certify["adaptive_n"] == 100_000
    assert certify["adaptive_skip"] == 1 and certify["adaptive_max_examples"] is None
    assert config.eps in certify["adaptive_eps"] and len(certify["adaptive_eps"]) >= 4


def test_the_ham10000_matrix_costs_a_missed_malignant_ten_times_a_false_alarm():
    config = load_config(EXPERIMENTS / "table3_ham10000_2025.toml")
    cost = CostMatrix.parse(config.settings[0].cost, 2, ["malignant", "benign"])
    assert cost.matrix.tolist() == [[0.0, 10.0], [1.0, 0.0]]


def test_ham10000_config_loads_its_image_size_into_its_model(tmp_path):
    """The authors' code reads HAM10000 at 299 px: the loader takes that size from real-sized
    (600 x 450) JPEGs, and the config's network classifies it."""
    import csv

    config = load_config(EXPERIMENTS / "table3_ham10000.toml")
    setting = config.settings[0]
    rows = [(f"HAM_{k:04d}", f"ISIC_{k:04d}", dx) for k, dx in enumerate(["mel", "nv"] * 3)]
    for _, image, _ in rows:
        Image.new("RGB", (600, 450), (200, 120, 90)).save(tmp_path / f"{image}.jpg")
    with open(tmp_path / "HAM10000_metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["lesion_id", "image_id", "dx"])
        writer.writerows(rows)
    data = load_dataset("ham10000", tmp_path, image_size=setting.image_size)
    image, _ = data.test[0]
    assert image.shape == data.input_shape
    assert data.augment(image[None], torch.Generator().manual_seed(0)).shape[1:] == image.shape
    model = build_model(setting.arch, num_classes=data.num_classes,
                        input_shape=data.input_shape, mean=data.mean, std=data.std).eval()
    with torch.no_grad():
        assert model(image[None]).shape == (1, 2)
