"""The field's published smoothed models as csrs checkpoints (docs/tutorials/published.md#formats).

Formats, by the name ``csrs import --from`` takes:

- ``cohen``: Cohen et al.'s code (locuslab/smoothing) and the code built on it (SmoothAdv,
  Consistency, SmoothMix) saves ``{'arch', 'state_dict', 'epoch', 'optimizer'}`` for
  ``Sequential(NormalizeLayer, net)``. Its NormalizeLayer keeps mean and std as plain attributes,
  not buffers, so the state_dict holds the net alone: ``1.<name>`` for ``cifar_resnet20`` and
  ``cifar_resnet110`` (bearpaw's CIFAR ResNet), ``1.module.<name>`` for ``resnet50``
  (DataParallel around torchvision's). The mean/std are those of its ``datasets.py``: CIFAR-10's
  or ImageNet's, the same numbers as :mod:`csrs.data`.
- ``macer``: MACER's code (RuntianZ/macer) saves ``{'net': state_dict, 'epoch'}`` of its
  ``resnet110``, the same network with the same names, whose inputs are [0, 1] pixels with no
  normalisation; a ``module.`` prefix (DataParallel) is dropped.

The nets' names are those of csrs's ResNets (torchvision's), so importing strips the prefixes,
checks every name and shape, and puts csrs's :class:`~csrs.models.Normalize` in front: the
checkpoint's model gives the same logits on [0, 1] inputs as the original code's. Files are read
with ``torch.load(weights_only=True)`` and never run code.

The files do not record the noise level they were trained at (Cohen's keep it in the folder
name, ``noise_0.25``): the caller names it, and the checkpoint keeps it as its ``sigma``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from csrs.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    read_weights_only,
    save_checkpoint,
)
from csrs.costs import CostMatrix
from csrs.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from csrs.models import build_model

__all__ = ["SOURCES", "PublishedFormatError", "PublishedModel", "import_published",
           "published_model"]


class PublishedFormatError(CheckpointError):
    """A file that is not in the format it was said to be in, or whose weights do not fit."""


@dataclass
class PublishedModel:
    """A published model rebuilt in csrs: ``model`` maps [0, 1] inputs to the original logits."""

    model: nn.Module
    arch: str  # csrs's architecture name
    dataset: str
    source_arch: str  # the architecture's name in the source code


@dataclass(frozen=True)
class _Dataset:
    """What a checkpoint needs to know of a dataset the published models were trained on."""

    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: list[str] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_cost: str


_DATASETS = {
    "cifar10": _Dataset(10, (3, 32, 32), CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, "3"),
    # Labels are the sorted wnids (torchvision's ImageFolder, as csrs.data's imagenet loader).
    "imagenet": _Dataset(1000, (3, 224, 224), None, IMAGENET_MEAN, IMAGENET_STD, "0"),
}


@dataclass(frozen=True)
class _Source:
    """A published format: the keys that identify it, its architectures (source name -> csrs
    architecture and dataset) and whether its models normalise their inputs."""

    keys: tuple[str, ...]
    archs: dict[str, tuple[str, str]]
    normalized: bool


SOURCES: dict[str, _Source] = {
    "cohen": _Source(
        ("arch", "state_dict"),
        {"cifar_resnet20": ("cifar-resnet20", "cifar10"),
         "cifar_resnet110": ("cifar-resnet110", "cifar10"),
         "resnet50": ("resnet50", "imagenet")},
        normalized=True),
    "macer": _Source(("net",), {"resnet110": ("cifar-resnet110", "cifar10")}, normalized=False),
}


def _detect(payload: Any) -> str | None:
    """Returns the format whose keys ``payload`` holds ("csrs" for a csrs checkpoint), or None."""
    if not isinstance(payload, dict):
        return None
    if payload.get("format") == CHECKPOINT_FORMAT:
        return "csrs"
    for name, source in SOURCES.items():
        if all(key in payload for key in source.keys):
            return name
    return None


def _describe_keys(payload: Any) -> str:
    if not isinstance(payload, dict):
        return f"a {type(payload).__name__}, not a dict"
    keys = [str(key) for key in payload]
    shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
    return f"keys found: {shown or 'none'}"


def _check_format(payload: Any, name: str, where: str) -> None:
    """Raises PublishedFormatError unless ``payload`` (read from ``where``) is in format
    ``name``."""
    found = _detect(payload)
    if found == name:
        return
    expected = ", ".join(f"'{key}'" for key in SOURCES[name].keys)
    hint = ""
    if found == "csrs":
        hint = "; it is already a csrs checkpoint: certify it as it is"
    elif found is not None:
        hint = f"; it looks like --from {found}"
    raise PublishedFormatError(f"{where} is not in {name}'s format (a dict with {expected}); "
                               f"{_describe_keys(payload)}{hint}")


def _strip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Returns ``state`` with ``prefix`` taken off its keys, if every key has it."""
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return state


def _net_state(payload: dict[str, Any], name: str) -> dict[str, torch.Tensor]:
    """Returns the net's own state_dict out of a published checkpoint, prefixes removed."""
    state = payload["state_dict"] if name == "cohen" else payload["net"]
    if not isinstance(state, dict):
        raise PublishedFormatError(f"the {name} checkpoint's weights are a "
                                   f"{type(state).__name__}, not a state_dict")
    if name == "cohen":
        # Sequential(NormalizeLayer, net): entry 1 is the net, entry 0 has no state.
        others = [key for key in state if not key.startswith("1.")]
        if others:
            raise PublishedFormatError(f"the Cohen-format state_dict has keys outside the net "
                                       f"'1.': {', '.join(others[:5])}")
        state = _strip(state, "1.")
    return _strip(state, "module.")  # DataParallel


