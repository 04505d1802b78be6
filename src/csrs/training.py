"""One training loop for every method of :data:`csrs.objectives.OBJECTIVES`.

By default SGD with momentum and a step schedule, as MACER publishes it for CIFAR-10 (440 epochs,
batch 64, lr 0.01, momentum 0.9, weight decay 5e-4, lr x0.1 at epochs 200 and 400), the schedule
scaled to the number of epochs. A method whose authors train otherwise names its own defaults in
:data:`METHOD_TRAINING`: Zhang & Evans follow Wong & Kolter (Adam, lr 1e-3, batch 50, lr halved
every 10 epochs after the eps warm-up). Settings left None in :class:`TrainConfig` take the
method's defaults; settings given are used as they are.

Schedules of the method's hyperparameters: for the first ``warmup_epochs`` epochs every
robustness weight (:data:`csrs.objectives.ROBUSTNESS_WEIGHTS`) is 0, and a method with
``eps_warmup`` trains at eps * min(1, (epoch + 1) / eps_warmup), the per-epoch linear ramp of
Wong & Kolter and of Salman et al. A checkpoint (:mod:`csrs.checkpoint`) is written atomically at
the end of every epoch with everything ``--resume`` needs: optimizer, scheduler and generator
states, so that an interrupted run resumed on CPU ends with bitwise the same weights.

Randomness is explicit: the model is initialised after ``torch.manual_seed(seed)``; one CPU
generator shuffles and augments, one generator on the device draws the noise, both seeded from
``seed``.

Under ``torchrun`` (:mod:`csrs.distributed`) the model is wrapped in DistributedDataParallel:
``batch_size`` is the global batch, of which each of the world-size processes takes
``batch_size / world_size`` examples, so the averaged gradient is that of the whole batch. The
shuffle generator draws the same order on every process; each process draws noise (and
augmentation) from its own generator, seeded with (seed, rank). Rank 0 writes the checkpoints,
in the same format; every process reads them on ``--resume``. A run is deterministic for a fixed
number of processes.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from csrs import distributed
from csrs.checkpoint import load_checkpoint, save_checkpoint
from csrs.convex import check_convex_supported
from csrs.costs import CostMatrix
from csrs.models import ARCHITECTURES, build_model
from csrs.objectives import OBJECTIVES, ROBUSTNESS_WEIGHTS, LossParts, resolve_hparams
from csrs.progress import progress as progress_bar
from csrs.rng import keyed_generator, reseed

__all__ = ["METHOD_TRAINING", "OPTIMIZERS", "TrainConfig", "TrainResult", "TrainingDiverged",
           "default_milestones", "epoch_hparams", "train", "training_defaults"]

# The optimisers, with their defaults where neither the method nor the config sets them.
OPTIMIZERS: dict[str, dict[str, float]] = {
    "sgd": {"lr": 0.01, "weight_decay": 5e-4},
    "adam": {"lr": 1e-3, "weight_decay": 0.0},
}
# Training settings of the methods whose authors publish their own; the others train as MACER.
_MACER_TRAINING = {"optimizer": "sgd", "batch_size": 64, "lr_decay": 0.1}
METHOD_TRAINING: dict[str, dict[str, Any]] = {
    # Wong & Kolter (2018) and Zhang & Evans (2019): Adam, lr 1e-3, batch 50; lr halved every
    # 10 epochs once the eps warm-up is over (the milestones: :func:`_default_schedule`).
    "zhang-evans": {"optimizer": "adam", "batch_size": 50, "lr_decay": 0.5},
}

# The parts of LossParts averaged per epoch, and their short names on the progress bar.
_METRICS = {"loss": "total", "cls": "classification", "rob_n": "robust_normal",
            "rob_s": "robust_sensitive", "acc": "accuracy"}
# Settings that change what a checkpoint means; --resume refuses a config that differs in one.
_RESUME_FIELDS = ("method", "dataset", "data_options", "arch", "sigma", "seed", "data_seed",
                  "cost_matrix", "hparams")


@dataclass
class TrainConfig:
    """Everything one training run depends on.

    ``out`` is the checkpoint file. ``cost`` and ``arch`` default to the dataset's.
    ``optimizer`` ("sgd" or "adam"), ``batch_size``, ``lr``, ``weight_decay`` and ``lr_decay``
    left None are filled in from the method's defaults when the config is made
    (:func:`training_defaults`); ``momentum`` is SGD's only. ``milestones`` are the epochs
    (counted from 0) from which the lr is multiplied once more by ``lr_decay``; ``None`` scales
    MACER's schedule (:func:`default_milestones`), or for zhang-evans halves the lr every 10
    epochs after the eps warm-up. ``hparams`` override the
    method's :data:`~csrs.objectives.METHOD_DEFAULTS`. ``val_fraction`` holds out a stratified
    part of the training split for tuning: it is never trained on, and
    ``validation_split(splits.train, None, val_fraction, seed)`` gives it back. ``amp`` runs the
    forward pass under bfloat16 autocast. Without ``resume`` a checkpoint at ``out`` is
    overwritten; with it, training continues from that checkpoint (refused if it was trained with
    other settings; a larger ``epochs`` extends the run), or starts fresh when there is none.
    Resumed on another device type, the noise generator is re-seeded, since generator states do
    not carry across devices.
    """

    dataset: str
    method: str
    sigma: float
    epochs: int
    out: Path
    cost: str | None = None
    arch: str | None = None
    data_dir: str | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    milestones: tuple[int, ...] | None = None
    lr_decay: float | None = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = False
    resume: bool = False
    hparams: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = 0.0
    data_options: dict[str, Any] = field(default_factory=dict)
    data_seed: int = 0
    warmup_epochs: int = 0
    optimizer: str | None = None

    def __post_init__(self) -> None:
        for key, value in training_defaults(self.method, self.optimizer).items():
            if getattr(self, key) is None:
                setattr(self, key, value)


def training_defaults(method: str, optimizer: str | None = None) -> dict[str, Any]:
    """Returns the method's default optimizer, batch_size, lr, weight_decay and lr_decay; with
    ``optimizer`` given, that optimizer's lr and weight decay (:data:`OPTIMIZERS`)."""
    defaults = {**_MACER_TRAINING, **METHOD_TRAINING.get(method, {})}
    if optimizer is not None:
        defaults["optimizer"] = optimizer
    return {**defaults, **OPTIMIZERS.get(defaults["optimizer"], {})}


