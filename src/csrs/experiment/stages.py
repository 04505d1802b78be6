"""The stages of an experiment, in order, each idempotent:

1. **train** every checkpoint of the plan (a finished one is skipped, a partial one resumed; a
   candidate of a grid whose training diverges is dropped, and a marker beside its checkpoint
   keeps it dropped on the next run);
2. **score** the candidates on the validation split (noise seed :data:`VALIDATION_NOISE_SEED`;
   finished results files are read back, partial ones resumed);
3. **choose** one candidate per (setting, seed, method) (:func:`csrs.experiment.choose.choose`);
4. **certify** the chosen ones (with ``certify.all_candidates`` every candidate) on the test
   split: radii at fixed n, and with ``certify.adaptive_n`` the sequential test at eps;
5. **aggregate** over seeds (:func:`csrs.experiment.aggregate.aggregate`);
6. **report** (:mod:`csrs.experiment.report`), with the Zhang & Evans comparison where asked.

A killed experiment run again goes through the stages once more and finds the work of each
already done, so it continues in the stage where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from csrs.experiment.aggregate import RunResult, aggregate
from csrs.experiment.choose import choose
from csrs.experiment.config import ExperimentConfig, Setting
from csrs.experiment.launch import (
    CertifyJob,
    InProcess,
    Launched,
    certify_in_process,
    launcher_for,
    train_measured,
)
from csrs.experiment.plan import Run, by_group, make_plan, train_config, write_plan
from csrs.experiment.report import Outcome, write_experiment_report
from csrs.experiment.splits import ExperimentData
from csrs.progress import write

__all__ = ["TEST_NOISE_SEED", "VALIDATION_NOISE_SEED", "run_experiment"]

TEST_NOISE_SEED = 0
# Validation certification draws its own noise: with the test's seed, the validation examples
# (train-split indices) would reuse the noise blocks of the test examples with the same index.
VALIDATION_NOISE_SEED = 1


class Progress:
    """One line per stage on stderr (the per-stage bars come from train/certify)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.done, self.quiet, self.start = total, 0, quiet, time.perf_counter()

    def stage(self, text: str) -> None:
        self.done += 1
        self.note(text)

    def note(self, text: str) -> None:
        if not self.quiet:
            elapsed = time.perf_counter() - self.start
            write(f"[{self.done}/{self.total} {elapsed:5.0f}s] {text}")


def _finished(checkpoint: Path, epochs: int) -> bool:
    from csrs.checkpoint import load_checkpoint

    return checkpoint.is_file() and load_checkpoint(checkpoint).meta.get("epoch") == epochs


def _diverged_marker(checkpoint: Path) -> Path:
    return Path(str(checkpoint) + ".diverged.json")


def _settings_record(config: Any) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config), default=str))


def train_all(plan: list[Run], config: ExperimentConfig, data: ExperimentData,
              strategy: InProcess | Launched, progress: Progress) -> dict[Path, str]:
    """Stage 1: trains each checkpoint of the plan once; returns the diverged ones with why.
    A diverged candidate that is its method's only one ends the experiment."""
    from csrs.training import TrainingDiverged

    diverged: dict[Path, str] = {}
    trained: set[Path] = set()
    for run in plan:
        if run.checkpoint in trained:  # a cost-blind model, shared by the data set's costs
            continue
        trained.add(run.checkpoint)
        settings = train_config(run, config)
        marker = _diverged_marker(run.checkpoint)
        record = _settings_record(settings)
        if marker.is_file() and json.loads(marker.read_text())["settings"] == record:
            diverged[run.checkpoint] = json.loads(marker.read_text())["message"]
            progress.stage(f"train {run.method} {run.label or '(defaults)'} seed {run.seed} "
                           f"[diverged before: {diverged[run.checkpoint]}]")
            continue
        done = _finished(run.checkpoint, settings.epochs)
        cost = "its data set's cost" if run.cost_blind else f"cost '{run.setting.cost}'"
        progress.stage(f"train {run.method} {run.label or '(defaults)'} on "
                       f"{run.setting.dataset}, {cost}, seed {run.seed}"
                       + (" [done]" if done else ""))
        if done:
            continue
        try:
            train_measured(strategy, settings, splits=data.splits(run.setting),
                           progress=not progress.quiet)
        except TrainingDiverged as error:
            if len([r for r in plan if r.group == run.group]) == 1:
                raise
            progress.note(f"dropped candidate: {error}")
            marker.write_text(json.dumps({"message": str(error), "settings": record}) + "\n")
            diverged[run.checkpoint] = str(error)
    return diverged


