"""Plain torch.distributed set-up for torchrun (one process per GPU, any number of nodes).

``torchrun --nproc_per_node 4 -m labelless train pixelclip --config FILE`` (likewise ``eval``,
``masks generate``, ``selftrain label``) sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and joins the process group (NCCL on CUDA, gloo on
CPU). Without those variables it is a single process and nothing is initialised.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from labelless.io import pick_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment variables (if any).

    ``device``: auto | cpu | cuda. On CUDA each process uses ``cuda:LOCAL_RANK``.
    ``backend``: default nccl on CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a copy; ``x`` itself is untouched)."""
    if not is_distributed():
        return x.detach().clone()
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / get_world_size()


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (e.g. the resume step decided by rank 0)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """``obj`` (picklable) of every rank, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def in_list_order(shards: list[list[tuple[int, object]]]) -> list:
    """Entries that the ranks made from their shards of one list (rank ``r`` took items
    ``r::world``), in the list's order: ``shards[r]`` holds rank ``r``'s ``(j, entry)`` pairs,
    ``j`` an index into its shard, so its ``j``-th item is item ``r + j·world`` of the list."""
    world = len(shards)
    ranked = sorted(((r + j * world, entry) for r, shard in enumerate(shards) for j, entry in shard),
                    key=lambda pair: pair[0])
    return [entry for _, entry in ranked]


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


@contextmanager
def process_group(device: str = "auto") -> Iterator[DistInfo]:
    """:func:`init_distributed` for one command run (eval, masks generate, selftrain label):
    joins torchrun's process group if there is one, and on the way out leaves it only if it
    was joined here (a caller that set up its own group, e.g. a test, keeps it)."""
    joined = not is_distributed()
    info = init_distributed(device)
    joined = joined and is_distributed()
    try:
        yield info
    finally:
        if joined:
            cleanup()
