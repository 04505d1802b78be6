"""Several processes, one run: the process group that ``torchrun`` sets up, and its collectives.

``torchrun --nproc_per_node=N --no-python csrs certify ...`` (or ``... csrs train ...``) starts N
copies of the command with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their
environment; :func:`init_from_env` joins them into one process group (gloo on CPU, nccl on CUDA,
each process on the GPU of its LOCAL_RANK). Certification then shards the examples over the
processes and training wraps the model in DistributedDataParallel.

Every helper here is a no-op in a single process (no process group), so the library code that
calls them reads the same with one process or many.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "Context",
    "all_gather_object",
    "barrier",
    "broadcast_object",
    "current",
    "init_from_env",
    "process_group",
    "shutdown",
    "sum_over_processes",
]

_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """This process's place in the run: its rank among ``world_size`` processes (0 of 1 when not
    launched distributed), its rank on this machine, and the torch device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and shows progress (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_from_env(device: str = "cpu") -> Context:
    """Returns this process's context, joining the process group when launched by torchrun.

    Without torchrun's variables (or with WORLD_SIZE=1) nothing is initialised and ``device`` is
    returned unchanged. Under torchrun, a CUDA ``device`` becomes ``cuda:<LOCAL_RANK>`` and the
    group uses nccl; any other device uses gloo. Raises ValueError for a missing launch variable
    or a device that two processes of one machine would share.
    """
    if dist.is_available() and dist.is_initialized():
        return current(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context(device=device)
    missing = [name for name in _LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; launch "
                         f"with torchrun, which sets {', '.join(_LAUNCH_VARIABLES)}")
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed; run in one process")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    try:
        requested = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device '{device}'; expected e.g. cpu or cuda") from None
    if requested.type == "cuda":
        if requested.index not in (None, local_rank):
            raise ValueError(f"under torchrun each process uses the GPU of its LOCAL_RANK "
                             f"(here {local_rank}); pass --device cuda, not '{device}'")
        if not torch.cuda.is_available():
            raise ValueError(f"device '{device}' is not available (no CUDA device found)")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if requested.type == "cuda" else "gloo",
                            init_method="env://", rank=rank, world_size=world_size)
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def current(device: str = "cpu") -> Context:
    """Returns the context of the process group already joined (one process when none is)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Context(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.get_backend() == "nccl":
        device = f"cuda:{torch.cuda.current_device()}"
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=local_rank, device=device)


def shutdown() -> None:
    """Leaves the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device: str = "cpu") -> Iterator[Context]:
    """Yields :func:`init_from_env`'s context and leaves the group afterwards, also on errors."""
    joined_here = not (dist.is_available() and dist.is_initialized())
    try:
        yield init_from_env(device)
    finally:
        if joined_here:
            shutdown()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Waits until every process has reached this point."""
    if _active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_gather_object(value: T) -> list[T]:
    """Returns every process's ``value`` (any picklable object), in rank order."""
    if not _active():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: T, source: int = 0) -> T:
    """Returns process ``source``'s ``value`` on every process (the others' are ignored)."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=source)
    return box[0]


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Returns ``tensor`` summed element-wise over all processes (in place)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