def _surviving(plan: list[Run], diverged: dict[Path, str]) -> list[Run]:
    from csrs.training import TrainingDiverged

    kept = [run for run in plan if run.checkpoint not in diverged]
    for (setting, seed, method), runs in by_group(plan).items():
        if all(run.checkpoint in diverged for run in runs):
            raise TrainingDiverged(f"every candidate of {method} diverged on {setting.dataset} "
                                   f"cost '{setting.cost}' seed {seed}")
    return kept


def _needs_validation(runs: list[Run], config: ExperimentConfig) -> bool:
    """A grid needs scores to choose from; Cohen's accuracy is the others' reference."""
    if config.tuning["val_fraction"] == 0:
        return False
    return len(runs) > 1 or (runs[0].method == "cohen" and len(config.methods) > 1)


def _certifications(plan: list[Run], config: ExperimentConfig) -> int:
    """How many validation and test certifications the plan asks for."""
    groups = by_group(plan)
    validation = sum(len(runs) for runs in groups.values() if _needs_validation(runs, config))
    return validation + (len(plan) if config.certify["all_candidates"] else len(groups))


def score_validation(plan: list[Run], config: ExperimentConfig, data: ExperimentData,
                     progress: Progress) -> dict[Path, dict[str, Any]]:
    """Stage 2: the validation summary at eps of every candidate that a choice needs, by the
    run's validation file."""
    from csrs.metrics import summarize

    tuning, scored = config.tuning, {}
    for runs in by_group(plan).values():
        if not _needs_validation(runs, config):
            continue
        for run in runs:
            progress.stage(f"validate {run.method} {run.label or '(defaults)'} on "
                           f"{run.setting.dataset}, cost '{run.setting.cost}', seed {run.seed}")
            job = CertifyJob(run.checkpoint, run.validation, data.cost(run.setting),
                             config.sigma, VALIDATION_NOISE_SEED, tuning["n0"], tuning["n"],
                             config.certify["alpha"], config.certify["bounds"],
                             config.certify["batch"], max_examples=tuning["max_examples"])
            results = certify_in_process(job, data.validation(run.setting),
                                         device=config.device, amp=config.amp,
                                         progress=not progress.quiet)
            scored[run.validation] = {
                "dataset": run.setting.dataset, "cost": run.setting.cost, "method": run.method,
                "seed": run.seed, "hparams": run.label, **summarize(results, config.eps)}
    return scored


def choose_all(plan: list[Run], scored: dict[Path, dict[str, Any]],
               tuning: dict[str, Any]) -> dict[tuple[Setting, int, str], Run]:
    """Stage 3: the chosen run of each group, from the validation scores alone; marks the
    scored rows ``chosen``, with the reason."""
    groups = by_group(plan)
    chosen = {}
    for (setting, seed, method), runs in groups.items():
        if runs[0].validation not in scored:  # one candidate, nothing to choose
            chosen[setting, seed, method] = runs[0]
            continue
        rows = [scored[run.validation] for run in runs]
        cohen = groups.get((setting, seed, "cohen"), [])
        reference = (scored[cohen[0].validation]["acc"]
                     if cohen and cohen[0].validation in scored else None)
        decision = choose(rows, reference_acc=reference, max_acc_drop=tuning["max_acc_drop"],
                          select=tuning["select"])
        for index, row in enumerate(rows):
            row["chosen"] = index == decision.index
            row["reason"] = decision.reason if index == decision.index else ""
        chosen[setting, seed, method] = runs[decision.index]
    return chosen


def _sequential(run: Run, config: ExperimentConfig, data: ExperimentData,
                quiet: bool) -> dict[str, Any]:
    """The sequential test with up to ``certify.adaptive_n`` samples, one test per example
    deciding every radius of ``certify.adaptive_eps``: the paper's n = 100,000 for the price of
    a few thousand samples per example, so affordable on the whole test split, which the paper's
    tables count. Returns its summary at eps (with the results file's decisions under
    ``arrays``, for the curves)."""
    from csrs.certify import (
        SequentialSettings,
        certify_dataset,
        decisions_of,
        model_fingerprint,
        select_indices,
    )
    from csrs.checkpoint import load_checkpoint
    from csrs.metrics import summarize
    from csrs.smoothing import SmoothedClassifier

    options, cost = config.certify, data.cost(run.setting)
    test = data.splits(run.setting).test
    checkpoint = load_checkpoint(run.checkpoint)
    smoothed = SmoothedClassifier(checkpoint.build_model(config.device), cost.num_classes,
                                  config.sigma, device=config.device, seed=TEST_NOISE_SEED,
                                  amp=config.amp)
    settings = SequentialSettings(eps=tuple(options["adaptive_eps"]), alpha=options["alpha"],
                                  n0=options["n0"], n_max=options["adaptive_n"])
    rows = certify_dataset(
        smoothed, test, cost, settings=settings, batch_size=options["batch"],
        indices=select_indices(len(test), skip=options["adaptive_skip"],
                               max_examples=options["adaptive_max_examples"]),
        out=run.adaptive, progress=not quiet,
        fingerprint=model_fingerprint(checkpoint.model_state), checkpoint=run.checkpoint)
    arrays = decisions_of(rows, cost, settings)
    return {**summarize(arrays, config.eps), "arrays": arrays}


