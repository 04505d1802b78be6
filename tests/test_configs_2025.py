"""The 2025 tables' GPU configs: they parse, name every method with valid hyperparameters, and
carry the costs the 2025 version reports."""

from pathlib import Path

import pytest

from csrs.costs import CostMatrix
from csrs.experiment import load_config
from csrs.objectives import resolve_hparams

EXPERIMENTS = Path(__file__).parent.parent / "experiments"
SEVEN = {"cohen", "cohen-r", "macer", "csrs", "margin-cs", "smoothadv", "smoothadv-cs"}


@pytest.mark.parametrize("name, cost", [
    ("table1_cifar10_seedwise_2025.toml", "3"),
    ("table3_ham10000_2025.toml", "malignant->benign:10;benign->malignant:1"),
])
def test_2025_configs_run_all_seven_methods_at_the_papers_sigma_and_eps(name, cost):
    config = load_config(EXPERIMENTS / name)
    assert set(config.methods) == SEVEN
    assert (config.sigma, config.eps, config.device) == (0.5, 0.5, "cuda")
    assert [setting.cost for setting in config.settings] == [cost]
    for method, grid in config.methods.items():
        assert all(len(values) == 1 for values in grid.values()), "no grids without validation"
        resolve_hparams(method, {key: values[0] for key, values in grid.items()})
    assert config.methods["cohen-r"]["weighting"] == ["group"]


def test_the_ham10000_matrix_costs_a_missed_malignant_ten_times_a_false_alarm():
    config = load_config(EXPERIMENTS / "table3_ham10000_2025.toml")
    cost = CostMatrix.parse(config.settings[0].cost, 2, ["malignant", "benign"])
    assert cost.matrix.tolist() == [[0.0, 10.0], [1.0, 0.0]]