@dataclass
class TrainResult:
    """The checkpoint written, the epochs completed, the trained model (train mode) and, per
    epoch, the loss parts and noisy accuracy averaged over examples and the seconds it took."""

    path: Path
    epochs: int
    model: nn.Module
    history: list[dict[str, float]]


def default_milestones(epochs: int) -> tuple[int, ...]:
    """Returns MACER's lr milestones (200 and 400 of 440 epochs) scaled to ``epochs``."""
    return round(epochs * 200 / 440), round(epochs * 400 / 440)


def _milestones(config: TrainConfig, hparams: dict[str, Any]) -> tuple[int, ...]:
    """Returns the config's milestones, or the method's default schedule for its epochs."""
    if config.milestones is not None:
        return tuple(config.milestones)
    if config.method == "zhang-evans":  # Wong & Kolter: halve every 10 epochs after the warm-up
        return tuple(range(hparams["eps_warmup"] + 10, config.epochs, 10))
    return default_milestones(config.epochs)


def epoch_hparams(hparams: dict[str, Any], epoch: int, warmup_epochs: int) -> dict[str, Any]:
    """Returns the hyperparameters of ``epoch`` (counted from 0): every robustness weight 0 in
    the first ``warmup_epochs`` epochs, and eps ramped up linearly over ``eps_warmup`` epochs.

    From scratch, lambda = 12 can swamp the classification loss before classes separate; a full
    eps at once makes the first convex bounds so loose, or the first attacks so strong, that the
    robust term does the same.
    """
    scheduled = dict(hparams)
    if epoch < warmup_epochs:
        scheduled |= {key: 0.0 for key in ROBUSTNESS_WEIGHTS if key in hparams}
    if "eps_warmup" in hparams:
        scheduled["eps"] = hparams["eps"] * min(1.0, (epoch + 1) / max(hparams["eps_warmup"], 1))
    return scheduled


