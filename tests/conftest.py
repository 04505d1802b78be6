"""Shared fixtures: a small digits model and its checkpoint, trained in about a second."""

import pytest
import torch

from csrs.checkpoint import save_checkpoint
from csrs.costs import CostMatrix
from csrs.data import load_dataset
from csrs.models import build_model

# The test models are tiny: one thread is as fast, and OpenMP threads that wait on a busy core
# (another job on a 2-core machine) slow small kernels down by an order of magnitude.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory, digits):
    """A linear digits model fit under noise (sigma 0.5) with a few Adam steps, saved as a
    checkpoint with pairwise cost '3->5,8'."""
    torch.manual_seed(0)
    model = build_model("linear", num_classes=10, input_shape=digits.input_shape)
    inputs, labels = digits.train.tensors[0], torch.as_tensor(digits.train.tensors[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        noisy = inputs + 0.5 * torch.randn_like(inputs)
        torch.nn.functional.cross_entropy(model(noisy), labels).backward()
        optimizer.step()
    cost = CostMatrix.parse("3->5,8", 10)
    meta = {"arch": "linear", "num_classes": 10, "class_names": digits.class_names,
            "input_shape": list(digits.input_shape), "mean": None, "std": None,
            "dataset": "digits", "data_dir": None, "data_options": {}, "sigma": 0.5,
            "cost_matrix": cost.to_list(), "cost_spec": cost.spec(), "method": "cohen",
            "hparams": {}, "epoch": 1, "epochs": 1, "seed": 0}
    path = tmp_path_factory.mktemp("ckpt") / "digits-linear.pt"
    return save_checkpoint(path, model, meta)
