"""torchrun / DDP set-up (gloo on CPU, nccl on CUDA), rank-0 helpers and the training sampler."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from utils.runtime import select_device


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs: its rank among `world_size` processes and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> DistributedContext:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU); else one process."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    selected = select_device(device)
    if selected.type == "cuda":
        selected = torch.device("cuda", local_rank if world_size > 1 else (selected.index or 0))
        torch.cuda.set_device(selected)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if selected.type == "cuda" else "gloo")
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=selected)


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of `value` over all processes (the value itself in a single process)."""
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch) and drops the last incomplete global batch.

    Each global batch of `global_batch` indices is cut into `world_size` contiguous blocks and this
    process yields block `rank`. So one process running the blocks as accumulation steps sees exactly
    the same sub-batches as `world_size` processes do (unlike DistributedSampler's strided split), and
    an epoch's order depends only on (seed, epoch), which is all `--resume` needs to restore it.
    Call `set_epoch` before every epoch, as with DistributedSampler.
    """

    def __init__(self, dataset_size: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 42) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} processes")
        if dataset_size < global_batch:
            raise ValueError(f"the training set has {dataset_size} images, fewer than one batch of {global_batch}")
        self.dataset_size, self.global_batch = dataset_size, global_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.local_batch = global_batch // world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def __len__(self) -> int:
        return (self.dataset_size // self.global_batch) * self.local_batch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.dataset_size, generator=generator).tolist()
        for start in range(0, self.dataset_size - self.global_batch + 1, self.global_batch):
            block = start + self.rank * self.local_batch
            yield from order[block : block + self.local_batch]
