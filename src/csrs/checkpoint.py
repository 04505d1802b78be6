"""Checkpoints that carry everything certification needs, loaded without running their code.

A checkpoint is a plain dict of tensors, numbers, strings and lists, so that
``torch.load(..., weights_only=True)`` can read it:

- ``format``: ``CHECKPOINT_FORMAT``;
- ``meta``: arch, num_classes, class_names, input_shape, mean, std, dataset, data_dir,
  data_options, sigma, cost_matrix (rows of costs), cost_spec, method, hparams, epoch, epochs, seed,
  csrs_version (``sigma`` is the noise level the model was trained at, certification's
  default); checkpoints made by ``csrs import`` (:mod:`csrs.published`) add ``source``: the
  published format, file and architecture name they came from;
- ``model``: the model's state_dict (normalisation buffers included);
- ``training``: optimizer/scheduler/RNG state for ``--resume`` (may be empty).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from csrs.costs import CostMatrix

__all__ = [
    "CHECKPOINT_FORMAT",
    "REQUIRED_META",
    "Checkpoint",
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "csrs-checkpoint-1"
REQUIRED_META = ("arch", "num_classes", "input_shape", "sigma", "dataset", "cost_matrix")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, foreign or incomplete."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: metadata, model weights and the optional training state."""

    meta: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    training: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def sigma(self) -> float:
        return float(self.meta["sigma"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def class_names(self) -> list[str] | None:
        names = self.meta.get("class_names")
        return list(names) if names else None

    def cost_matrix(self) -> CostMatrix:
        """The cost matrix the model was trained (or is to be certified) for."""
        return CostMatrix(self.meta["cost_matrix"], self.class_names)

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """Rebuild the architecture from the registry and load the weights (eval mode)."""
        from csrs.models import build_model

        model = build_model(self.meta["arch"], num_classes=self.num_classes,
                            input_shape=tuple(self.meta["input_shape"]),
                            mean=self.meta.get("mean"), std=self.meta.get("std"))
        try:
            model.load_state_dict(self.model_state)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint weights do not fit architecture "
                                  f"'{self.meta['arch']}': {first}") from None
        return model.to(device).eval()


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any],
                    training: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temporary file, then rename) and return its path."""
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {', '.join(missing)}")
    from csrs import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "meta": {**meta, "csrs_version": __version__},
        "model": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
        "training": training or {},
    }
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)
    return path


def read_weights_only(path: Path, error: type[Exception], problem: str) -> Any:
    """Return ``torch.load(path, weights_only=True)`` on the CPU; any failure to read the file
    raises ``error`` with one line: "'path' <problem>: <why>", the why in csrs's words (a
    truncated or corrupt file, objects that weights-only loading refuses, not a torch file)."""
    damage = _damage(path)
    if damage is not None:
        raise error(f"'{path}' {problem}: {damage}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as failure:  # any failure to parse means "not readable"
        # torch.load raises many kinds of errors on foreign bytes (UnpicklingError, RuntimeError,
        # KeyError, IndexError from the weights-only unpickler, ...); say what they mean.
        raise error(f"'{path}' {problem}: {_why(path, failure)}") from None


# torch.save writes a zip archive; torch.save before torch 1.6 (the field's older published
# checkpoints) a bare pickle, which starts with the PROTO opcode.
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK\x03\x04", b"\x80"


def _damage(path: Path) -> str | None:
    """Why the file is damaged, where its container shows it before torch reads it: empty, a
    zip archive cut short, or an entry whose CRC fails (torch itself never checks them, so a
    flipped byte in the weights would load silently); None otherwise."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        return None
    if not zipfile.is_zipfile(path):
        return (f"the file is truncated ({size} bytes, a zip archive without its end); copy or "
                f"write it again")
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as failure:
        return f"the file is corrupt (its zip archive cannot be read: {failure})"
    if broken is not None:
        return f"the file is corrupt (entry '{broken}' fails its checksum); copy or write it again"
    return None


def _why(path: Path, failure: Exception) -> str:
    """What a failed torch.load of an undamaged-looking file means, in one sentence."""
    with open(path, "rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC and not head.startswith(_PICKLE_MAGIC):
        return f"it is not a torch file (it starts with {head!r})"
    if isinstance(failure, pickle.UnpicklingError) and "weights only" in str(failure).lower():
        return ("it holds Python objects besides tensors and plain containers, which "
                "weights-only loading refuses since they could run code")
    if head.startswith(_PICKLE_MAGIC):
        return ("the file is truncated or corrupt (an old-format torch file that ends early or "
                "holds damaged bytes)")
    first = (str(failure).strip().splitlines() or [type(failure).__name__])[0]
    return f"torch cannot read its archive ({first.split('. ')[0].rstrip('.')})"


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint with ``weights_only=True``; raise CheckpointError with one line on any
    missing, corrupt, foreign or incomplete file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    payload = read_weights_only(path, CheckpointError, "is not a readable csrs checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{path}' is not a csrs checkpoint (expected format "
                              f"'{CHECKPOINT_FORMAT}'); train one with `csrs train`, or convert a "
                              f"published one with `csrs import`")
    meta = payload.get("meta") or {}
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing or "model" not in payload:
        raise CheckpointError(f"checkpoint '{path}' is incomplete: missing "
                              f"{', '.join(missing) or 'model weights'}")
    return Checkpoint(meta=meta, model_state=payload["model"],
                      training=payload.get("training") or {}, path=path)


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel and torch.compile wrap the real module; save the plain weights.
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
