"""Setting up a training run: joining torchrun's process group, locking the outputs, seeding, the training
loader, and the trained network on its device (channels_last, SyncBatchNorm + DDP, torch.compile)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
from timm.layers import SplitAttn, convert_sync_batchnorm
from torch.utils.data import DataLoader, Dataset

from engine.config import ConfigError, LoopConfig
from engine.options import check_outputs, check_save_is_new, lock_outputs, release_outputs
from utils.distributed import DistributedContext, EpochShuffleSampler, setup_distributed
from utils.runtime import configure_backends, seed_everything, use_deterministic_algorithms


def start_training(config: LoopConfig) -> DistributedContext:
    """Join torchrun's process group, check and lock the outputs, configure the backends and seed this process;
    `--deterministic` switches to deterministic algorithms before any CUDA work."""
    if config.deterministic:
        use_deterministic_algorithms()
    ctx = setup_distributed(config.device)
    if ctx.is_main:
        check_outputs(config)
    check_save_is_new(config)
    if ctx.is_main:
        lock_outputs(config)
    configure_backends(ctx.device, deterministic=config.deterministic)
    seed_everything(config.seed + ctx.rank)
    return ctx


@contextlib.contextmanager
def training_run(config: LoopConfig) -> Iterator[DistributedContext]:
    """start_training, then the `with` block; the locks of --save and --log-dir are released however it ends (a
    bad --val-set, a teacher that does not load, Ctrl-C), so that no lock file outlives the run."""
    try:
        yield start_training(config)
    finally:
        release_outputs(config)


def make_train_loader(dataset: Dataset, config: LoopConfig, ctx: DistributedContext,
                      flags: str) -> tuple[DataLoader, EpochShuffleSampler]:
    """Shuffled loader of this process's share of every global batch, in micro-batches. Its workers start
    afresh every epoch (not persistent): their augmentation streams are then seeded from this process's
    generator, which a checkpoint saves, so that --resume continues exactly. `flags` name the data set."""
    if len(dataset) < config.batch_size:
        raise ConfigError(f"--batch-size {config.batch_size} is larger than the training set ({len(dataset)} images "
                          f"in {flags}); lower --batch-size to at most {len(dataset)}")
    sampler = EpochShuffleSampler(len(dataset), config.batch_size, ctx.rank, ctx.world_size, config.seed)
    loader = DataLoader(dataset, batch_size=config.micro_batch_size, sampler=sampler, num_workers=config.workers,
                        pin_memory=ctx.device.type == "cuda", drop_last=False)
    return loader, sampler


def synchronises_batchnorm(ctx: DistributedContext) -> bool:
    """Whether BatchNorm runs as SyncBatchNorm here: under DDP on CUDA (gloo on the CPU has no SyncBatchNorm)."""
    return ctx.enabled and ctx.device.type == "cuda"


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm of `module` as SyncBatchNorm, with timm's converter: timm's BatchNormAct2d (EfficientNet,
    RegNet, CSP backbones) becomes SyncBatchNormAct and keeps its activation, which torch's converter drops.
    Weights, running statistics, train/eval mode and requires_grad are kept."""
    return convert_sync_batchnorm(module)


def prepare_trained_module(module: nn.Module, config: LoopConfig, ctx: DistributedContext,
                           unused_parameters: bool = False) -> nn.Module:
    """Move to the device, channels_last, SyncBatchNorm + DDP under torchrun, torch.compile on request.
    Every DFFNet variant uses all its parameters in every step, so DDP does not search for unused ones; a network
    with parameters its forward never uses (MiDaS's last fusion block keeps an unused residual unit, as the
    released weights do) passes `unused_parameters`."""
    refuse_one_image_batch_statistics(module, config, ctx, "the trained network")
    module = module.to(ctx.device)
    if config.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if ctx.enabled:
        if synchronises_batchnorm(ctx):
            module = sync_batchnorm(module)
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=unused_parameters)
    if config.compile:
        module = torch.compile(module)
    return module


def refuse_one_image_batch_statistics(module: nn.Module, config: LoopConfig, ctx: DistributedContext,
                                      role: str) -> None:
    """Stop at start when a network with split attention (ResNeSt) would take BatchNorm statistics of one image:
    its 1x1 pooled map then has one value per channel, which BatchNorm refuses in training."""
    if config.micro_batch_size > 1 or synchronises_batchnorm(ctx) or \
            not any(isinstance(m, SplitAttn) for m in module.modules()):
        return
    raise ConfigError(f"--batch-size {config.batch_size} over {ctx.world_size} process(es) x --accumulate "
                      f"{config.accumulate} gives micro-batches of 1 image, and {role} (split attention, ResNeSt) "
                      "cannot take BatchNorm statistics of one image; use micro-batches of 2 or more (a larger "
                      "--batch-size or a smaller --accumulate), or torchrun on CUDA GPUs (SyncBatchNorm)")
