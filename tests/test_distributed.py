"""Several processes, one run: torchrun certification and DistributedDataParallel training.

Two CPU processes over gloo. Certification goes through ``torchrun ... csrs certify``, as users
run it; training through ``torch.multiprocessing.spawn``, so that the processes' models can be
compared.
"""

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from csrs import distributed
from csrs.checkpoint import load_checkpoint
from csrs.cli import main
from csrs.models import build_model
from csrs.results import read_results
from csrs.training import TrainConfig, _epoch_loader, train

CSRS = Path(sys.executable).with_name("csrs")
# Many examples per round, and rounds of one example per process (--batch 100 < n0 + n): the
# last round of an odd number of examples leaves one process without any.
SMALL = ["--n0", "20", "--n", "300", "--alpha", "0.01", "--batch", "100", "--quiet"]
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _without_time(rows):
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def _torchrun(processes, *argv):
    """Runs ``torchrun --nproc_per_node=<processes> csrs <argv>`` and returns its exit status."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    # "--" ends torchrun's own flags: its parser takes abbreviations, so it would read csrs's
    # --n and --max as ambiguous prefixes of --nnodes, --max-restarts, ...
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", "--no-python", "--", str(CSRS), *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def one_process(digits_checkpoint, tmp_path_factory):
    """The results file of certifying 13 examples in this (single) process."""
    out = tmp_path_factory.mktemp("one") / "r.tsv"
    assert main(["certify", str(digits_checkpoint), "--out", str(out), *SMALL,
                 "--max", "13"]) == 0
    return out


@pytest.mark.slow
def test_torchrun_certification_writes_the_file_of_one_process(digits_checkpoint, one_process,
                                                               tmp_path):
    out = tmp_path / "r.tsv"
    done = _torchrun(2, "certify", str(digits_checkpoint), "--out", str(out), *SMALL,
                     "--max", "13")
    assert done.stdout.count("certified 13 examples") == 1  # rank 0 alone reports
    assert _without_time(read_results(out)) == _without_time(read_results(one_process))
    sidecar = out.with_name("r.tsv.json")
    assert sidecar.read_text() == one_process.with_name("r.tsv.json").read_text()


@pytest.mark.slow
def test_torchrun_sequential_certification_writes_the_file_of_one_process(digits_checkpoint,
                                                                           tmp_path):
    """The grid test shares the examples out too: its decisions depend on each example's noise
    alone, so two processes write the rows one process writes."""
    grid = ["--adaptive", "--eps", "0.25,0.5", "--n0", "20", "--n", "2000", "--alpha", "0.01",
            "--batch", "256", "--quiet", "--max", "9"]
    alone, shared = tmp_path / "alone.tsv", tmp_path / "shared.tsv"
    assert main(["certify", str(digits_checkpoint), "--out", str(alone), *grid]) == 0
    done = _torchrun(2, "certify", str(digits_checkpoint), "--out", str(shared), *grid)
    assert done.stdout.count("decided 9 examples") == 1
    assert _without_time(read_results(shared)) == _without_time(read_results(alone))


@pytest.mark.slow
def test_a_torn_file_resumes_with_another_number_of_processes(digits_checkpoint, one_process,
                                                              tmp_path):
    out = tmp_path / "r.tsv"
    assert main(["certify", str(digits_checkpoint), "--out", str(out), *SMALL,
                 "--max", "4"]) == 0
    with open(out, "a") as handle:  # a kill in the middle of writing a row
        handle.write("15\t3\t3\t0.4")
    _torchrun(2, "certify", str(digits_checkpoint), "--out", str(out), *SMALL, "--max", "13")
    assert _without_time(read_results(out)) == _without_time(read_results(one_process))
    assert out.read_text().endswith("\n") and "\t0.4\n" not in out.read_text()


def test_each_process_takes_its_part_of_every_global_batch():
    dataset = TensorDataset(torch.arange(11))

    def batches(rank, world_size):
        generator = torch.Generator().manual_seed(0)
        loader = _epoch_loader(dataset, 4, generator, rank=rank, world_size=world_size)
        return [batch[0].tolist() for batch in loader]

    whole, first, second = batches(0, 1), batches(0, 2), batches(1, 2)
    assert [len(batch) for batch in whole] == [4, 4, 3]
    assert [len(batch) for batch in first] == [len(batch) for batch in second] == [2, 2, 1]
    for global_batch, mine, theirs in zip(whole, first, second, strict=True):
        assert mine + theirs == global_batch[:len(mine) + len(theirs)]


def test_one_process_needs_no_process_group(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with distributed.process_group("cpu") as context:
        assert (context.rank, context.world_size, context.is_main) == (0, 1, True)
        assert not torch.distributed.is_initialized()
        assert distributed.all_gather_object("x") == ["x"]
        assert distributed.broadcast_object(3) == 3
        assert distributed.sum_over_processes(torch.ones(2)).tolist() == [1.0, 1.0]
        distributed.barrier()


def test_a_launch_without_torchruns_variables_is_refused(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT"):
        distributed.init_from_env("cpu")


def _config(folder: Path, **changes) -> TrainConfig:
    settings = {"dataset": "digits", "method": "csrs", "sigma": 0.25, "epochs": 2,
                "out": folder / "model.pt", "arch": "mlp", "cost": "3->5,8", "batch_size": 32,
                "hparams": {"num_noise": 4}, "milestones": (1,)} | changes
    return TrainConfig(**settings)


def _train_in_process_group(rank: int, world_size: int, port: int, folder: Path) -> None:
    """One process of the spawned training: a whole run, and a run cut after an epoch, resumed."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from csrs.data import load_dataset

    digits = load_dataset("digits", seed=0)
    splits = dataclasses.replace(digits, train=Subset(digits.train, range(128)))
    with distributed.process_group("cpu"):
        whole = train(_config(folder / "whole"), splits=splits, progress=False)
        train(_config(folder / "cut", epochs=1), splits=splits, progress=False)
        resumed = train(_config(folder / "cut"), splits=splits, progress=False)  # resumes
        torch.save({"whole": whole.model.state_dict(), "resumed": resumed.model.state_dict()},
                   folder / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_data_parallel_training_keeps_processes_equal_and_resumes(tmp_path, digits):
    torch.multiprocessing.spawn(_train_in_process_group, args=(2, _free_port(), tmp_path),
                                nprocs=2)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    torch.manual_seed(0)  # the loop's initialisation
    initial = build_model("mlp", num_classes=10, input_shape=digits.input_shape).state_dict()
    checkpoint = load_checkpoint(tmp_path / "whole" / "model.pt")
    assert checkpoint.meta["epoch"] == 2
    for key, value in first["whole"].items():
        assert torch.equal(value, second["whole"][key]), key  # the same model on each process
        assert torch.equal(value, checkpoint.model_state[key]), key  # rank 0 saved it
    assert any(not torch.equal(value, initial[key]) for key, value in first["whole"].items())
    noise = checkpoint.training["noise_generators"]
    assert len(noise) == 2 and not torch.equal(noise[0], noise[1])  # each its own noise
    # Resumed with every process reading rank 0's checkpoint, the run ends where an
    # uninterrupted one does.
    for key, value in first["whole"].items():
        assert torch.equal(value, first["resumed"][key]), key
        assert torch.equal(value, second["resumed"][key]), key
