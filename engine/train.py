"""The training loop every stage runs (stage 1, stage 2, R-DFFNet, the depth teacher): `Stage`, `train_step`,
`fit` and `run_stage`.

Per epoch `fit` sets the poly learning rate (times the stage's warm-up factor per step), runs `train_step` (one
optimiser step over `--accumulate` micro-batches, element-wise clamp of the model's gradients unless the
config's clip is None; the step bench/train_speed.py times), logs, checks that every weight is finite, validates
when the stage has a validation, and writes a resumable checkpoint (engine.resume). What a stage trains, its
loss and its hooks come from engine.stages / engine.depth as a `Stage`; set-up is engine.run's.

Batch semantics: `--batch-size` is the GLOBAL batch (the paper's 6), split over torchrun processes
and `--accumulate` steps. A batch-summed loss term (the authors' DOF-edge dice) is scaled by
processes x accumulation so the gradient equals that of the whole batch. BatchNorm normalises each
micro-batch on its own, except under DDP on CUDA, where it is synchronised (SyncBatchNorm, in the student
and in teachers that use batch statistics) so that N GPUs behave like the paper's single GPU. On the CPU
(gloo) SyncBatchNorm does not exist: there a run with P processes equals a single process with
`--accumulate P`.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from engine.config import LoopConfig
from engine.options import claim_log_dir, log_dir
from engine.resume import gather_rng_states, resume_from, training_checkpoint
from utils.checkpoint import first_non_finite, last_good_checkpoint, save_checkpoint
from utils.distributed import DistributedContext, EpochShuffleSampler, all_reduce_sum, barrier, cleanup_distributed
from utils.errors import RunError
from utils.log import RemainingTime, TrainingLogger, progress
from utils.optim import clip_grad_value, set_lr
from utils.schedule import poly_lr


class TrainingStopped(RunError):
    """The run cannot go on (a non-finite loss or weight, a stage's own check); the message names the last good
    checkpoint, which stays."""


class NonFiniteLossError(TrainingStopped):
    """The loss became NaN or infinite."""


class NonFiniteWeightsError(TrainingStopped):
    """A parameter or buffer became NaN or infinite (e.g. a BatchNorm running variance, which the loss in
    training mode does not see); the run stops without saving."""


class TrainingInterrupted(RunError):
    """Ctrl-C during training; the message names the last checkpoint to resume from."""

    exit_code = 130  # the shell's status for a process ended by SIGINT


class CheckpointWriteError(RunError):
    """The checkpoint of an epoch could not be written; the message names the last good one."""


Batch = dict[str, torch.Tensor]
LossFn = Callable[[Batch, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class Validation:
    """Scores of held-out data, every `every` epochs and after the last, logged as `columns` (blank when `run` is
    None: no held-out set); with `best`, the epoch with the lowest value of that column is also saved as
    <save>_best.pth."""

    run: Callable[[], dict[str, float]] | None
    columns: tuple[str, ...]
    every: int = 1
    best: str | None = None


@dataclass
class Stage:
    """What the loop trains. `network` is the (possibly wrapped) trained module; `model` the unwrapped network
    saved as the checkpoint's model; `optimizer` is poly-scheduled and its gradients clamped; `extra_optimizers`
    keep a constant rate and are not clamped; `extra_modules` are saved for resuming. `loss_fn(batch, epoch)`
    returns the loss and its named terms, the batch holding the `inputs` entries on the device.
    Hooks: `epoch_values(epoch)`, the stage's own per-epoch settings logged beside the terms (e.g. the
    distillation weight); `lr_factor(global_step)`, a warm-up; `check_step(terms, epoch, step)`, a reason to stop
    or None; `validation`; `closing_note(last epoch's summary)`, a line logged at the end."""

    network: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    inputs: tuple[str, ...] = ("image", "mask")
    extra_optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    extra_modules: dict[str, nn.Module] = field(default_factory=dict)
    epoch_values: Callable[[int], dict[str, float]] = lambda epoch: {}
    lr_factor: Callable[[int], float] = lambda global_step: 1.0
    check_step: Callable[[dict[str, float], int, int], str | None] = lambda terms, epoch, step: None
    validation: Validation | None = None
    closing_note: Callable[[dict[str, Any]], str | None] = lambda summary: None


def to_device(batch: dict[str, Any], inputs: tuple[str, ...], config: LoopConfig, device: torch.device) -> Batch:
    """The `inputs` of a training batch on the device, its image channels_last on request."""
    moved = {name: batch[name].to(device, non_blocking=True) for name in inputs}
    if config.channels_last:
        moved["image"] = moved["image"].contiguous(memory_format=torch.channels_last)
    return moved


def best_checkpoint_path(save: str | Path) -> Path:
    """Where the best validation checkpoint goes: checkpoint/DFFNet.pth -> checkpoint/DFFNet_best.pth."""
    save = Path(save)
    return save.with_name(f"{save.stem}_best{save.suffix}")


def first_non_finite_weight(stage: Stage, ctx: DistributedContext) -> str | None:
    """The first parameter or buffer of the stage's model or extra modules that holds NaN or inf on any
    process ('name (NaN|inf)'), else None."""
    tensors = dict(stage.model.state_dict())
    for name, module in stage.extra_modules.items():
        tensors.update({f"{name}.{key}": value for key, value in module.state_dict().items()})
    bad = first_non_finite(tensors)
    if ctx.enabled:
        bad_processes = all_reduce_sum(torch.tensor([float(bad is not None)], device=ctx.device)).item()
        if bad_processes and bad is None:
            bad = "a weight of another process"
    return bad


def train_step(stage: Stage, micro_batches: Iterator[dict[str, Any]], epoch: int, config: LoopConfig,
               ctx: DistributedContext, scaler: torch.amp.GradScaler) -> dict[str, float]:
    """One optimiser step over `config.accumulate` micro-batches: forward, loss, backward, element-wise clamp
    of the model's gradients, optimiser steps. Returns the whole batch's loss terms; raises
    NonFiniteLossError (before any weight changes) when the loss is NaN or infinite."""
    totals = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for micro in range(config.accumulate):
        batch = to_device(next(micro_batches), stage.inputs, config, ctx.device)
        last_micro = micro == config.accumulate - 1
        sync = contextlib.nullcontext() if last_micro or not ctx.enabled else stage.network.no_sync()
        with sync:
            loss, terms = stage.loss_fn(batch, epoch)
            scaler.scale(loss / config.accumulate).backward()
        names = ("loss", *terms)
        totals = totals + torch.stack([value.detach().double() for value in (loss, *terms.values())]) / config.accumulate
    if ctx.enabled:  # the whole batch's values, not this process's share
        totals = all_reduce_sum(totals) / ctx.world_size
    terms_this_step = dict(zip(names, totals.tolist()))  # the step's one device sync
    if not math.isfinite(terms_this_step["loss"]):
        stage.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(f"loss terms {terms_this_step}")
    scaler.unscale_(stage.optimizer)
    if config.clip is not None:
        clip_grad_value(stage.model.parameters(), config.clip)
    scaler.step(stage.optimizer)
    for opt in stage.extra_optimizers.values():
        scaler.step(opt)
    scaler.update()
    stage.optimizer.zero_grad(set_to_none=True)
    for opt in stage.extra_optimizers.values():
        opt.zero_grad(set_to_none=True)
    return terms_this_step


def validate(stage: Stage, epoch: int, config: LoopConfig, ctx: DistributedContext) -> dict[str, Any]:
    """The stage's validation columns for `epoch`: its scores when it validates this epoch, else blanks. The
    random generators are left as they were, so that validating does not change the training that follows."""
    validation = stage.validation
    if validation is None:
        return {}
    if validation.run is None or not (epoch % validation.every == 0 or epoch == config.epochs):
        return dict.fromkeys(validation.columns, "")
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        scores = validation.run()
    return {column: scores[column] for column in validation.columns}


def fit(stage: Stage, config: LoopConfig, ctx: DistributedContext, loader: DataLoader,
        sampler: EpochShuffleSampler, logger: TrainingLogger, start_epoch: int, best_score: float | None,
        scaler: torch.amp.GradScaler) -> tuple[Path, dict[str, Any]]:
    """Run epochs start_epoch..config.epochs; returns the path of the final checkpoint and the last epoch's
    summary."""
    save_path = Path(config.save)
    steps_per_epoch = len(loader) // config.accumulate
    last_saved = start_epoch - 1 if start_epoch > 1 else None
    pace = RemainingTime((config.epochs - start_epoch + 1) * steps_per_epoch)
    summary: dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            lr = poly_lr(epoch, config.lr, config.schedule_epochs, config.lr_power)
            sampler.set_epoch(epoch)
            micro_batches = iter(loader)
            stage.network.train()
            sums: dict[str, float] = {}
            epoch_start = time.time()
            bar = progress(range(1, steps_per_epoch + 1), desc=f"epoch {epoch}/{config.epochs}",
                           disable=not ctx.is_main)
            for step in bar:
                global_step = (epoch - 1) * steps_per_epoch + step
                step_lr = lr * stage.lr_factor(global_step)
                set_lr(stage.optimizer, step_lr)
                try:
                    terms_this_step = train_step(stage, micro_batches, epoch, config, ctx, scaler)
                except NonFiniteLossError as e:
                    raise NonFiniteLossError(f"non-finite loss at epoch {epoch}, step {step}/{steps_per_epoch} "
                                             f"({e}); stopping. Last good checkpoint: "
                                             f"{last_good_checkpoint(save_path, last_saved)}") from None
                if (reason := stage.check_step(terms_this_step, epoch, step)) is not None:
                    raise TrainingStopped(f"{reason}. Last good checkpoint: "
                                          f"{last_good_checkpoint(save_path, last_saved)}")
                row = {"epoch": epoch, "step": step, "global_step": global_step, "lr": step_lr,
                       **stage.epoch_values(epoch)}
                row.update(terms_this_step)
                logger.step(row)
                for name, value in terms_this_step.items():
                    sums[name] = sums.get(name, 0.0) + value
                bar.set_postfix(loss=f"{terms_this_step['loss']:.4f}")
                if (estimate := pace.step()) is not None:
                    logger.info(estimate)
            bad_weight = first_non_finite_weight(stage, ctx)
            if bad_weight is not None:
                raise NonFiniteWeightsError(f"non-finite weights after epoch {epoch}: {bad_weight}; stopping "
                                            "without saving (the run diverged: lower --lr?). Last good checkpoint: "
                                            f"{last_good_checkpoint(save_path, last_saved)}")
            summary = {"epoch": epoch, "lr": lr, **stage.epoch_values(epoch)}
            summary.update({name: total / steps_per_epoch for name, total in sums.items()})
            summary["seconds"] = time.time() - epoch_start
            if ctx.is_main:
                summary.update(validate(stage, epoch, config, ctx))
            logger.epoch(summary)
            best = stage.validation.best if stage.validation else None
            improved = best is not None and summary.get(best, "") != "" and \
                (best_score is None or summary[best] < best_score)
            if improved:
                best_score = summary[best]
            rng_states = gather_rng_states(ctx)
            if ctx.is_main:
                checkpoint = training_checkpoint(stage, config, epoch, sampler, scaler, best_score, rng_states)
                for path in (save_path, best_checkpoint_path(save_path)) if improved else (save_path,):
                    try:
                        save_checkpoint(checkpoint, path)
                    except OSError as e:
                        raise CheckpointWriteError(
                            f"--save {path}: cannot write the checkpoint of epoch {epoch} ({e.strerror or e}); the "
                            f"last good checkpoint is {last_good_checkpoint(save_path, last_saved)}. Free space or "
                            "fix the folder, then resume with --resume") from None
                if improved:
                    logger.info(f"new best validation {best.removeprefix('val_').upper()} {best_score:.4f} -> "
                                f"{best_checkpoint_path(save_path)}")
            last_saved = epoch
            barrier()
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"interrupted in epoch {epoch}; last checkpoint: "
                                  f"{last_good_checkpoint(save_path, last_saved)}. Resume with --resume") from None
    return save_path, summary


def run_stage(stage: Stage, config: LoopConfig, ctx: DistributedContext, loader: DataLoader,
              sampler: EpochShuffleSampler, description: str) -> Path:
    """Resume if asked, log the set-up, run the loop, and always leave the process group (the --save and
    --log-dir locks are engine.run.training_run's to release). A non-finite loss or weight, a stage's own stop and
    Ctrl-C raise a RunError whose one line names the last good checkpoint."""
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.amp == "fp16")
    start_epoch, best_score = 1, None
    if config.resume_path is not None:
        completed, best_score = resume_from(config.resume_path, stage, config, scaler, ctx)
        start_epoch = completed + 1
    logger = TrainingLogger(claim_log_dir(config) if ctx.is_main else log_dir(config), enabled=ctx.is_main,
                            resume_epoch=start_epoch - 1 if config.resume is not None else None,
                            scores=stage.validation.columns if stage.validation else ())
    try:
        logger.info(f"{description}: {len(loader.dataset)} training images, global batch {config.batch_size} "
                    f"({ctx.world_size} process(es) x {config.accumulate} micro-batch(es)), "
                    f"{len(loader) // config.accumulate} steps/epoch, epochs {start_epoch}..{config.epochs}, "
                    f"device {ctx.device}, amp {config.amp}")
        if start_epoch > config.epochs:
            logger.info(f"{config.save} already holds epoch {start_epoch - 1}; nothing to do")
            return Path(config.save)
        path, summary = fit(stage, config, ctx, loader, sampler, logger, start_epoch, best_score, scaler)
        if (note := stage.closing_note(summary)) is not None:
            logger.info(note)
        logger.info(f"saved {path}")
        return path
    finally:
        logger.close()
        cleanup_distributed()
