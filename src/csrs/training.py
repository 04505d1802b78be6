"""One training loop for every method of :data:`csrs.objectives.OBJECTIVES`.

What a run depends on is :class:`csrs.training_config.TrainConfig` (its defaults: MACER's
published CIFAR-10 schedule, or the method's own in :data:`METHOD_TRAINING`).

Schedules of the method's hyperparameters: for the first ``warmup_epochs`` epochs every
robustness weight (:data:`csrs.objectives.ROBUSTNESS_WEIGHTS`) is 0, and a method with
``eps_warmup`` trains at eps * min(1, (epoch + 1) / eps_warmup), the per-epoch linear ramp of
Wong & Kolter and of Salman et al.

A checkpoint (:mod:`csrs.checkpoint`) is written atomically at the end of every epoch with
everything a resumed run needs: optimizer, scheduler and generator states. Training the same
config again resumes from it (an interrupted run resumed on CPU ends with bitwise the same
weights as an uninterrupted one); a finished run is not trained again, a checkpoint is never
taken back to an earlier epoch, and ``restart`` is the one way to train over it from scratch.

Randomness is explicit: the model is initialised after ``torch.manual_seed(seed)``; one CPU
generator shuffles and augments, one generator on the device draws the noise, both seeded from
``seed``.

Under ``torchrun`` (:mod:`csrs.distributed`) the model is wrapped in DistributedDataParallel:
``batch_size`` is the global batch, of which each of the world-size processes takes
``batch_size / world_size`` examples, so the averaged gradient is that of the whole batch. The
shuffle generator draws the same order on every process; each process draws noise (and
augmentation) from its own generator, seeded with (seed, rank). Rank 0 writes the checkpoints,
in the same format; every process reads them to resume. A run is deterministic for a fixed
number of processes.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from csrs import distributed
from csrs.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from csrs.costs import CostMatrix
from csrs.models import ARCHITECTURES, build_model
from csrs.objectives import OBJECTIVES, ROBUSTNESS_WEIGHTS, LossParts, resolve_hparams
from csrs.progress import progress as progress_bar
from csrs.progress import write
from csrs.rng import keyed_generator, reseed
from csrs.training_config import (
    METHOD_TRAINING,
    OPTIMIZERS,
    TrainConfig,
    check_train_config,
    default_milestones,
    training_defaults,
)

__all__ = ["METHOD_TRAINING", "OPTIMIZERS", "TrainConfig", "TrainResult", "TrainingDiverged",
           "default_milestones", "epoch_hparams", "train", "training_defaults"]

# The parts of LossParts averaged per epoch, and their short names on the progress bar.
_METRICS = {"loss": "total", "cls": "classification", "rob_n": "robust_normal",
            "rob_s": "robust_sensitive", "acc": "accuracy"}
# Settings that change what a checkpoint means; resuming refuses a config that differs in one.
_RESUME_FIELDS = ("method", "dataset", "data_options", "arch", "sigma", "seed", "data_seed",
                  "cost_matrix", "hparams")


@dataclass
class TrainResult:
    """The checkpoint written, the epochs completed, the trained model (train mode), per epoch
    the loss parts and noisy accuracy averaged over examples and the seconds it took, and the
    epoch this call started from (0: from scratch; ``epochs``: it was already finished)."""

    path: Path
    epochs: int
    model: nn.Module
    history: list[dict[str, float]]
    start_epoch: int = 0


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
    check_train_config(config)
    if config.arch is not None and config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{config.arch}'; choose from: "
                         f"{', '.join(sorted(ARCHITECTURES))}")
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


def _check_resumable(checkpoint: Checkpoint, meta: dict[str, Any], epochs: int) -> None:
    """Raises ValueError naming the first setting in which ``meta`` differs from the
    checkpoint's, or why the checkpoint cannot be continued to ``epochs``."""
    saved, path = checkpoint.meta, checkpoint.path
    for key in _RESUME_FIELDS:
        old, new = saved.get(key), meta[key]
        if key == "hparams":
            # The schedule may differ when the epochs are raised to extend a run; checkpoints
            # from before the optimizer was a setting were trained with SGD.
            old = {"optimizer": "sgd", **{k: v for k, v in (old or {}).items()
                                          if k != "milestones"}}
            new = {k: v for k, v in new.items() if k != "milestones"}
        if old != new:
            shown = (saved.get("cost_spec"), meta["cost_spec"]) if key == "cost_matrix" \
                else (old, new)
            raise ValueError(f"cannot resume from '{path}': its {key.replace('_matrix', '')} is "
                             f"{shown[0]!r}, the config's is {shown[1]!r} (use another --out, "
                             f"or --restart to train over it)")
    if "optimizer" not in checkpoint.training:
        raise ValueError(f"cannot resume from '{path}': it holds no training state (not "
                         f"written by csrs train); use another --out, or --restart to train "
                         f"over it")
    if int(saved["epoch"]) > epochs:
        raise ValueError(f"'{path}' holds epoch {saved['epoch']} and {epochs} epochs were asked "
                         f"for: a checkpoint is never taken back to an earlier epoch (ask for at "
                         f"least {saved['epoch']}, or --restart to train from scratch)")


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
        from csrs.convex import check_convex_supported

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
    if out.is_file() and not config.restart:
        checkpoint = load_checkpoint(out)
        _check_resumable(checkpoint, _meta(config, splits, arch, cost, cost_spec, hparams, 0),
                         config.epochs)
        start, history = _restore(checkpoint, plain, optimizer, scheduler, shuffle_generator)
        noise_states = checkpoint.training.get("noise_generators",
                                               [checkpoint.training["noise_generator"]])
        if (checkpoint.training["device_type"] == device.type
                and len(noise_states) == context.world_size):
            noise_generator.set_state(noise_states[context.rank])
        else:  # generator states carry neither across device types nor to another world size
            reseed(noise_generator, noise_seed + start)
        # A run extended with a larger epochs follows the new schedule from here on.
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_factor(start)
        if progress and context.is_main and start < config.epochs:
            write(f"resuming '{out}' from epoch {start} of {config.epochs}")

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
    return TrainResult(path=out, epochs=config.epochs, model=plain, history=history,
                       start_epoch=start)


def _restore(checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, shuffle_generator: torch.Generator) -> tuple[int, list[dict]]:
    """Loads the weights, optimizer, scheduler and CPU generator states of a checkpoint that
    :func:`_check_resumable` accepted; returns its epoch and history."""
    state = checkpoint.training
    model.load_state_dict(checkpoint.model_state)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    shuffle_generator.set_state(state["shuffle_generator"])
    torch.set_rng_state(state["torch_rng"])
    return int(checkpoint.meta["epoch"]), list(state["history"])

