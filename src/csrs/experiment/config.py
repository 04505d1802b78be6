"""An experiment config (TOML), checked at the boundary: every unknown, missing or ill-typed key
is one line naming it, the value and what was expected, before anything is trained.

Top level: ``name``, ``description``, ``sigma`` (0.5), ``eps`` (0.5), ``seeds`` ([0]),
``data_seed`` (0), ``device`` ("cpu"), ``amp`` (false), ``threads`` (torch's), ``launcher`` (a
command such as "torchrun --standalone --nproc_per_node=4"; none: this process), and the tables:

- ``[[settings]]``: ``dataset``, ``cost`` or ``costs`` (cost specs), ``arch``, ``data_dir``,
  ``image_size``;
- ``[methods.NAME]``: a method of :data:`KNOWN_METHODS` or a variant ``NAME@TAG``, with its
  hyperparameters; a list of values is a tuning grid;
- ``[train]``: the schedule of every run, the keys of :func:`csrs.training_config.schedule_keys`
  (``epochs`` required; ``batch_size``, ``optimizer``, ``lr``, ``momentum``, ``weight_decay``,
  ``milestones``, ``lr_decay``, ``warmup_epochs``);
- ``[certify]``: the test split: ``n0``, ``n``, ``alpha``, ``bounds``, ``batch``; the examples of
  the fixed-n radii (``skip``, ``max_examples``); the sequential test with up to ``adaptive_n``
  samples (0: none) on ``adaptive_skip``/``adaptive_max_examples``, deciding every radius of
  ``adaptive_eps`` (increasing, with eps among them; default [eps]) in one test per example, from
  which the tables and, with several radii, the curves come; and ``all_candidates`` (every
  candidate of a grid on the test split too);
- ``[tuning]``: the validation split (``val_fraction``; 0: none, and no grids), its ``n0``, ``n``
  and ``max_examples``, and the choice: ``select`` ("rob_cs" or "cert_cost") among the candidates
  within ``max_acc_drop`` of Cohen's validation Acc (:mod:`csrs.experiment.choose`);
- ``[zhang_evans]``: the Table 4 comparison (``costs``, ``eps``, ``kappa``, ``eps_warmup``,
  ``arch``, ``epochs``, ``lr``, ``batch_size``).

The defaults are those of the tables below.
"""

from __future__ import annotations

import itertools
import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csrs.schema import (
    BOOL,
    FRACTION,
    INTEGER,
    NONNEGATIVE,
    NONNEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    PROBABILITY,
    TEXT,
    TEXTS,
    Key,
    Kind,
    choice,
    read_table,
)
from csrs.training_config import schedule_keys

__all__ = ["COST_BLIND", "KNOWN_METHODS", "SELECT_RULES", "ExperimentConfig", "Setting",
           "base_method", "candidates", "demo_config", "demo_summary", "load_config",
           "parse_config"]

# Methods that never see the cost matrix: trained once per data set, certified per cost.
COST_BLIND = ("cohen", "macer", "smoothadv")
KNOWN_METHODS = ("cohen", "cohen-r", "macer", "csrs", "margin-cs", "smoothadv", "smoothadv-cs")
# A method variant, "csrs@lam3": the base method (trained as such) under a name of its own, so
# that one config can hold several fixed settings of a method as separate rows.
VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# How a grid's candidate is chosen on the validation split (see csrs.experiment.choose).
SELECT_RULES = ("rob_cs", "cert_cost")

_TABLE = Kind("a table", lambda v: isinstance(v, Mapping))
_SEEDS = Kind("a non-empty list of integers", lambda v: isinstance(v, list) and bool(v) and all(
    INTEGER.accept(seed) for seed in v))
_LAUNCHER = Kind("a command, as a string or a list of strings (e.g. \"torchrun "
                 "--nproc_per_node=4\")", lambda v: TEXT.accept(v) or TEXTS.accept(v),
                 lambda v: shlex.split(v) if isinstance(v, str) else list(v))
_RADII = Kind("a number > 0 or a list of them", lambda v: POSITIVE.accept(v) or (
    isinstance(v, list) and bool(v) and all(POSITIVE.accept(e) for e in v)),
    lambda v: [float(e) for e in (v if isinstance(v, list) else [v])])
