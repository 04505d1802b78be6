"""Where an experiment trains and certifies the test split: in this process (:class:`InProcess`)
or handed to a launcher such as torchrun as ``csrs train`` and ``csrs certify`` command lines
(:class:`Launched`; DistributedDataParallel over its processes). The stages hold one of the two
and never ask which. The validation split and the sequential test always run in this process
(neither is a split or a mode that runs under torchrun).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csrs.costs import CostMatrix
from csrs.training_config import TrainConfig, train_arguments

__all__ = ["CertifyJob", "InProcess", "Launched", "certify_in_process",
           "launcher_for", "train_measured", "train_stats"]


@dataclass(frozen=True)
class CertifyJob:
    """One fixed-n certification: the model of ``checkpoint`` at ``sigma`` with noise ``seed``
    on every ``skip``-th example of a split (at most ``max_examples``), into ``out``."""

    checkpoint: Path
    out: Path
    cost: CostMatrix
    sigma: float
    seed: int
    n0: int
    n: int
    alpha: float
    bounds: str
    batch: int
    skip: int = 1
    max_examples: int | None = None


def certify_in_process(job: CertifyJob, dataset: Any, *, device: str, amp: bool,
                       progress: bool) -> list[dict[str, Any]]:
    """Certifies ``job`` here; a finished results file is read back, a partial one resumed."""
    from csrs.certify import CertifySettings, certify_dataset, model_fingerprint, select_indices
    from csrs.checkpoint import load_checkpoint
    from csrs.smoothing import SmoothedClassifier

    checkpoint = load_checkpoint(job.checkpoint)
    smoothed = SmoothedClassifier(checkpoint.build_model(device), job.cost.num_classes,
                                  job.sigma, device=device, seed=job.seed, amp=amp)
    return certify_dataset(
        smoothed, dataset, job.cost,
        settings=CertifySettings(n0=job.n0, n=job.n, alpha=job.alpha, bounds=job.bounds),
        indices=select_indices(len(dataset), skip=job.skip, max_examples=job.max_examples),
        batch_size=job.batch, out=job.out, progress=progress,
        fingerprint=model_fingerprint(checkpoint.model_state), checkpoint=job.checkpoint)


class InProcess:
    """Trains and certifies in this process."""

    measures_memory = True  # the training's peak memory is this process's

    def __init__(self, device: str, amp: bool) -> None:
        self.device, self.amp = device, amp

    def train(self, config: TrainConfig, *, splits: Any, progress: bool) -> None:
        from csrs.training import train

        train(config, splits=splits, progress=progress)

    def certify_test(self, job: CertifyJob, dataset: Any, *,
                     progress: bool) -> list[dict[str, Any]]:
        return certify_in_process(job, dataset, device=self.device, amp=self.amp,
                                  progress=progress)


class Launched:
    """Runs ``csrs train`` and ``csrs certify --split test`` under ``command`` (e.g.
    ``torchrun --nproc_per_node=4``); their checkpoint and results file are the outcome."""

    measures_memory = False  # the training ran in other processes

    def __init__(self, command: list[str], device: str, amp: bool) -> None:
        self.command, self.device, self.amp = list(command), device, amp

    def train(self, config: TrainConfig, *, splits: Any, progress: bool) -> None:
        self._run(["train", *train_arguments(config), *([] if progress else ["--quiet"])])

    def certify_test(self, job: CertifyJob, dataset: Any, *,
                     progress: bool) -> list[dict[str, Any]]:
        from csrs.results import read_results

        argv = ["certify", str(job.checkpoint), "--out", str(job.out), "--split", "test",
                "--cost", job.cost.spec(), "--sigma", repr(job.sigma), "--seed", str(job.seed),
                "--n0", str(job.n0), "--n", str(job.n), "--alpha", repr(job.alpha),
                "--bounds", job.bounds, "--batch", str(job.batch), "--skip", str(job.skip),
                "--device", self.device]
        argv += ["--max", str(job.max_examples)] if job.max_examples else []
        argv += ["--amp"] if self.amp else []
        self._run([*argv, *([] if progress else ["--quiet"])])
        return read_results(job.out)

    def _run(self, argv: list[str]) -> None:
        """Runs ``csrs ARGV`` under the launcher; a failure ends the experiment in one line."""
        executable = Path(sys.executable).with_name("csrs")
        command = [*self.command, "--no-python", "--",
                   str(executable) if executable.exists() else "csrs", *argv]
        finished = subprocess.run(command, check=False)
        if finished.returncode != 0:
            raise ValueError(f"'{' '.join(command[:8])} ...' failed with exit status "
                             f"{finished.returncode}; re-run the experiment to continue")


def launcher_for(command: list[str], device: str, amp: bool) -> InProcess | Launched:
    """Returns the strategy of a config's ``launcher`` (empty: this process)."""
    return Launched(command, device, amp) if command else InProcess(device, amp)


def _peak_rss_reset() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def train_measured(strategy: InProcess | Launched, config: TrainConfig, *, splits: Any,
                   progress: bool) -> None:
    """Trains, then keeps the median seconds per epoch and the training process's peak RSS
    beside the checkpoint (``<checkpoint>.stats.json``): the cost columns of the Table 4
    comparison. The memory is NaN where the training ran in other processes."""
    import numpy as np

    from csrs.checkpoint import load_checkpoint

    resettable = _peak_rss_reset()
    strategy.train(config, splits=splits, progress=progress)
    history = load_checkpoint(config.out).training.get("history", [])
    seconds = [entry["seconds"] for entry in history if "seconds" in entry]
    stats = {"seconds_per_epoch": float(np.median(seconds)) if seconds else float("nan"),
             "peak_rss_mb": _peak_rss_mb() if resettable and strategy.measures_memory
             else float("nan")}
    Path(str(config.out) + ".stats.json").write_text(json.dumps(stats) + "\n")


def train_stats(checkpoint: Path) -> dict[str, float]:
    """Returns what :func:`train_measured` kept beside ``checkpoint`` (NaN where nothing)."""
    path = Path(str(checkpoint) + ".stats.json")
    if path.is_file():
        return json.loads(path.read_text())
    return {"seconds_per_epoch": float("nan"), "peak_rss_mb": float("nan")}