def certify_test(plan: list[Run], chosen: dict[tuple[Setting, int, str], Run],
                 config: ExperimentConfig, data: ExperimentData,
                 strategy: InProcess | Launched, progress: Progress) -> list[RunResult]:
    """Stage 4: the test split's fixed-n summary (and sequential test) of the chosen runs, or
    of every run with ``certify.all_candidates`` (the choice stays the validation split's)."""
    from csrs.metrics import summarize

    options, results = config.certify, []
    for group, runs in by_group(plan).items():
        for run in runs if options["all_candidates"] else [chosen[group]]:
            progress.stage(f"certify {run.method} {run.label or '(defaults)'} on the test split "
                           f"of {run.setting.dataset}, cost '{run.setting.cost}', seed "
                           f"{run.seed}")
            job = CertifyJob(run.checkpoint, run.test, data.cost(run.setting), config.sigma,
                             TEST_NOISE_SEED, options["n0"], options["n"], options["alpha"],
                             options["bounds"], options["batch"], options["skip"],
                             options["max_examples"])
            rows = strategy.certify_test(job, data.splits(run.setting).test,
                                         progress=not progress.quiet)
            adaptive = (_sequential(run, config, data, progress.quiet)
                        if options["adaptive_n"] else None)
            results.append(RunResult(
                run.setting.dataset, run.setting.cost, run.method, run.seed, run.label,
                summarize(rows, config.eps), adaptive, run is chosen[group], run.test,
                run.checkpoint))
    return results


def run_experiment(config: ExperimentConfig, out: str | Path, *, quiet: bool = False,
                   log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Runs (or continues) every stage of ``config`` under ``out``; writes summary.csv,
    report.md and the plots; returns the summary rows (one per setting and method)."""
    if config.threads is not None:
        import torch

        # Tiny models gain nothing from intra-op threads, and OpenMP threads that wait on a
        # busy core slow every small kernel down by an order of magnitude.
        torch.set_num_threads(config.threads)
    data = ExperimentData(config)  # a missing file or a bad cost fails before anything runs
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2, default=str) + "\n")
    plan = make_plan(config, out)
    write_plan(plan, out / "plan.json")
    strategy = launcher_for(config.launcher, config.device, config.amp)
    convex = len(config.zhang_evans.get("eps", [])) * len(
        {s for s in config.settings if s.cost in config.zhang_evans.get("costs", [])})
    progress = Progress(len({run.checkpoint for run in plan}) + _certifications(plan, config)
                        + convex, quiet)

    diverged = train_all(plan, config, data, strategy, progress)
    dropped = [run for run in plan if run.checkpoint in diverged]
    plan = _surviving(plan, diverged)
    progress.total = progress.done + _certifications(plan, config) + convex
    scored = score_validation(plan, config, data, progress)
    chosen = choose_all(plan, scored, config.tuning)
    tests = certify_test(plan, chosen, config, data, strategy, progress)
    summary = aggregate([test for test in tests if test.chosen])
    compared = []
    if config.zhang_evans:
        from csrs.experiment.zhang_evans import zhang_evans_comparison

        compared = zhang_evans_comparison(config, out, tests, data, progress)
    write_experiment_report(out, config, Outcome(
        summary=summary, tests=tests, candidates=list(scored.values()), convex=compared,
        costs={(setting.dataset, setting.cost): data.cost(setting) for setting in config.settings},
        diverged=[{"dataset": run.setting.dataset, "cost": run.setting.cost,
                   "method": run.method, "seed": run.seed, "hparams": run.label,
                   "reason": diverged[run.checkpoint]} for run in dropped]))
    if log is not None:
        log(f"wrote {out / 'summary.csv'} and {out / 'report.md'}")
    return summary