_GRID = Kind("an increasing list of radii >= 0", lambda v: isinstance(v, list) and bool(v) and all(
    NONNEGATIVE.accept(e) for e in v) and all(b > a for a, b in zip(v, v[1:], strict=False)),
    lambda v: [float(e) for e in v])

_TOP = {"name": Key(TEXT), "description": Key(TEXT, ""), "sigma": Key(POSITIVE, 0.5),
        "eps": Key(NONNEGATIVE, 0.5), "seeds": Key(_SEEDS, [0]), "data_seed": Key(INTEGER, 0),
        "device": Key(TEXT, "cpu"), "amp": Key(BOOL, False), "threads": Key(POSITIVE_INT),
        "launcher": Key(_LAUNCHER, []),
        "settings": Key(Kind("a list of tables ([[settings]])", lambda v: isinstance(v, list)
                             and all(isinstance(entry, Mapping) for entry in v)), []),
        "methods": Key(_TABLE, {}), "train": Key(_TABLE, {}), "certify": Key(_TABLE, {}),
        "tuning": Key(_TABLE, {}), "zhang_evans": Key(_TABLE)}
_SETTING = {"dataset": Key(TEXT, required=True), "cost": Key(TEXT), "costs": Key(TEXTS),
            "arch": Key(TEXT), "data_dir": Key(TEXT), "image_size": Key(POSITIVE_INT)}
# skip/max_examples choose the test examples of fixed-n certification (radii, R1 vs R2);
# adaptive_skip/adaptive_max_examples those of the sequential test (the paper's tables and
# curves: the whole test split), which decides the radii of adaptive_eps (default: eps alone) in
# one test per example; all_candidates: certify every candidate of a grid on the test split too.
_CERTIFY = {"n0": Key(POSITIVE_INT, 100), "n": Key(POSITIVE_INT, 100_000),
            "alpha": Key(PROBABILITY, 0.001), "bounds": Key(choice("sound", "paper"), "sound"),
            "batch": Key(POSITIVE_INT, 1000), "max_examples": Key(POSITIVE_INT),
            "skip": Key(POSITIVE_INT, 1), "adaptive_n": Key(NONNEGATIVE_INT, 0),
            "adaptive_skip": Key(POSITIVE_INT, 1), "adaptive_max_examples": Key(POSITIVE_INT),
            "adaptive_eps": Key(_GRID), "all_candidates": Key(BOOL, False)}
_TUNING = {"val_fraction": Key(FRACTION, 0.2), "n0": Key(POSITIVE_INT, 100),
           "n": Key(POSITIVE_INT, 1000), "max_acc_drop": Key(NONNEGATIVE, 0.03),
           "max_examples": Key(POSITIVE_INT), "select": Key(choice(*SELECT_RULES), "rob_cs")}
# lr and batch_size unset: the method's own defaults (Wong & Kolter's Adam, lr 1e-3, batch 50).
_ZHANG_EVANS = {"costs": Key(TEXTS, []), "eps": Key(_RADII, [0.25]),
                "kappa": Key(POSITIVE, 1.0), "eps_warmup": Key(NONNEGATIVE_INT, 5),
                "arch": Key(TEXT, "convex-mlp"), "epochs": Key(POSITIVE_INT, 20),
                "lr": Key(POSITIVE), "batch_size": Key(POSITIVE_INT)}


