"""The plan of an experiment: every run (setting, seed, method, candidate) with the files it
trains into, is scored on the validation split into and is certified into, fixed before
anything runs. Every stage reads the plan; none of them invents a path.

Layout under the output directory::

    checkpoints/<dataset>/<method>[-<hparams>]-s<seed>.pt     cost-blind methods, one per data set
    checkpoints/<setting>/<method>[-<hparams>]-s<seed>.pt     cost-aware methods, one per cost
    validation/<setting>/<same stem>.tsv                      scores that choose a candidate
    results/<setting>/<same stem>.tsv                         the test split (and -adaptive.tsv)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csrs.experiment.config import (
    COST_BLIND,
    KNOWN_METHODS,
    ExperimentConfig,
    Setting,
    base_method,
    candidates,
)
from csrs.training_config import TrainConfig

__all__ = ["Run", "by_group", "make_plan", "method_order", "tag", "train_config", "write_plan"]


def tag(hparams: Mapping[str, Any], *, sep: str = "_", eq: str = "-") -> str:
    """``gamma1-4_gamma2-16`` for file names; ``tag(h, sep=", ", eq="=")`` for people."""
    return sep.join(f"{key}{eq}{value:g}" if isinstance(value, (int, float))
                    and not isinstance(value, bool) else f"{key}{eq}{value}"
                    for key, value in sorted(hparams.items()))


@dataclass(frozen=True)
class Run:
    """One candidate of one method for one setting and seed, and its files."""

    setting: Setting
    seed: int
    method: str
    hparams: Mapping[str, Any]
    checkpoint: Path
    validation: Path
    test: Path

    @property
    def base(self) -> str:
        return base_method(self.method)

    @property
    def group(self) -> tuple[Setting, int, str]:
        """The runs among which the validation split chooses one."""
        return self.setting, self.seed, self.method

    @property
    def label(self) -> str:
        """The hyperparameters for people: "lam=1, num_noise=8"."""
        return tag(self.hparams, sep=", ", eq="=")

    @property
    def adaptive(self) -> Path:
        """The sequential test's results on the test split."""
        return self.test.with_name(self.test.stem + "-adaptive.tsv")

    @property
    def cost_blind(self) -> bool:
        return self.base in COST_BLIND


def method_order(methods: Mapping[str, Any]) -> list[str]:
    """Cohen first (its validation accuracy is the others' reference), then the methods in
    :data:`KNOWN_METHODS` order, each variant after its base method in the config's order."""
    return sorted(methods, key=lambda m: (KNOWN_METHODS.index(base_method(m)), "@" in m))


def _blind_folders(settings: list[Setting]) -> dict[Setting, str]:
    """Returns the checkpoint folder of the cost-blind runs of each setting: the data set's
    name, numbered where settings train the same data set differently (arch, files, size)."""
    identities: dict[str, list[tuple]] = {}
    for setting in settings:
        identity = (setting.arch, setting.data_dir, setting.image_size)
        if identity not in identities.setdefault(setting.dataset, []):
            identities[setting.dataset].append(identity)
    folders = {}
    for setting in settings:
        known = identities[setting.dataset]
        index = known.index((setting.arch, setting.data_dir, setting.image_size))
        folders[setting] = setting.dataset if len(known) == 1 else f"{setting.dataset}-{index}"
    return folders


def make_plan(config: ExperimentConfig, out: Path) -> list[Run]:
    """Returns every run of ``config`` with its files under ``out``, settings first, then seeds,
    then methods in :func:`method_order`, then candidates."""
    folders = _blind_folders(config.settings)
    plan = []
    for setting in config.settings:
        for seed in config.seeds:
            for method in method_order(config.methods):
                for hparams in candidates(config.methods[method]):
                    stem = f"{method}{'-' + tag(hparams) if hparams else ''}-s{seed}"
                    folder = folders[setting] if base_method(method) in COST_BLIND \
                        else setting.key
                    plan.append(Run(setting, seed, method, hparams,
                                    out / "checkpoints" / folder / f"{stem}.pt",
                                    out / "validation" / setting.key / f"{stem}.tsv",
                                    out / "results" / setting.key / f"{stem}.tsv"))
    return plan


def by_group(plan: list[Run]) -> dict[tuple[Setting, int, str], list[Run]]:
    """Returns the runs of each (setting, seed, method), in plan order."""
    groups: dict[tuple[Setting, int, str], list[Run]] = {}
    for run in plan:
        groups.setdefault(run.group, []).append(run)
    return groups


def train_config(run: Run, config: ExperimentConfig) -> TrainConfig:
    """Returns the training settings of ``run``: the config's schedule for every method, on the
    training split minus the validation split; cost-blind methods with the data set's cost."""
    return TrainConfig(
        dataset=run.setting.dataset, method=run.base, sigma=config.sigma, out=run.checkpoint,
        cost=None if run.cost_blind else run.setting.cost, arch=run.setting.arch,
        data_dir=run.setting.data_dir, image_size=run.setting.image_size, seed=run.seed,
        device=config.device, amp=config.amp, hparams=dict(run.hparams),
        val_fraction=config.tuning["val_fraction"], data_seed=config.data_seed, **config.train)


def write_plan(plan: list[Run], path: Path) -> Path:
    """Writes the plan as JSON (one entry per run, with its files), for people to read."""
    entries = [{"dataset": run.setting.dataset, "cost": run.setting.cost, "seed": run.seed,
                "method": run.method, "hparams": dict(run.hparams),
                "checkpoint": str(run.checkpoint), "validation": str(run.validation),
                "test": str(run.test)} for run in plan]
    path.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    return path
