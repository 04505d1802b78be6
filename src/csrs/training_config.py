"""The settings of one training run, declared once.

:class:`TrainConfig` is the schema: each field carries its kind, default and help text
(:class:`Option`). The ``csrs train`` flags, the keys of an experiment's ``[train]`` table
(:func:`schedule_keys`), the checks of :func:`check_train_config` and the command line that
re-creates a config under ``torchrun`` (:func:`train_arguments`) are all derived from it, so a
new setting is one new field.

Defaults: SGD with momentum and MACER's published CIFAR-10 schedule (440 epochs, batch 64, lr
0.01, momentum 0.9, weight decay 5e-4, lr x0.1 at epochs 200 and 400), the schedule scaled to the
number of epochs. A method whose authors train otherwise names its own defaults in
:data:`METHOD_TRAINING`. Torch-free.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from csrs.schema import (
    BOOL,
    EPOCHS,
    FRACTION,
    INTEGER,
    NONNEGATIVE,
    NONNEGATIVE_INT,
    PATH,
    POSITIVE,
    POSITIVE_INT,
    TEXT,
    Key,
    Kind,
    choice,
)

__all__ = ["METHOD_TRAINING", "OPTIMIZERS", "Option", "TrainConfig", "check_train_config",
           "default_milestones", "schedule_keys", "train_arguments", "train_options",
           "training_defaults"]

# The optimisers, with their defaults where neither the method nor the config sets them.
OPTIMIZERS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 0.01, "weight_decay": 5e-4},
    "adam": {"lr": 1e-3, "weight_decay": 0.0},
}
# Training settings of the methods whose authors publish their own; the others train as MACER.
_MACER_TRAINING = {"optimizer": "sgd", "batch_size": 64, "lr_decay": 0.1}
METHOD_TRAINING: dict[str, dict[str, Any]] = {
    # Wong & Kolter (2018) and Zhang & Evans (2019): Adam, lr 1e-3, batch 50; lr halved every
    # 10 epochs once the eps warm-up is over.
    "zhang-evans": {"optimizer": "adam", "batch_size": 50, "lr_decay": 0.5},
}
# zhang-evans adds no noise; its sigma only sets that of a later smoothed certification.
_ZHANG_EVANS_SIGMA = 0.5


def training_defaults(method: str, optimizer: str | None = None) -> dict[str, Any]:
    """Returns the method's default optimizer, batch_size, lr, weight_decay and lr_decay; with
    ``optimizer`` given, that optimizer's lr and weight decay (:data:`OPTIMIZERS`)."""
    defaults = {**_MACER_TRAINING, **METHOD_TRAINING.get(method, {})}
    if optimizer is not None:
        defaults["optimizer"] = optimizer
    return {**defaults, **OPTIMIZERS.get(defaults["optimizer"], {})}


def default_milestones(epochs: int) -> tuple[int, ...]:
    """Returns MACER's lr milestones (200 and 400 of 440 epochs) scaled to ``epochs``."""
    return round(epochs * 200 / 440), round(epochs * 400 / 440)


@dataclass(frozen=True)
class Option:
    """How a field of :class:`TrainConfig` is given: its kind, its help text, what help says of
    its default where that is not the field's own ("default: ..."), and whether an experiment's
    ``[train]`` table may set it (the schedule, the same for every run). Every option is a
    ``csrs train`` flag."""

    kind: Kind
    help: str
    default_text: str | None = None
    schedule: bool = False


def _option(kind: Kind, help: str, *, default: Any = MISSING, default_text: str | None = None,
            schedule: bool = False) -> Any:
    return field(default=default, metadata={"option": Option(kind, help, default_text, schedule)})


