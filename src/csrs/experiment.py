"""Experiments: train and certify every (setting, seed, method, hyperparameters) of a config.

A config (TOML) names data sets with cost matrices, sigma and eps, the methods with their
hyperparameters (a list is a tuning grid), seeds and the certification budget. A run

1. trains every candidate on the training split minus a validation split (the same data and
   budget for every method), skipping checkpoints that are already finished;
   (``tuning.val_fraction = 0``: the whole training split, and no grids);
2. for methods with a grid, certifies each candidate on the validation split and keeps the one
   with the highest Rob_cs among those whose validation Acc is within ``max_acc_drop`` of
   Cohen's (the paper's goal: robustness without giving up accuracy), never looking at the test
   split;
3. certifies the chosen model of every method on the test split: radii at fixed n on the
   examples that ``certify.skip``/``max_examples`` pick (the curves), and with
   ``certify.adaptive_n`` the sequential test at eps on those of ``adaptive_skip``/
   ``adaptive_max_examples`` (by default the whole test split, as the paper's tables count);
   with ``certify.all_candidates``, every candidate of a grid goes through both as well
   (``candidates_test.csv``; the choice remains the validation split's);
4. writes ``summary.csv``, ``report.md`` and the plots.

A method may appear several times as variants, ``[methods."csrs@lam3"]``: each is trained as
its base method (the part before "@") with its own hyperparameters and reported under its own
name.

Re-running the same command after a crash continues: finished checkpoints and result rows are
kept. Cost-blind methods (cohen, macer) are trained once per data set and seed, and certified
for each cost matrix.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from csrs.progress import write

__all__ = ["ExperimentConfig", "Setting", "base_method", "demo_config", "load_config",
           "parse_config", "run_experiment"]

# Methods that never see the cost matrix: trained once per data set, certified per cost.
COST_BLIND = ("cohen", "macer", "smoothadv")
KNOWN_METHODS = ("cohen", "cohen-r", "macer", "csrs", "margin-cs", "smoothadv", "smoothadv-cs")
# A method variant, "csrs@lam3": the base method (trained as such) under a name of its own, so
# that one config can hold several fixed settings of a method as separate rows.
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
METRICS = ("acc", "rob_cs", "rob_cs_std", "rob_non_std", "clean_cost", "cert_cost",
           "cert_cost_sensitive", "recall", "precision")
# What the sequential test decides at eps (no radii, so no Rob_cs^(std)).
ADAPTIVE_METRICS = ("acc", "rob_cs", "rob_non_std", "mean_samples")
SUMMARY_COLUMNS = ("dataset", "cost", "method", *METRICS, "acc_sd", "rob_cs_sd",
                   "cert_cost_sd", "seeds", "hparams", "examples", "sensitive",
                   "adaptive_acc", "adaptive_rob_cs", "adaptive_rob_non_std",
                   "adaptive_mean_samples", "adaptive_examples")
# Validation certification draws its own noise: with the test's seed, the validation examples
# (train-split indices) would reuse the noise blocks of the test examples with the same index.
VALIDATION_NOISE_SEED = 1


def base_method(name: str) -> str:
    """Returns the method that trains ``name``: "csrs" for the variant "csrs@lam3" and for
    "csrs" itself."""
    return name.partition("@")[0]


@dataclass(frozen=True)
class Setting:
    """One data set with one cost matrix."""

    dataset: str
    cost: str
    arch: str | None = None
    data_dir: str | None = None
    image_size: int | None = None

    @property
    def key(self) -> str:
        safe = (self.cost.replace("->", "to").replace(",", "_").replace(";", "+")
                .replace(":", "x").replace(" ", ""))
        return f"{self.dataset}_{safe}"


@dataclass
class ExperimentConfig:
    """A parsed experiment config (see ``experiments/*.toml``)."""

    name: str
    settings: list[Setting]
    methods: dict[str, dict[str, list[Any]]]
    sigma: float = 0.5
    eps: float = 0.5
    seeds: list[int] = field(default_factory=lambda: [0])
    data_seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)
    certify: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    amp: bool = False
    description: str = ""
    threads: int | None = None
    zhang_evans: dict[str, Any] = field(default_factory=dict)
    launcher: list[str] = field(default_factory=list)


_TRAIN_KEYS = {"epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones",
               "lr_decay", "warmup_epochs"}
# skip/max_examples choose the test examples of fixed-n certification (radii, curves);
# adaptive_skip/adaptive_max_examples those of the sequential test (the paper's tables: the whole
# test split); all_candidates: certify every candidate of a grid on the test split as well.
_CERTIFY_DEFAULTS = {"n0": 100, "n": 100_000, "alpha": 0.001, "bounds": "sound", "batch": 1000,
                     "max_examples": None, "skip": 1, "adaptive_n": 0, "adaptive_skip": 1,
                     "adaptive_max_examples": None, "all_candidates": False}
_TUNING_DEFAULTS = {"val_fraction": 0.2, "n0": 100, "n": 1000, "max_acc_drop": 0.03,
                    "max_examples": None}
_TOP_KEYS = {"name", "description", "sigma", "eps", "seeds", "data_seed", "device", "amp",
             "threads", "settings", "methods", "train", "certify", "tuning", "zhang_evans",
             "launcher"}
# lr and batch_size None: the method's own defaults (Wong & Kolter's Adam, lr 1e-3, batch 50).
_ZHANG_EVANS_DEFAULTS = {"costs": [], "eps": [0.25], "kappa": 1.0, "eps_warmup": 5,
                         "arch": "convex-mlp", "epochs": 20, "lr": None, "batch_size": None}
_SETTING_KEYS = {"dataset", "cost", "costs", "arch", "data_dir", "image_size"}


def _unknown(given: Mapping[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(given) - known)
    if extra:
        raise ValueError(f"{where}: unknown key '{extra[0]}'; known keys: "
                         f"{', '.join(sorted(known))}")


def parse_config(data: Mapping[str, Any], *, name: str = "experiment") -> ExperimentConfig:
    """Validate a config mapping (as read from TOML) and return an ExperimentConfig."""
    from csrs.data import DATASETS
    from csrs.objectives import METHOD_DEFAULTS, resolve_hparams

    _unknown(data, _TOP_KEYS, "config")
    settings = []
    for index, entry in enumerate(data.get("settings", [])):
        where = f"settings[{index}]"
        _unknown(entry, _SETTING_KEYS, where)
        dataset = entry.get("dataset")
        if dataset not in DATASETS:
            raise ValueError(f"{where}: unknown dataset '{dataset}'; choose from: "
                             f"{', '.join(sorted(DATASETS))}")
        costs = entry.get("costs", [entry["cost"]] if "cost" in entry else [])
        if not costs:
            raise ValueError(f"{where}: give 'cost' (a spec) or 'costs' (a list of specs)")
        for cost in costs:
            settings.append(Setting(dataset, str(cost), entry.get("arch"), entry.get("data_dir"),
                                    entry.get("image_size")))
    if not settings:
        raise ValueError("config: no [[settings]] (data set and cost) given")
    methods: dict[str, dict[str, list[Any]]] = {}
    for method, hparams in (data.get("methods") or {}).items():
        base, _, variant = method.partition("@")
        if base not in KNOWN_METHODS:
            raise ValueError(f"methods: unknown method '{base}'; choose from: "
                             f"{', '.join(KNOWN_METHODS)} (a variant: 'csrs@NAME')")
        if "@" in method and not VARIANT_NAME.fullmatch(variant):
            raise ValueError(f"methods: variant '{method}' needs a name after '@' of letters, "
                             f"digits, '.', '_' or '-' (e.g. '{base}@v2')")
        hparams = dict(hparams or {})
        _unknown(hparams, set(METHOD_DEFAULTS[base]), f"methods.{method}")
        methods[method] = {key: value if isinstance(value, list) else [value]
                           for key, value in hparams.items()}
        for candidate in _candidates(methods[method]):
            try:
                resolve_hparams(base, candidate)
            except ValueError as error:
                raise ValueError(f"methods.{method}: {error}") from None
    if not methods:
        raise ValueError("config: no [methods] given")
    train = dict(data.get("train") or {})
    _unknown(train, _TRAIN_KEYS, "train")
    certify = {**_CERTIFY_DEFAULTS, **(data.get("certify") or {})}
    _unknown(certify, set(_CERTIFY_DEFAULTS), "certify")
    for key in ("skip", "adaptive_skip", "max_examples", "adaptive_max_examples"):
        value = certify[key]
        if (value is not None or "skip" in key) and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"certify: {key} must be an integer >= 1"
                             + ("" if "skip" in key else " (leave it out for every example)")
                             + f"; got {value!r}")
    if not isinstance(certify["all_candidates"], bool):
        raise ValueError(f"certify: all_candidates must be true or false; got "
                         f"{certify['all_candidates']!r}")
    tuning = {**_TUNING_DEFAULTS, **(data.get("tuning") or {})}
    _unknown(tuning, set(_TUNING_DEFAULTS), "tuning")
    zhang_evans = {}
    if "zhang_evans" in data:
        zhang_evans = {**_ZHANG_EVANS_DEFAULTS, **data["zhang_evans"]}
        _unknown(zhang_evans, set(_ZHANG_EVANS_DEFAULTS), "zhang_evans")
        zhang_evans["eps"] = [float(e) for e in (zhang_evans["eps"]
                              if isinstance(zhang_evans["eps"], list) else [zhang_evans["eps"]])]
        unknown = set(zhang_evans["costs"]) - {s.cost for s in settings}
        if unknown:
            raise ValueError(f"zhang_evans: cost '{sorted(unknown)[0]}' is not among the "
                             f"settings' costs")
    config = ExperimentConfig(
        name=str(data.get("name", name)), description=str(data.get("description", "")),
        settings=settings, methods=methods, sigma=float(data.get("sigma", 0.5)),
        eps=float(data.get("eps", 0.5)), seeds=[int(s) for s in data.get("seeds", [0])],
        data_seed=int(data.get("data_seed", 0)), train=train, certify=certify, tuning=tuning,
        device=str(data.get("device", "cpu")), amp=bool(data.get("amp", False)),
        threads=int(data["threads"]) if "threads" in data else None, zhang_evans=zhang_evans,
        launcher=shlex.split(data["launcher"]) if isinstance(data.get("launcher"), str)
        else [str(part) for part in data.get("launcher", [])])
    grids = [m for m, grid in methods.items() if any(len(v) > 1 for v in grid.values())]
    if not 0 <= float(tuning["val_fraction"]) < 1:
        raise ValueError(f"tuning: val_fraction must be in [0, 1); got {tuning['val_fraction']}")
    if grids and tuning["val_fraction"] == 0:
        raise ValueError(f"methods.{grids[0]}: a tuning grid needs a validation split "
                         f"(tuning.val_fraction > 0)")
    if not config.sigma > 0 or config.eps < 0 or not config.seeds:
        raise ValueError(f"config: need sigma > 0, eps >= 0 and at least one seed; got sigma "
                         f"{config.sigma}, eps {config.eps}, seeds {config.seeds}")
    return config


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a TOML experiment config."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"experiment config '{path}' does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"experiment config '{path}' is not valid TOML: {error}") from None
    return parse_config(data, name=path.stem)


def demo_config(*, quick: bool = False) -> ExperimentConfig:
    """The embedded default experiment of ``csrs demo`` (``demo.toml`` in the package); with
    ``quick``, a budget of seconds that only checks the pipeline."""
    from importlib.resources import files

    data = tomllib.loads(files("csrs").joinpath("demo.toml").read_text(encoding="utf-8"))
    if quick:
        data["train"] = {**data["train"], "epochs": 1}
        data["certify"] = {**data["certify"], "n0": 10, "n": 50, "max_examples": 24,
                           "adaptive_n": 500}
        data["tuning"] = {**data["tuning"], "n0": 10, "n": 50, "max_examples": 24}
        data["methods"]["cohen-r"] = {"weight": [1.2, 2.0]}
        data["methods"]["csrs"] = {"gamma2": [8.0, 16.0]}
        for method in ("macer", "csrs", "margin-cs"):
            data["methods"][method]["num_noise"] = 2
        data["methods"]["margin-cs"]["lam2"] = 0.3
        data["zhang_evans"] = {**data["zhang_evans"], "epochs": 1, "eps": [0.25]}
    return parse_config(data, name="demo")


# -- running ----------------------------------------------------------------------------------
def _candidates(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    keys = sorted(grid)
    return [dict(zip(keys, values, strict=True))
            for values in itertools.product(*(grid[key] for key in keys))]


def _tag(hparams: Mapping[str, Any], *, sep: str = "_", eq: str = "-") -> str:
    """``gamma1-4_gamma2-16`` for file names; ``_tag(h, sep=", ", eq="=")`` for people."""
    return sep.join(f"{key}{eq}{value:g}" if isinstance(value, (int, float))
                    else f"{key}{eq}{value}" for key, value in sorted(hparams.items()))


@dataclass
class _Run:
    """Where one (setting, seed, method, candidate) lives on disk."""

    checkpoint: Path
    validation: Path
    hparams: dict[str, Any]


class _Progress:
    """One line per stage on stderr (the per-stage tqdm bars come from train/certify)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.done, self.quiet, self.start = total, 0, quiet, time.perf_counter()

    def stage(self, text: str) -> None:
        self.done += 1
        self.note(text)

    def note(self, text: str) -> None:
        if not self.quiet:
            elapsed = time.perf_counter() - self.start
            write(f"[{self.done}/{self.total} {elapsed:5.0f}s] {text}")


def run_experiment(config: ExperimentConfig, out: str | Path, *, quiet: bool = False,
                   log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run (or continue) every training and certification of ``config`` under ``out``; write
    the summary, report and plots; return the summary rows."""
    import torch

    from csrs.adaptive import certify_dataset_adaptive
    from csrs.certify import CertifySettings, certify_dataset, select_indices
    from csrs.checkpoint import load_checkpoint
    from csrs.costs import CostMatrix
    from csrs.data import load_dataset, validation_split
    from csrs.metrics import summarize, summarize_decisions
    from csrs.report import write_experiment_report
    from csrs.results import read_results
    from csrs.smoothing import SmoothedClassifier
    from csrs.training import TrainConfig, TrainingDiverged, train

    if config.threads is not None:
        # Tiny models gain nothing from intra-op threads, and OpenMP threads that wait on a
        # busy core slow every small kernel down by an order of magnitude.
        torch.set_num_threads(config.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.__dict__, default=lambda o: o.__dict__,
                                                indent=2) + "\n")
    tuning, certify_opts = config.tuning, config.certify
    # Cohen first: its validation accuracy is the reference for choosing the others' candidates.
    # Variants after their base method, in the config's order.
    methods = sorted(config.methods,
                     key=lambda m: (KNOWN_METHODS.index(base_method(m)), "@" in m))
    plan = [(s, seed, m) for s in config.settings for seed in config.seeds for m in methods]
    convex = config.zhang_evans
    convex_stages = len(convex.get("eps", [])) * len(convex.get("costs", []))
    all_candidates = certify_opts["all_candidates"]
    sizes = [len(_candidates(config.methods[m])) for _, _, m in plan]
    progress = _Progress(sum(size + (size if all_candidates else 1) for size in sizes)
                         + convex_stages, quiet)
    splits_cache: dict[tuple, Any] = {}
    results: list[dict[str, Any]] = []
    candidates_log: list[dict[str, Any]] = []
    diverged: list[dict[str, Any]] = []  # grid candidates whose training diverged
    candidates_test: list[dict[str, Any]] = []

    def certify_into(checkpoint_path: Path, dataset: Any, cost: CostMatrix, path: Path,
                     n0: int, n: int, max_examples: int | None, skip: int = 1,
                     split: str | None = None, seed: int = 0) -> list[dict]:
        if config.launcher and split is not None:
            argv = ["certify", str(checkpoint_path), "--out", str(path), "--split", split,
                    "--cost", cost.spec(), "--n0", str(n0), "--n", str(n),
                    "--alpha", str(certify_opts["alpha"]), "--bounds", certify_opts["bounds"],
                    "--batch", str(certify_opts["batch"]), "--skip", str(skip),
                    "--device", config.device, "--quiet"]
            argv += ["--max", str(max_examples)] if max_examples else []
            argv += ["--amp"] if config.amp else []
            _launch(config.launcher, argv)
            return read_results(path)
        checkpoint = load_checkpoint(checkpoint_path)
        smoothed = SmoothedClassifier(checkpoint.build_model(config.device), cost.num_classes,
                                      config.sigma, device=config.device, amp=config.amp,
                                      seed=seed)
        settings = CertifySettings(n0=n0, n=n, alpha=certify_opts["alpha"],
                                   bounds=certify_opts["bounds"], sigma=config.sigma, seed=seed,
                                   cost=cost.spec(), noise_block=smoothed.noise_block)
        indices = select_indices(len(dataset), skip=skip, max_examples=max_examples)
        return certify_dataset(smoothed, dataset, cost, settings=settings, indices=indices,
                               batch_size=certify_opts["batch"], out=path, progress=not quiet)

    for setting, seed, method in plan:
        key = (setting.dataset, setting.data_dir, setting.image_size)
        if key not in splits_cache:
            options = {"image_size": setting.image_size} if setting.image_size else {}
            splits_cache[key] = (load_dataset(setting.dataset, setting.data_dir,
                                              seed=config.data_seed, **options), options)
        splits, options = splits_cache[key]
        cost = CostMatrix.parse(setting.cost, splits.num_classes, splits.class_names)
        validation = (validation_split(splits.train, None, tuning["val_fraction"],
                                       config.data_seed)[1] if tuning["val_fraction"] > 0
                      else None)
        runs = []
        for hparams in _candidates(config.methods[method]):
            blind = base_method(method) in COST_BLIND
            train_cost = splits.default_cost if blind else setting.cost
            stem = f"{method}{'-' + _tag(hparams) if hparams else ''}-s{seed}"
            folder = setting.dataset if blind else setting.key
            run = _Run(out / "checkpoints" / folder / f"{stem}.pt",
                       out / "validation" / setting.key / f"{stem}.tsv", hparams)
            done = _finished(run.checkpoint, config.train.get("epochs"))
            progress.stage(f"train {method} {_tag(hparams, sep=', ', eq='=') or '(defaults)'} on "
                           f"{setting.dataset} cost '{train_cost}' seed {seed}"
                           + (" [done]" if done else ""))
            if not done:
                try:
                    _train_measured(
                        _launched_train(config.launcher) if config.launcher else train,
                        TrainConfig(
                            dataset=setting.dataset, method=base_method(method),
                            sigma=config.sigma, out=run.checkpoint, cost=train_cost,
                            arch=setting.arch, data_dir=setting.data_dir, seed=seed,
                            device=config.device, amp=config.amp, resume=True, hparams=hparams,
                            val_fraction=tuning["val_fraction"], data_options=options,
                            data_seed=config.data_seed, **config.train),
                        splits=splits, quiet=quiet)
                except TrainingDiverged as error:
                    # A candidate of a grid that diverges is dropped (and said so), not the run.
                    if len(_candidates(config.methods[method])) == 1:
                        raise
                    progress.note(f"dropped candidate: {error}")
                    diverged.append({"dataset": setting.dataset, "cost": setting.cost,
                                     "method": method, "seed": seed,
                                     "hparams": _tag(hparams, sep=", ", eq="=")})
                    continue
            runs.append(run)
        if not runs:
            raise TrainingDiverged(f"every candidate of {method} diverged on {setting.dataset} "
                                   f"cost '{setting.cost}' seed {seed}")
        chosen = runs[0]
        if validation is not None and (len(runs) > 1 or (method == "cohen"
                                                          and len(config.methods) > 1)):
            scores = []
            for run in runs:
                rows = certify_into(run.checkpoint, validation, cost, run.validation,
                                    tuning["n0"], tuning["n"], tuning["max_examples"],
                                    seed=VALIDATION_NOISE_SEED)
                scores.append(summarize(rows, config.eps))
                candidates_log.append({"dataset": setting.dataset, "cost": setting.cost,
                                       "method": method, "seed": seed,
                                       "hparams": _tag(run.hparams, sep=", ", eq="="),
                                       **scores[-1]})
            reference = next((c["acc"] for c in candidates_log
                              if c["method"] == "cohen" and c["seed"] == seed
                              and c["dataset"] == setting.dataset
                              and c["cost"] == setting.cost), None)
            chosen = runs[_choose(scores, reference, tuning["max_acc_drop"])]
        # The chosen candidate; with all_candidates every one (the paper's Table 5 and Figure 1c
        # print the test split's numbers of every point of a sweep). The choice stays the
        # validation split's.
        for run in runs if all_candidates else [chosen]:
            test_path = out / "results" / setting.key / f"{run.checkpoint.stem}.tsv"
            progress.stage(f"certify {method} {_tag(run.hparams, sep=', ', eq='=') or 'defaults'}"
                           f" on the test split of {setting.dataset} for cost '{setting.cost}'")
            rows = certify_into(run.checkpoint, splits.test, cost, test_path,
                                certify_opts["n0"], certify_opts["n"],
                                certify_opts["max_examples"], certify_opts["skip"], split="test")
            scores = summarize(rows, config.eps)
            del rows
            adaptive = None
            if certify_opts["adaptive_n"]:
                # The sequential test at eps with up to adaptive_n samples: the paper's
                # n = 100,000 for the price of a few thousand samples per example, so
                # affordable on the whole test split, which the paper's tables count.
                checkpoint = load_checkpoint(run.checkpoint)
                smoothed = SmoothedClassifier(checkpoint.build_model(config.device),
                                              cost.num_classes, config.sigma,
                                              device=config.device, amp=config.amp)
                adaptive = summarize_decisions(certify_dataset_adaptive(
                    smoothed, splits.test, cost, eps=config.eps, alpha=certify_opts["alpha"],
                    n0=certify_opts["n0"], n_max=certify_opts["adaptive_n"],
                    batch_size=certify_opts["batch"],
                    indices=select_indices(len(splits.test), skip=certify_opts["adaptive_skip"],
                                           max_examples=certify_opts["adaptive_max_examples"]),
                    out=test_path.with_name(test_path.stem + "-adaptive.tsv"),
                    progress=not quiet))
            if all_candidates:
                candidates_test.append({
                    "dataset": setting.dataset, "cost": setting.cost, "method": method,
                    "seed": seed, "hparams": _tag(run.hparams, sep=", ", eq="="),
                    "chosen": run is chosen, **scores,
                    **{f"adaptive_{key}": value for key, value in (adaptive or {}).items()
                       if key in (*ADAPTIVE_METRICS, "examples")}})
            if run is chosen:
                result = {"setting": setting, "seed": seed, "method": method,
                          "hparams": _tag(run.hparams, sep=", ", eq="="), "path": test_path,
                          "checkpoint": run.checkpoint, "summary": scores}
                if adaptive is not None:
                    result["adaptive"] = adaptive
        results.append(result)
    convex_rows = []
    if config.zhang_evans:
        convex_rows = _zhang_evans_comparison(config, out, results, splits_cache, progress,
                                              quiet)
    summary = _aggregate(results)
    tests = [{"key": r["setting"].key, "dataset": r["setting"].dataset,
              "cost": r["setting"].cost, "method": r["method"], "seed": r["seed"],
              "rows": read_results(r["path"])} for r in results]
    write_experiment_report(out, title=config.name, description=config.description,
                            sigma=config.sigma, eps=config.eps, summary=summary, tests=tests,
                            candidates=candidates_log, columns=SUMMARY_COLUMNS,
                            convex=convex_rows, certify=certify_opts,
                            candidates_test=candidates_test, diverged=diverged)
    if log is not None:
        log(f"wrote {out / 'summary.csv'} and {out / 'report.md'}")
    return summary


def _finished(checkpoint: Path, epochs: int | None) -> bool:
    from csrs.checkpoint import load_checkpoint

    return checkpoint.is_file() and load_checkpoint(checkpoint).meta.get("epoch") == epochs


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


def _train_measured(train: Callable[..., Any], train_config: Any, *, splits: Any,
                    quiet: bool) -> None:
    """Train, then keep seconds per epoch and the process's peak RSS beside the checkpoint
    (``<checkpoint>.stats.json``): the cost columns of the Table 4 comparison."""
    from csrs.checkpoint import load_checkpoint

    resettable = _peak_rss_reset()
    train(train_config, splits=splits, progress=not quiet)
    # Memory is this process's: meaningless when a launcher trained in other processes.
    in_process = getattr(train, "__name__", "") != "train_launched"
    history = load_checkpoint(train_config.out).training.get("history", [])
    seconds = [entry["seconds"] for entry in history if "seconds" in entry]
    stats = {"seconds_per_epoch": float(np.median(seconds)) if seconds else float("nan"),
             "peak_rss_mb": _peak_rss_mb() if resettable and in_process else float("nan")}
    Path(str(train_config.out) + ".stats.json").write_text(json.dumps(stats) + "\n")


def _launch(launcher: list[str], argv: list[str]) -> None:
    """Run ``csrs ARGV`` under ``launcher`` (e.g. torchrun); a failure ends the experiment."""
    executable = Path(sys.executable).with_name("csrs")
    command = [*launcher, "--no-python", "--", str(executable) if executable.exists() else "csrs",
               *argv]
    finished = subprocess.run(command, check=False)
    if finished.returncode != 0:
        raise ValueError(f"'{' '.join(command[:8])} ...' failed with exit status "
                         f"{finished.returncode}; re-run the experiment to continue")


def _launched_train(launcher: list[str]) -> Callable[..., Any]:
    """A stand-in for :func:`csrs.training.train` that runs ``csrs train`` under ``launcher``
    (torchrun: DistributedDataParallel over its processes); the checkpoint is its result."""

    def train_launched(config: Any, *, splits: Any = None, progress: bool = True) -> None:
        argv = ["train", "--dataset", config.dataset, "--method", config.method,
                "--sigma", str(config.sigma), "--epochs", str(config.epochs),
                "--out", str(config.out), "--batch-size", str(config.batch_size),
                "--lr", str(config.lr), "--momentum", str(config.momentum),
                "--weight-decay", str(config.weight_decay), "--lr-decay", str(config.lr_decay),
                "--seed", str(config.seed), "--data-seed", str(config.data_seed),
                "--val-fraction", str(config.val_fraction), "--device", config.device,
                "--warmup-epochs", str(config.warmup_epochs), "--resume"]
        optional = {"--cost": config.cost, "--arch": config.arch, "--data-dir": config.data_dir,
                    "--image-size": config.data_options.get("image_size"),
                    "--milestones": None if config.milestones is None
                    else ",".join(map(str, config.milestones))}
        argv += [part for flag, value in optional.items() if value is not None
                 for part in (flag, str(value))]
        for name, value in config.hparams.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        argv += ["--amp"] if config.amp else []
        argv += [] if progress else ["--quiet"]
        _launch(launcher, argv)

    return train_launched


def _train_stats(checkpoint: Path) -> dict[str, float]:
    path = Path(str(checkpoint) + ".stats.json")
    if path.is_file():
        return json.loads(path.read_text())
    return {"seconds_per_epoch": float("nan"), "peak_rss_mb": float("nan")}


def _zhang_evans_comparison(config: ExperimentConfig, out: Path, results: list[dict[str, Any]],
                            splits_cache: dict, progress: _Progress,
                            quiet: bool) -> list[dict[str, Any]]:
    """Table 4 analogue: Zhang & Evans (convex bounds, deterministic) at each eps against
    CS-RS's certificates of the same setting at the same eps."""
    from csrs.checkpoint import load_checkpoint
    from csrs.convex import certify_dataset_convex
    from csrs.costs import CostMatrix
    from csrs.metrics import summarize, summarize_decisions
    from csrs.results import read_results
    from csrs.training import TrainConfig, train

    options = config.zhang_evans
    rows = []
    for setting in config.settings:
        if setting.cost not in options["costs"]:
            continue
        splits, data_options = next(value for key, value in splits_cache.items()
                                    if key[0] == setting.dataset)
        cost = CostMatrix.parse(setting.cost, splits.num_classes, splits.class_names)
        for eps in options["eps"]:
            checkpoint = out / "checkpoints" / setting.key / f"zhang-evans-eps-{eps:g}.pt"
            done = _finished(checkpoint, options["epochs"])
            progress.stage(f"train zhang-evans eps={eps:g} on {setting.dataset} cost "
                           f"'{setting.cost}'" + (" [done]" if done else ""))
            if not done:
                _train_measured(train, TrainConfig(
                    dataset=setting.dataset, method="zhang-evans", sigma=config.sigma,
                    epochs=options["epochs"], out=checkpoint, cost=setting.cost,
                    arch=options["arch"], data_dir=setting.data_dir, lr=options["lr"],
                    batch_size=options["batch_size"], device=config.device,
                    resume=True, val_fraction=config.tuning["val_fraction"],
                    data_options=data_options, data_seed=config.data_seed,
                    hparams={"eps": eps, "kappa": options["kappa"],
                             "eps_warmup": options["eps_warmup"]}),
                    splits=splits, quiet=quiet)
            model = load_checkpoint(checkpoint).build_model(config.device)
            decided = certify_dataset_convex(
                model, splits.test, cost, eps=eps, indices=None,
                out=out / "results" / setting.key / f"zhang-evans-eps-{eps:g}.tsv",
                progress=not quiet)
            scores = summarize_decisions(decided)
            rows.append({"dataset": setting.dataset, "cost": setting.cost,
                         "method": "Zhang & Evans (convex)", "eps": eps, "acc": scores["acc"],
                         "rob_cs": scores["rob_cs"], **_train_stats(checkpoint)})
        for result in results:
            if result["method"] == "csrs" and result["setting"] == setting:
                smoothed = read_results(result["path"])
                for eps in options["eps"]:
                    scores = summarize(smoothed, eps)
                    rows.append({"dataset": setting.dataset, "cost": setting.cost,
                                 "method": "CS-RS (smoothing)", "eps": eps,
                                 "acc": scores["acc"], "rob_cs": scores["rob_cs"],
                                 **_train_stats(result["checkpoint"])})
                break
    return rows


def _choose(scores: list[dict[str, Any]], reference_acc: float | None,
            max_acc_drop: float) -> int:
    """Index of the candidate with the highest validation Rob_cs among those whose Acc is within
    ``max_acc_drop`` of the reference (Cohen's); the most accurate one if none qualifies."""
    accs = [s["acc"] for s in scores]
    floor = (reference_acc if reference_acc is not None else max(accs)) - max_acc_drop
    eligible = [i for i, s in enumerate(scores) if s["acc"] >= floor]
    if not eligible:
        return int(np.argmax(accs))
    return max(eligible, key=lambda i: (_nan_low(scores[i]["rob_cs"]), scores[i]["acc"]))


def _nan_low(value: float) -> float:
    return -1.0 if math.isnan(value) else value


def _aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of each (setting, method)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault((result["setting"], result["method"]), []).append(result)
    rows = []
    for (setting, method), group in groups.items():
        summaries = [g["summary"] for g in group]
        row = {"dataset": setting.dataset, "cost": setting.cost, "method": method,
               "seeds": len(group), "hparams": " / ".join(sorted({g["hparams"] for g in group})),
               "examples": summaries[0]["examples"], "sensitive": summaries[0]["sensitive"]}
        for metric in METRICS:
            values = np.array([s[metric] for s in summaries], dtype=float)
            if np.isnan(values).all():  # e.g. a seed class's recall on a 10-class task
                continue
            row[metric] = float(np.mean(values))
            if metric in ("acc", "rob_cs", "cert_cost"):
                row[f"{metric}_sd"] = float(np.std(values)) if len(values) > 1 else 0.0
        if all("adaptive" in g for g in group):
            for metric in ADAPTIVE_METRICS:
                row[f"adaptive_{metric}"] = float(np.mean([g["adaptive"][metric]
                                                           for g in group]))
            row["adaptive_examples"] = group[0]["adaptive"]["examples"]
        rows.append(row)
    return rows