def candidates(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Returns every combination of a grid's values, keys in sorted order."""
    keys = sorted(grid)
    return [dict(zip(keys, values, strict=True))
            for values in itertools.product(*(grid[key] for key in keys))]


def base_method(name: str) -> str:
    """Returns the method that trains ``name``: "csrs" for the variant "csrs@lam3" and for
    "csrs" itself."""
    return name.partition("@")[0]


@dataclass(frozen=True)
class Setting:
    """One data set with one cost matrix (a spec, see :meth:`csrs.costs.CostMatrix.parse`)."""

    dataset: str
    cost: str
    arch: str | None = None
    data_dir: str | None = None
    image_size: int | None = None

    @property
    def key(self) -> str:
        """A name for files: ``digits_3to5x10_8x4``; a matrix file's stem (``digits_graded``)."""
        cost = self.cost
        if cost.lower().endswith((".csv", ".json", ".npy")):
            cost = Path(cost).stem
        safe = (cost.replace("->", "to").replace(",", "_").replace(";", "+")
                .replace(":", "x").replace(" ", ""))
        return f"{self.dataset}_{re.sub(r'[^A-Za-z0-9._+-]', '_', safe)}"


@dataclass
class ExperimentConfig:
    """A parsed experiment config (see ``experiments/*.toml``); ``methods`` maps each method
    (or variant) to its hyperparameters, each a list of candidate values (a tuning grid)."""

    name: str
    settings: list[Setting]
    methods: dict[str, dict[str, list[Any]]]
    train: dict[str, Any]
    sigma: float = 0.5
    eps: float = 0.5
    seeds: list[int] = field(default_factory=lambda: [0])
    data_seed: int = 0
    certify: dict[str, Any] = field(default_factory=lambda: read_table({}, _CERTIFY, "certify"))
    tuning: dict[str, Any] = field(default_factory=lambda: read_table({}, _TUNING, "tuning"))
    device: str = "cpu"
    amp: bool = False
    description: str = ""
    threads: int | None = None
    zhang_evans: dict[str, Any] = field(default_factory=dict)
    launcher: list[str] = field(default_factory=list)


def _settings(entries: list[Mapping[str, Any]]) -> list[Setting]:
    from csrs.data import DATASETS
    from csrs.models import ARCHITECTURES

    settings = []
    for index, entry in enumerate(entries):
        where = f"settings[{index}]"
        table = read_table(entry, _SETTING, where)
        if table["dataset"] not in DATASETS:
            raise ValueError(f"{where}.dataset: unknown dataset '{table['dataset']}'; choose "
                             f"from: {', '.join(sorted(DATASETS))}")
        if table["arch"] is not None and table["arch"] not in ARCHITECTURES:
            raise ValueError(f"{where}.arch: unknown architecture '{table['arch']}'; choose "
                             f"from: {', '.join(sorted(ARCHITECTURES))}")
        costs = table["costs"] or ([table["cost"]] if table["cost"] else [])
        if not costs:
            raise ValueError(f"{where}: give 'cost' (a spec) or 'costs' (a list of specs)")
        settings += [Setting(table["dataset"], cost, table["arch"], table["data_dir"],
                             table["image_size"]) for cost in costs]
    if not settings:
        raise ValueError("config: no [[settings]] (data set and cost) given")
    return settings


def _methods(given: Mapping[str, Any]) -> dict[str, dict[str, list[Any]]]:
    from csrs.objectives import METHOD_DEFAULTS, resolve_hparams

    methods: dict[str, dict[str, list[Any]]] = {}
    for method, hparams in given.items():
        base, _, variant = method.partition("@")
        if base not in KNOWN_METHODS:
            raise ValueError(f"methods: unknown method '{base}'; choose from: "
                             f"{', '.join(KNOWN_METHODS)} (a variant: 'csrs@NAME')")
        if "@" in method and not VARIANT_NAME.fullmatch(variant):
            raise ValueError(f"methods: variant '{method}' needs a name after '@' of letters, "
                             f"digits, '.', '_' or '-' (e.g. '{base}@v2')")
        if not isinstance(hparams, Mapping):
            raise ValueError(f"methods.{method}: expected a table of hyperparameters; got "
                             f"{hparams!r}")
        unknown = sorted(set(hparams) - set(METHOD_DEFAULTS[base]))
        if unknown:
            raise ValueError(f"methods.{method}: unknown key '{unknown[0]}'; known keys: "
                             f"{', '.join(sorted(METHOD_DEFAULTS[base])) or 'none'}")
        grid = {key: value if isinstance(value, list) else [value]
                for key, value in hparams.items()}
        empty = [key for key, values in grid.items() if not values]
        if empty:
            raise ValueError(f"methods.{method}.{empty[0]}: expected a value or a non-empty "
                             f"list of values; got []")
        for candidate in candidates(grid):
            try:
                resolve_hparams(base, candidate)
            except ValueError as error:
                raise ValueError(f"methods.{method}: {error}") from None
        methods[method] = grid
    if not methods:
        raise ValueError("config: no [methods] given")
    return methods


def parse_config(data: Mapping[str, Any], *, name: str = "experiment") -> ExperimentConfig:
    """Validate a config mapping (as read from TOML) and return an ExperimentConfig; raises
    ValueError in one line naming the first bad key."""
    top = read_table(data, _TOP, "config")
    settings = _settings(top["settings"])
    methods = _methods(top["methods"])
    tuning = read_table(top["tuning"], _TUNING, "tuning")
    grids = [m for m, grid in methods.items() if any(len(v) > 1 for v in grid.values())]
    if grids and tuning["val_fraction"] == 0:
        raise ValueError(f"methods.{grids[0]}: a tuning grid needs a validation split "
                         f"(tuning.val_fraction > 0)")
    zhang_evans = {}
    if top["zhang_evans"] is not None:
        from csrs.models import ARCHITECTURES

        zhang_evans = read_table(top["zhang_evans"], _ZHANG_EVANS, "zhang_evans")
        if zhang_evans["arch"] not in ARCHITECTURES:
            raise ValueError(f"zhang_evans.arch: unknown architecture '{zhang_evans['arch']}'; "
                             f"choose from: {', '.join(sorted(ARCHITECTURES))}")
        unknown = set(zhang_evans["costs"]) - {s.cost for s in settings}
        if unknown:
            raise ValueError(f"zhang_evans.costs: cost '{sorted(unknown)[0]}' is not among the "
                             f"settings' costs")
    certify = read_table(top["certify"], _CERTIFY, "certify")
    if certify["adaptive_eps"] is None:
        certify["adaptive_eps"] = [float(top["eps"])]
    elif float(top["eps"]) not in certify["adaptive_eps"]:
        raise ValueError(f"certify.adaptive_eps: {certify['adaptive_eps']} must include eps = "
                         f"{top['eps']}, where the tables count robustness")
    return ExperimentConfig(
        name=top["name"] or name, description=top["description"], settings=settings,
        methods=methods, train=read_table(top["train"], schedule_keys(), "train"),
        sigma=top["sigma"], eps=top["eps"], seeds=list(top["seeds"]),
        data_seed=top["data_seed"], certify=certify,
        tuning=tuning, device=top["device"], amp=top["amp"], threads=top["threads"],
        zhang_evans=zhang_evans, launcher=top["launcher"])


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


def _demo_data() -> dict[str, Any]:
    from importlib.resources import files

    return tomllib.loads(files("csrs").joinpath("demo.toml").read_text(encoding="utf-8"))


def demo_config(*, quick: bool = False) -> ExperimentConfig:
    """The embedded default experiment of ``csrs demo`` (``demo.toml`` in the package); with
    ``quick``, a budget of seconds that only checks the pipeline."""
    data = _demo_data()
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


def demo_summary() -> str:
    """Returns what ``csrs demo`` runs, in two or three sentences, from ``demo.toml`` itself
    (without loading the model stack: the command line's help is built from it)."""
    data = _demo_data()
    by_dataset: dict[str, list[str]] = {}
    for entry in data["settings"]:
        by_dataset.setdefault(entry["dataset"], []).extend(
            entry.get("costs", [entry.get("cost")]))
    settings = "; ".join(f"{dataset} with the costs " + ", ".join(f"'{c}'" for c in costs)
                         for dataset, costs in by_dataset.items())
    certify, tuning = data.get("certify", {}), data.get("tuning", {})
    grids = [m for m, grid in data["methods"].items()
             if any(isinstance(v, list) and len(v) > 1 for v in (grid or {}).values())]
    text = (f"Runs the embedded experiment '{data['name']}': the methods "
            f"{', '.join(data['methods'])} on {settings}. Each trains for "
            f"{data['train']['epochs']} epochs at sigma = {data.get('sigma', 0.5)}; the test "
            f"split is certified with n = {certify.get('n', 100_000)} noise samples (n0 = "
            f"{certify.get('n0', 100)}, alpha = {certify.get('alpha', 0.001)}) and robustness "
            f"counted at eps = {data.get('eps', 0.5)}.")
    if grids:
        text += (f" The grids of {', '.join(grids)} are tuned on a "
                 f"{tuning.get('val_fraction', 0.2):.0%} validation split.")
    if "zhang_evans" in data:
        radii = data["zhang_evans"].get("eps", [0.25])
        text += (" Zhang & Evans's convex certificate is compared at eps = "
                 + ", ".join(str(e) for e in (radii if isinstance(radii, list) else [radii]))
                 + ".")
    return text + " Writes summary.csv, report.md and plots to --out."