@dataclass(kw_only=True)
class TrainConfig:
    """Everything one training run depends on; each field's help text says what it means.

    Settings left None take the method's defaults when the config is made
    (:func:`training_defaults`). ``hparams`` override the method's
    :data:`~csrs.objectives.METHOD_DEFAULTS`. ``val_fraction`` holds out a stratified part of
    the training split for tuning: it is never trained on, and
    ``validation_split(splits.train, None, val_fraction, seed)`` gives it back.

    A checkpoint at ``out`` is resumed (refused if it was trained with other settings; a larger
    ``epochs`` extends the run, a smaller one is refused); ``restart`` trains from scratch over
    it. Resumed on another device type, the noise generator is re-seeded, since generator states
    do not carry across devices.
    """

    dataset: str = _option(TEXT, "dataset: digits, breast-cancer, cifar10, imagenette, "
                                 "imagenet, ham10000, folder or npz")
    method: str = _option(TEXT, "cohen, cohen-r, macer, csrs, margin-cs, smoothadv, "
                                "smoothadv-cs or zhang-evans")
    sigma: float | None = _option(
        POSITIVE, "noise level of training and of later certification", default=None,
        default_text="required, except for zhang-evans, which adds no noise: there it only sets "
                     f"the sigma of a later smoothed certification, default {_ZHANG_EVANS_SIGMA}")
    epochs: int = _option(POSITIVE_INT, "number of training epochs", schedule=True)
    out: Path = _option(PATH, "checkpoint file to write (resumed if it exists)")
    cost: str | None = _option(TEXT, "cost spec, e.g. '3', '3->5,8', 'malignant->benign' or "
                                     "with real costs '3->5:10,8:2'", default=None,
                               default_text="default: the dataset's")
    arch: str | None = _option(TEXT, "architecture", default=None,
                               default_text="default: the dataset's")
    data_dir: str | None = _option(TEXT, "directory of the dataset files", default=None,
                                   default_text="default: none; bundled data need none")
    image_size: int | None = _option(POSITIVE_INT, "image side for imagenette, imagenet, "
                                                   "ham10000 and folder data", default=None,
                                     default_text="default: the dataset's")
    batch_size: int | None = _option(
        POSITIVE_INT, "global batch; under torchrun each of the N processes takes "
                      "batch-size / N examples of it", default=None,
        default_text="default: 64; zhang-evans 50", schedule=True)
    optimizer: str | None = _option(choice(*OPTIMIZERS), "optimiser", default=None,
                                    default_text="default: sgd; zhang-evans adam", schedule=True)
    lr: float | None = _option(POSITIVE, "learning rate", default=None,
                               default_text="default: sgd 0.01, adam 1e-3", schedule=True)
    momentum: float = _option(NONNEGATIVE, "SGD momentum", default=0.9, schedule=True)
    weight_decay: float | None = _option(NONNEGATIVE, "weight decay", default=None,
                                         default_text="default: sgd 5e-4, adam 0", schedule=True)
    milestones: tuple[int, ...] | None = _option(
        EPOCHS, "epochs (counted from 0) from which the lr is multiplied once more by the lr "
                "decay, e.g. '200,400'", default=None,
        default_text="default: 200/440 and 400/440 of the epochs; zhang-evans every 10 "
                     "epochs after the eps warm-up", schedule=True)
    lr_decay: float | None = _option(POSITIVE, "factor of the lr at each milestone",
                                     default=None, default_text="default: 0.1; zhang-evans 0.5",
                                     schedule=True)
    warmup_epochs: int = _option(NONNEGATIVE_INT, "epochs trained with every robustness weight "
                                                  "(lambda) at 0", default=0, schedule=True)
    val_fraction: float = _option(FRACTION, "stratified fraction of the training split held "
                                            "out (never trained on)", default=0.0)
    seed: int = _option(INTEGER, "training seed: initialisation, shuffling, noise", default=0)
    data_seed: int = _option(INTEGER, "seed of the train/test and validation splits", default=0)
    device: str = _option(TEXT, "torch device, e.g. cpu, cuda or cuda:1", default="cpu")
    amp: bool = _option(BOOL, "bfloat16 autocast of the forward pass", default=False)
    restart: bool = _option(BOOL, "train from scratch over an existing checkpoint instead of "
                                  "resuming it", default=False)
    hparams: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sigma is None and self.method == "zhang-evans":
            self.sigma = _ZHANG_EVANS_SIGMA
        for key, value in training_defaults(self.method, self.optimizer).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if isinstance(self.milestones, list):
            self.milestones = tuple(self.milestones)
        if isinstance(self.out, str):
            self.out = Path(self.out)

    @property
    def data_options(self) -> dict[str, Any]:
        """The dataset loader's options (:func:`csrs.data.load_dataset`)."""
        return {} if self.image_size is None else {"image_size": self.image_size}


def train_options() -> list[tuple[str, Option, Any]]:
    """Returns (name, option, default) of every field of :class:`TrainConfig` that has an
    option, in declaration order; the default is ``dataclasses.MISSING`` for required ones."""
    return [(item.name, item.metadata["option"], item.default) for item in fields(TrainConfig)
            if "option" in item.metadata]


def schedule_keys() -> dict[str, Key]:
    """Returns the keys an experiment's ``[train]`` table accepts, those without a default
    (epochs) required."""
    return {name: Key(option.kind, None if default is MISSING else default,
                      required=default is MISSING)
            for name, option, default in train_options() if option.schedule}


def check_train_config(config: TrainConfig) -> None:
    """Raises ValueError naming the first field whose value is not of its kind."""
    if config.sigma is None:
        raise ValueError(f"sigma is required for method '{config.method}'")
    for name, option, default in train_options():
        value = getattr(config, name)
        if value is None and default is None:
            continue
        option.kind.check(value, name)


def train_arguments(config: TrainConfig) -> list[str]:
    """Returns the ``csrs train`` arguments that re-create ``config`` (for a launcher such as
    torchrun, whose processes each parse them)."""
    argv = []
    for name, option, _ in train_options():
        value = getattr(config, name)
        flag = "--" + name.replace("_", "-")
        if option.kind is BOOL:
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, option.kind.show(value)]
    for name, value in config.hparams.items():
        argv += ["--" + name.replace("_", "-"), repr(value) if isinstance(value, float)
                 else str(value)]
    return argv
