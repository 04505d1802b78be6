"""The Table 4 analogue: Zhang & Evans's deterministic certificate (convex bounds, no alpha) at
each eps of ``[zhang_evans]``, trained in this process with Wong & Kolter's optimiser, against
CS-RS's smoothed certificates of the same setting (its first seed) at the same eps, with what
each training cost (seconds per epoch, peak memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from csrs.experiment.aggregate import RunResult
from csrs.experiment.config import ExperimentConfig
from csrs.experiment.launch import InProcess, train_measured, train_stats
from csrs.experiment.splits import ExperimentData
from csrs.training_config import TrainConfig

__all__ = ["zhang_evans_comparison"]


def zhang_evans_comparison(config: ExperimentConfig, out: Path, tests: list[RunResult],
                           data: ExperimentData, progress: Any) -> list[dict[str, Any]]:
    """Returns one row per (setting, eps, method) with Acc and Rob_cs at that eps."""
    from csrs.checkpoint import load_checkpoint
    from csrs.convex import certify_dataset_convex
    from csrs.metrics import DecisionArrays, summarize, summarize_decisions
    from csrs.results import read_results

    options = config.zhang_evans
    strategy = InProcess(config.device, config.amp)  # its convex bounds need one process
    rows = []
    for setting in config.settings:
        if setting.cost not in options["costs"]:
            continue
        for eps in options["eps"]:
            checkpoint = out / "checkpoints" / setting.key / f"zhang-evans-eps-{eps:g}.pt"
            settings = TrainConfig(
                dataset=setting.dataset, method="zhang-evans", sigma=config.sigma,
                epochs=options["epochs"], out=checkpoint, cost=setting.cost,
                arch=options["arch"], data_dir=setting.data_dir, image_size=setting.image_size,
                lr=options["lr"], batch_size=options["batch_size"], device=config.device,
                val_fraction=config.tuning["val_fraction"], data_seed=config.data_seed,
                hparams={"eps": eps, "kappa": options["kappa"],
                         "eps_warmup": options["eps_warmup"]})
            done = (checkpoint.is_file()
                    and load_checkpoint(checkpoint).meta.get("epoch") == options["epochs"])
            progress.stage(f"train zhang-evans eps={eps:g} on {setting.dataset}, cost "
                           f"'{setting.cost}'" + (" [done]" if done else ""))
            if not done:
                train_measured(strategy, settings, splits=data.splits(setting),
                               progress=not progress.quiet)
            model = load_checkpoint(checkpoint).build_model(config.device)
            decided = certify_dataset_convex(
                model, data.splits(setting).test, data.cost(setting), eps=eps, indices=None,
                out=out / "results" / setting.key / f"zhang-evans-eps-{eps:g}.tsv",
                progress=not progress.quiet)
            scores = summarize_decisions(DecisionArrays.from_convex(
                decided, {"cost_matrix": data.cost(setting).to_list()}))
            rows.append({"dataset": setting.dataset, "cost": setting.cost,
                         "method": "Zhang & Evans (convex)", "eps": eps, "acc": scores["acc"],
                         "rob_cs": scores["rob_cs"], **train_stats(checkpoint)})
        ours = next((test for test in tests if test.chosen and test.method == "csrs"
                     and (test.dataset, test.cost) == (setting.dataset, setting.cost)), None)
        if ours is not None:
            smoothed = read_results(ours.path)
            for eps in options["eps"]:
                scores = summarize(smoothed, eps)
                rows.append({"dataset": setting.dataset, "cost": setting.cost,
                             "method": "CS-RS (smoothing)", "eps": eps, "acc": scores["acc"],
                             "rob_cs": scores["rob_cs"], **train_stats(ours.checkpoint)})
    return rows