def _check_config(config: TrainConfig) -> dict[str, Any]:
    """Raises ValueError naming the first bad setting; returns the method's hyperparameters."""
    hparams = resolve_hparams(config.method, config.hparams)
    if config.optimizer not in OPTIMIZERS:  # before the checks below, which need its defaults
        raise ValueError(f"unknown optimizer '{config.optimizer}'; choose from: "
                         f"{', '.join(OPTIMIZERS)}")
    checks = [
        (config.sigma > 0, f"sigma must be positive; got {config.sigma!r}"),
        (isinstance(config.epochs, int) and config.epochs >= 1,
         f"epochs must be an integer >= 1; got {config.epochs!r}"),
        (isinstance(config.batch_size, int) and config.batch_size >= 1,
         f"batch_size must be an integer >= 1; got {config.batch_size!r}"),
        (config.lr > 0, f"lr must be positive; got {config.lr!r}"),
        (config.momentum >= 0, f"momentum must be >= 0; got {config.momentum!r}"),
        (config.weight_decay >= 0, f"weight_decay must be >= 0; got {config.weight_decay!r}"),
        (config.lr_decay > 0, f"lr_decay must be positive; got {config.lr_decay!r}"),
        (isinstance(config.warmup_epochs, int) and config.warmup_epochs >= 0,
         f"warmup_epochs must be an integer >= 0; got {config.warmup_epochs!r}"),
        (0 <= config.val_fraction < 1, f"val_fraction must be in [0, 1); got "
                                       f"{config.val_fraction!r}"),
        (config.milestones is None or all(isinstance(m, int) and m >= 0
                                          for m in config.milestones),
         f"milestones must be epochs (integers >= 0); got {config.milestones!r}"),
        (config.arch is None or config.arch in ARCHITECTURES,
         f"unknown architecture '{config.arch}'; choose from: {', '.join(sorted(ARCHITECTURES))}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    try:
        device = torch.device(config.device)
    except RuntimeError:
        raise ValueError(f"unknown device '{config.device}'; expected e.g. cpu, cuda, "
                         f"cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{config.device}' is not available (no CUDA device found)")
    return hparams


def _lr_factor(milestones: Sequence[int], decay: float) -> Callable[[int], float]:
    """Returns epoch -> decay ** (number of milestones <= epoch): a step schedule."""
    ordered = sorted(milestones)
    return lambda epoch: decay ** bisect_right(ordered, epoch)


def _prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Returns the model on ``device`` in train mode, wrapped in DistributedDataParallel when
    this process is one of several (which then averages the gradients of all processes)."""
    model = model.to(device).train()
    if not distributed.current().distributed:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None)


def _epoch_loader(dataset: Dataset, batch_size: int, generator: torch.Generator, *,
                  rank: int = 0, world_size: int = 1) -> DataLoader:
    """Returns this process's part of this epoch's batches, in an order drawn from ``generator``.

    The order is cut into global batches of ``batch_size``; process ``rank`` takes the
    ``rank``-th of ``world_size`` equal consecutive parts of each. Every process therefore takes
    the same number of equally large batches (DistributedDataParallel waits for all of them at
    every step), and the last global batch loses its ``len % world_size`` final examples.
    """
    order = torch.randperm(len(dataset), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        share = len(batch) // world_size
        if share:
            batches.append(batch[rank * share:(rank + 1) * share])
    return DataLoader(dataset, batch_sampler=batches, num_workers=0, pin_memory=False)


def _meta(config: TrainConfig, splits: Any, arch: str, cost: CostMatrix, cost_spec: str,
          hparams: dict[str, Any], epoch: int) -> dict[str, Any]:
    """Returns the checkpoint metadata: what certification and --resume need to know."""
    training_hparams = {key: getattr(config, key) for key in (
        "optimizer", "batch_size", "lr", "momentum", "weight_decay", "lr_decay", "amp",
        "val_fraction", "warmup_epochs")}
    milestones = _milestones(config, hparams)
    return {
        "arch": arch, "num_classes": splits.num_classes, "class_names": list(splits.class_names),
        "input_shape": list(splits.input_shape),
        "mean": None if splits.mean is None else list(splits.mean),
        "std": None if splits.std is None else list(splits.std),
        "dataset": config.dataset, "data_dir": None if config.data_dir is None
        else str(config.data_dir), "data_options": dict(config.data_options),
        "sigma": float(config.sigma), "cost_matrix": cost.to_list(), "cost_spec": cost_spec,
        "method": config.method,
        "hparams": {**hparams, **training_hparams, "milestones": list(milestones)},
        "epoch": epoch, "epochs": config.epochs, "seed": config.seed,
        "data_seed": config.data_seed,
    }


def _check_resumable(saved: dict[str, Any], meta: dict[str, Any], path: Path) -> None:
    """Raises ValueError naming the first setting in which ``meta`` differs from the checkpoint."""
    for key in _RESUME_FIELDS:
        old, new = saved.get(key), meta[key]
        if key == "hparams":
            # The schedule may differ when --epochs is raised to extend a run; checkpoints from
            # before the optimizer was a setting were trained with SGD.
            old = {"optimizer": "sgd", **{k: v for k, v in (old or {}).items()
                                          if k != "milestones"}}
            new = {k: v for k, v in new.items() if k != "milestones"}
        if old != new:
            shown = (saved.get("cost_spec"), meta["cost_spec"]) if key == "cost_matrix" \
                else (old, new)
            raise ValueError(f"cannot resume from '{path}': its {key.replace('_matrix', '')} is "
                             f"{shown[0]!r}, the config's is {shown[1]!r}")


def _run_epoch(model: nn.Module, batches: Any, objective: Callable[..., LossParts],
               optimizer: torch.optim.Optimizer, cost_table: Tensor,
               augment: Callable[[Tensor, torch.Generator], Tensor] | None,
               generator: torch.Generator, amp: bool) -> dict[str, float]:
    """Returns the loss parts and noisy accuracy averaged over the examples of one epoch;
    ``cost_table`` is the cost matrix, whose rows C[y] the objective receives."""
    device = cost_table.device
    sums = torch.zeros(len(_METRICS), device=device)
    seen = 0
    for step, (x, y) in enumerate(batches):
        x = x.to(device, non_blocking=True)
        y = torch.as_tensor(y).to(device, non_blocking=True)
        if augment is not None:
            x = augment(x, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            parts = objective(model, x, y, cost_table[y])
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        optimizer.step()
        sums += len(y) * torch.stack([getattr(parts, name).detach().float()
                                      for name in _METRICS.values()])
        seen += len(y)
        if step % 10 == 0:
            _show(batches, sums / seen)
    # Averages over the examples of all processes, the same on each.
    totals = distributed.sum_over_processes(torch.cat([sums, sums.new_tensor([seen])]))
    sums, seen = totals[:-1], int(totals[-1].item())
    metrics = dict(zip(_METRICS, (sums / max(seen, 1)).tolist(), strict=True))
    _show(batches, torch.tensor(list(metrics.values())))
    return metrics


class TrainingDiverged(ValueError):
    """The loss or the weights turned NaN or infinite; the last finite checkpoint stays."""


def _check_finite(model: nn.Module, metrics: dict[str, float], config: TrainConfig,
                  epoch: int, out: Path) -> None:
    """Raise TrainingDiverged before a NaN model is written over the last good checkpoint (a
    model with NaN weights would only fail later, at certification)."""
    finite = all(bool(torch.isfinite(parameter).all()) for parameter in model.parameters())
    if finite and math.isfinite(metrics["loss"]):
        return
    kept = f"'{out}' keeps epoch {epoch}" if epoch else f"nothing was written to '{out}'"
    raise TrainingDiverged(f"{config.method} diverged in epoch {epoch + 1} (loss "
                           f"{metrics['loss']:.4g}, weights {'finite' if finite else 'not finite'}"
                           f"); {kept}. Lower --lr or the robustness weights, or use "
                           f"--warmup-epochs")


def _show(batches: Any, averages: Tensor) -> None:
    """Puts the running averages on the progress bar, if there is one to show."""
    if hasattr(batches, "set_postfix") and not batches.disable:
        batches.set_postfix({key: f"{value:.3f}" for key, value
                             in zip(_METRICS, averages.tolist(), strict=True)})


def train(config: TrainConfig, *, splits: Any = None, progress: bool = True,
          log: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Returns the result of training ``config.method`` on ``config.dataset``; see the module doc.

    ``splits`` is an already loaded :class:`csrs.data.DatasetSplits` (default: loaded from the
    config). ``log`` is called with each epoch's metrics after its checkpoint is written (by
    rank 0 alone under torchrun, where every process calls ``train`` with the same arguments).
    """
    hparams = _check_config(config)
    context = distributed.current()
    if context.distributed and config.batch_size % context.world_size:
        raise ValueError(f"batch size {config.batch_size} is the global batch, split evenly "
                         f"over the {context.world_size} processes; choose a multiple of "
                         f"{context.world_size}")
    if context.distributed and config.method == "zhang-evans":
        raise ValueError("method 'zhang-evans' trains in one process only (its convex bounds "
                         "read the model around DistributedDataParallel); launch it without "
                         "torchrun")
    if splits is None:
        from csrs.data import load_dataset

        splits = load_dataset(config.dataset, config.data_dir, seed=config.data_seed,
                              **config.data_options)
    arch = config.arch or ("convex-mlp" if config.method == "zhang-evans"
                           else splits.default_arch)
    cost_spec = config.cost if config.cost is not None else splits.default_cost
    cost = CostMatrix.parse(cost_spec, splits.num_classes, splits.class_names)
    train_set = splits.train
    if config.val_fraction > 0:
        from csrs.data import validation_split

        train_set, _ = validation_split(train_set, None, config.val_fraction, config.data_seed)

    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(arch, num_classes=splits.num_classes, input_shape=splits.input_shape,
                        mean=splits.mean, std=splits.std)
    if config.method == "zhang-evans":
        check_convex_supported(model, tuple(splits.input_shape))
    model = _prepare_model(model, device)
    plain = getattr(model, "module", model)  # DistributedDataParallel wraps the model it trains
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                     weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    lr_factor = _lr_factor(_milestones(config, hparams), config.lr_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    shuffle_generator = torch.Generator().manual_seed(config.seed)
    # Each process its own noise: the key holds the rank in its high bits, so it is seeded
    # through csrs.rng (torch's CPU manual_seed would drop them and give every rank one stream).
    noise_seed = config.seed + 1 + (context.rank << 32)
    noise_generator = keyed_generator(noise_seed, device)
    # The shuffle generator must draw the same order on every process, so with several each
    # augments its own examples from its own generator.
    augment_generator = shuffle_generator if not context.distributed else noise_generator
    cost_table = torch.tensor(cost.matrix, dtype=torch.float32, device=device)
    objective = OBJECTIVES[config.method]
    out = Path(config.out)

    start, history = 0, []
    if config.resume and out.is_file():
        checkpoint = load_checkpoint(out)
        _check_resumable(checkpoint.meta, _meta(config, splits, arch, cost, cost_spec, hparams,
                                                0), out)
        state = checkpoint.training
        if "optimizer" not in state:
            raise ValueError(f"cannot resume from '{out}': it holds no training state (not "
                             f"written by csrs.training.train)")
        plain.load_state_dict(checkpoint.model_state)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = int(checkpoint.meta["epoch"]), list(state["history"])
        shuffle_generator.set_state(state["shuffle_generator"])
        torch.set_rng_state(state["torch_rng"])
        noise_states = state.get("noise_generators", [state["noise_generator"]])
        if state["device_type"] == device.type and len(noise_states) == context.world_size:
            noise_generator.set_state(noise_states[context.rank])
        else:  # generator states carry neither across device types nor to another world size
            reseed(noise_generator, noise_seed + start)
        # A run extended with a larger --epochs follows the new schedule from here on.
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_factor(start)

    for epoch in range(start, config.epochs):
        began = time.perf_counter()
        # In a log (stderr not a terminal): one line per epoch, with its averages.
        batches = progress_bar(_epoch_loader(train_set, config.batch_size, shuffle_generator,
                                             rank=context.rank, world_size=context.world_size),
                               desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                               disable=not (progress and context.is_main), fraction=None)
        step = partial(objective, sigma=config.sigma, generator=noise_generator,
                       **epoch_hparams(hparams, epoch, config.warmup_epochs))
        metrics = _run_epoch(model, batches, step, optimizer, cost_table, splits.augment,
                             augment_generator, config.amp)
        metrics |= {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                    "seconds": time.perf_counter() - began}
        _check_finite(plain, metrics, config, epoch, out)
        scheduler.step()
        history.append(metrics)
        noise_states = distributed.all_gather_object(noise_generator.get_state())
        if context.is_main:
            training = {
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "shuffle_generator": shuffle_generator.get_state(),
                "noise_generator": noise_states[0], "noise_generators": noise_states,
                "torch_rng": torch.get_rng_state(), "device_type": device.type,
                "history": history,
            }
            save_checkpoint(out, model, _meta(config, splits, arch, cost, cost_spec, hparams,
                                              epoch + 1), training)
        distributed.barrier()  # no process goes on (or returns) before the checkpoint exists
        if log is not None and context.is_main:
            log(metrics)
    return TrainResult(path=out, epochs=max(start, config.epochs), model=plain, history=history)