def _load_exactly(net: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Loads ``state`` into ``net``; raises naming the keys or shapes that do not match."""
    expected = net.state_dict()
    # BatchNorm's step counter is unused in eval mode; files from before PyTorch 0.4.1 lack it.
    state = {**{key: value for key, value in expected.items()
                if key.endswith("num_batches_tracked")}, **state}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        parts = [f"{label} {', '.join(keys[:4])}" + (f" ({len(keys)} in all)" if len(keys) > 4
                                                     else "")
                 for label, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise PublishedFormatError(f"the weights do not fit {what}: {'; '.join(parts)}")
    for key, value in expected.items():
        if not isinstance(state[key], torch.Tensor) or state[key].shape != value.shape:
            shape = tuple(getattr(state[key], "shape", ()))
            raise PublishedFormatError(f"the weights do not fit {what}: {key} has shape {shape} "
                                       f"in the file, {tuple(value.shape)} in the model")
    net.load_state_dict(state)


def published_model(payload: Any, source: str, *, dataset: str | None = None,
                    arch: str | None = None, path: Path | None = None) -> PublishedModel:
    """Returns the model of a loaded published checkpoint ``payload`` in format ``source``.

    The model is ``Sequential(Normalize(mean, std), net)`` in eval mode and maps [0, 1] inputs to
    the logits of the original code's model. ``arch`` is the source's architecture name where
    the file does not record it (MACER; default its only one, ``resnet110``); ``dataset``
    defaults to the one the architecture was built for. ``path`` only names the file in errors.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown format '{source}'; choose from: {', '.join(SOURCES)}")
    spec, where = SOURCES[source], f"'{path}'" if path is not None else "the checkpoint"
    _check_format(payload, source, where)
    # --arch may name the source's architecture or csrs's (resnet110 or cifar-resnet110).
    by_csrs_name = {csrs_arch: name for name, (csrs_arch, _) in spec.archs.items()}
    arch = by_csrs_name.get(arch, arch)
    recorded = payload.get("arch")
    if recorded is not None and arch is not None and arch != recorded:
        raise PublishedFormatError(f"{where} holds a {recorded}, not a {arch}")
    source_arch = recorded or arch or next(iter(spec.archs))
    if source_arch not in spec.archs:
        raise PublishedFormatError(f"architecture '{source_arch}' of {where} is not one csrs "
                                   f"can rebuild; {source} architectures: "
                                   f"{', '.join(spec.archs)}")
    csrs_arch, native = spec.archs[source_arch]
    dataset = dataset or native
    if dataset != native:
        raise PublishedFormatError(f"{source}'s {source_arch} is a {native} model; got dataset "
                                   f"'{dataset}'")
    facts = _DATASETS[dataset]
    model = build_model(csrs_arch, num_classes=facts.num_classes, input_shape=facts.input_shape,
                        mean=facts.mean if spec.normalized else None,
                        std=facts.std if spec.normalized else None)
    _load_exactly(model[1], _net_state(payload, source),
                  f"csrs's {csrs_arch} ({source}'s {source_arch}, {facts.num_classes} classes)")
    return PublishedModel(model.eval(), csrs_arch, dataset, source_arch)


def import_published(src: str | Path, out: str | Path, *, source: str, sigma: float,
                     dataset: str | None = None, arch: str | None = None,
                     data_dir: str | Path | None = None, cost: str | None = None) -> Path:
    """Writes the published checkpoint ``src`` (format ``source``) as a csrs checkpoint at
    ``out`` and returns its path.

    ``sigma`` is the noise level the model was trained at; it becomes the checkpoint's sigma,
    the default of ``csrs certify``. ``cost`` (a cost spec, default the dataset's) and
    ``data_dir`` are stored for certification. Raises PublishedFormatError (a ValueError) with
    one line for a file in another format or with weights that do not fit.
    """
    if not (isinstance(sigma, (int, float)) and 0 < sigma < float("inf")):
        raise ValueError(f"sigma must be a positive number (the training noise level); got "
                         f"{sigma!r}")
    src = Path(src)
    if not src.is_file():
        raise PublishedFormatError(f"published checkpoint '{src}' does not exist")
    payload = read_weights_only(src, PublishedFormatError,
                                "cannot be read with torch.load(weights_only=True); csrs reads "
                                "saved state_dicts, never pickled code")
    published = published_model(payload, source, dataset=dataset, arch=arch, path=src)
    data = _DATASETS[published.dataset]
    cost_matrix = CostMatrix.parse(cost or data.default_cost, data.num_classes, data.class_names)
    normalize = published.model[0]
    epoch = payload.get("epoch")
    meta = {
        "arch": published.arch, "num_classes": data.num_classes,
        "class_names": data.class_names, "input_shape": list(data.input_shape),
        "mean": None if normalize.mean is None else normalize.mean.tolist(),
        "std": None if normalize.std is None else normalize.std.tolist(),
        "dataset": published.dataset, "data_dir": None if data_dir is None else str(data_dir),
        "data_options": {}, "sigma": float(sigma), "cost_matrix": cost_matrix.to_list(),
        "cost_spec": cost_matrix.spec(), "method": None, "hparams": {},
        "epoch": epoch if isinstance(epoch, int) else None, "epochs": None, "seed": None,
        "source": {"format": source, "file": str(src), "arch": published.source_arch},
    }
    return save_checkpoint(out, published.model, meta)
