"""Several processes, one job: PyTorch DDP as launched by ``torchrun``.

``torchrun --nproc-per-node N -m cellstack train ...`` starts N copies of the command
with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set. :func:`setup` joins them into one
process group once the device is known (nccl for CUDA, gloo for CPU); without torchrun
it does nothing and every helper here is the single-process identity, so the library
has one code path. The CLI tears the group down on exit (:func:`teardown`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from cellstack.errors import ArgumentTypeError, CellstackError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` (``local_rank`` on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 writes files, logs and progress bars."""
        return self.rank == 0


def launched() -> World:
    """The world ``torchrun`` announced in the environment (size 1 without torchrun)."""
    try:
        return World(
            rank=int(os.environ.get("RANK", 0)),
            size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as exc:
        raise CellstackError(
            f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}"
        ) from None


def current() -> World:
    """The world of the initialised process group, or a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), launched().local_rank)
    return World()


def setup(device: torch.device) -> World:
    """Join the process group torchrun started (idempotent); returns this process's world.

    ``device`` picks the backend: nccl for CUDA (each process on ``cuda:LOCAL_RANK``,
    which the caller should already have chosen), gloo otherwise.
    """
    world = launched()
    if world.size == 1:
        return World()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return current()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T], world: World) -> list[T]:
    """This rank's share of ``items``: every ``size``-th one, starting at ``rank``."""
    return list(items[world.rank :: world.size])


def gather(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if world.size == 1:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def mean(values: torch.Tensor, world: World) -> torch.Tensor:
    """Element-wise mean over ranks of a tensor (the tensor itself in one process)."""
    if world.size == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / world.size


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def pick_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when available, else CPU; under torchrun each process takes the
    GPU of its ``LOCAL_RANK`` (``auto`` or a bare ``cuda``)."""
    import re

    if isinstance(name, torch.device):
        return name
    if not isinstance(name, str):
        raise ArgumentTypeError(
            f"device must be auto, cpu, cuda, cuda:N or mps (a str or torch.device), got {name!r}"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise CellstackError(f"device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CellstackError(f"device {name} requested but no CUDA device is available")
        if name == "cuda":
            return torch.device("cuda", local_rank)
        if int(name[5:]) >= torch.cuda.device_count():
            raise CellstackError(
                f"device {name}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise CellstackError("device mps requested but MPS is not available")
    return torch.device(name)
