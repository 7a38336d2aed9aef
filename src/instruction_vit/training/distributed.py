"""Multi-process training with PyTorch's DDP, launched by ``torchrun`` (one process per GPU, or CPU + gloo).

``train.batch_size`` is the global batch: each of the W processes takes ``batch_size / W`` samples of every
global batch, in the same seeded order a single process would use, so a run means the same thing at any W.
Rank 0 alone writes the run folder, logs, evaluates and saves checkpoints; the others wait for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from ..errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
            tensor /= self.size
        return tensor

    def in_turn(self, make: Callable[[], T]) -> T:
        """``make()`` in every process, in three turns: rank 0 first (it writes caches: prompt bank, image store),
        then the first process of every other node (which finds rank 0's files on a shared filesystem, or writes
        its node's own), then all the others (which find them). No two processes write the same file at once."""
        result = make() if self.is_main else None
        self.barrier()
        if self.local_rank == 0 and not self.is_main:
            result = make()
        self.barrier()
        return make() if self.local_rank != 0 else result

    def shard(self, order: torch.Tensor, global_batch: int, batches: int) -> list[int]:
        """This rank's sample indices: its slice of each of the first ``batches`` global batches of ``order``."""
        if global_batch % self.size:
            raise ConfigError(f"train.batch_size={global_batch} must divide evenly over {self.size} processes")
        grid = order[: batches * global_batch].view(batches, self.size, global_batch // self.size)
        return grid[:, self.rank].flatten().tolist()


def init_world(device_name: str) -> tuple[World, torch.device | None]:
    """The process group torchrun describes (``WORLD_SIZE`` > 1), else a world of one.

    Returns the world and, when distributed, this process's device (``cuda:LOCAL_RANK`` or the CPU).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    return World(dist.get_rank(), dist.get_world_size(), local_rank), device


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
