"""The training loop shared by every stage: `Stage`, `train_step`, `fit`, resuming and RNG state.

Per epoch `fit` sets the poly learning rate, runs `train_step` (one optimiser step over `--accumulate`
micro-batches, element-wise clamp of the model's gradients; the step bench/train_speed.py times), logs,
checks that every weight is finite, optionally validates, and writes a resumable checkpoint. What a stage
trains and its loss come from engine.stages as a `Stage`; the flags and their checks are in engine.options.

Batch semantics: `--batch-size` is the GLOBAL batch (the paper's 6), split over torchrun processes
and `--accumulate` steps. A batch-summed loss term (the authors' DOF-edge dice) is scaled by
processes x accumulation so the gradient equals that of the whole batch. BatchNorm normalises each
micro-batch on its own, except under DDP on CUDA, where it is synchronised (SyncBatchNorm, in the student
and in teachers that use batch statistics) so that N GPUs behave like the paper's single GPU. On the CPU
(gloo) SyncBatchNorm does not exist: there a run with P processes equals a single process with
`--accumulate P`.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from timm.layers import SplitAttn, convert_sync_batchnorm
from torch.utils.data import DataLoader, Dataset

from datasets import DatasetWarning, build_dataset
from engine.evaluate import EvalSettings, eval_loader, score_model
from engine.options import (bad_input, check_training_arguments, claim_log_dir, lock_outputs, log_dir,
                            release_outputs)
from utils.checkpoint import (CheckpointError, first_non_finite, last_good_checkpoint, model_checkpoint,
                              read_training_checkpoint, save_checkpoint)
from utils.distributed import (DistributedContext, EpochShuffleSampler, all_reduce_sum, barrier,
                               cleanup_distributed, setup_distributed)
from utils.log import RemainingTime, TrainingLogger, progress
from utils.optim import clip_grad_value, set_lr
from utils.runtime import configure_backends, seed_everything, use_deterministic_algorithms
from utils.schedule import poly_lr

# Settings a resumed run must share with the checkpoint it continues.
RESUME_MUST_MATCH = ("model", "backbone", "train_set", "batch_size", "accumulate", "img_size", "loss",
                     "edge_reduction", "lr", "lr_power", "schedule_epochs", "clip", "seed", "distill")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops and the last good checkpoint stays."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C during training; the message names the last checkpoint to resume from."""


INTERRUPTED_EXIT = 130  # the shell's status for a process ended by SIGINT


class NonFiniteWeightsError(RuntimeError):
    """A parameter or buffer became NaN or infinite (e.g. a BatchNorm running variance, which the loss in
    training mode does not see); the run stops without saving and the last good checkpoint stays."""


# ----------------------------------------------------------------------------------------------
# reproducible state


def rng_state(device: torch.device) -> dict[str, Any]:
    """Python, numpy, torch and (on a CUDA device) that device's generator states, as types
    torch.load(weights_only=True) accepts. Only this process's own GPU is saved: under torchrun every rank
    sees every GPU, and another rank's generator is that rank's to save."""
    version, mt_state, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore the generators saved by `rng_state`; a saved CUDA state goes to `device` (this process's GPU)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if isinstance(state["cuda"], torch.Tensor) and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng_states(ctx: DistributedContext) -> list[dict[str, Any]]:
    """Every process's generator states, indexed by rank."""
    state = rng_state(ctx.device)
    if not ctx.enabled:
        return [state]
    states: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(states, state)
    return states


# ----------------------------------------------------------------------------------------------
# set-up helpers


def start_training(args: argparse.Namespace) -> DistributedContext:
    """Join torchrun's process group, check the flags, configure the backends and seed this process;
    `--deterministic` switches to deterministic algorithms before any CUDA work."""
    if args.deterministic:
        use_deterministic_algorithms()
    ctx = setup_distributed(args.device)
    check_training_arguments(args, ctx)
    if ctx.is_main:
        lock_outputs(args)
    configure_backends(ctx.device, deterministic=args.deterministic)
    seed_everything(args.seed + ctx.rank)
    return ctx


@contextlib.contextmanager
def training_run(args: argparse.Namespace) -> Iterator[DistributedContext]:
    """start_training, then the `with` block; the locks of --save and --log-dir are released however it ends (a
    bad --val-set, a teacher that does not load, Ctrl-C), so that no lock file outlives the run."""
    ctx = start_training(args)
    try:
        yield ctx
    finally:
        release_outputs(args)


def make_train_loader(args: argparse.Namespace, ctx: DistributedContext) -> tuple[DataLoader, EpochShuffleSampler]:
    """Shuffled loader of this process's share of every global batch, in micro-batches. Its workers start
    afresh every epoch (not persistent): their augmentation streams are then seeded from this process's
    generator, which a checkpoint saves, so that --resume continues exactly."""
    with bad_input("--train-set / --data-root"):
        dataset = build_dataset(args.train_set, "train", root=args.data_root, img_size=args.img_size,
                                augment=False if args.no_augment else None, crop_scale=args.crop_scale,
                                split_file=args.split_file)
    if len(dataset) < args.batch_size:
        raise SystemExit(f"--batch-size {args.batch_size} is larger than the training set ({len(dataset)} images "
                         f"in {args.train_set}); lower --batch-size to at most {len(dataset)}")
    sampler = EpochShuffleSampler(len(dataset), args.batch_size, ctx.rank, ctx.world_size, args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size // (ctx.world_size * args.accumulate), sampler=sampler,
                        num_workers=args.workers, pin_memory=ctx.device.type == "cuda", drop_last=False)
    return loader, sampler


def make_val_set(args: argparse.Namespace, train_set: Dataset | None = None) -> Dataset | None:
    """The test split of `--val-set` (masks at their original size), or None; a DatasetWarning when it shares
    images with `train_set`."""
    if not args.val_set:
        return None
    with bad_input("--val-set / --data-root"):
        val_set = build_dataset(args.val_set, "test", root=args.data_root, img_size=args.img_size)
    shared = image_files(val_set) & image_files(train_set) if train_set is not None else set()
    if shared:
        warnings.warn(f"--val-set {args.val_set} shares {len(shared)} of its {len(val_set)} images with --train-set "
                      f"{args.train_set}: validation scores the network on images it trains on, so "
                      f"{best_checkpoint_path(args.save)} would be chosen on training images; validate on a held-out "
                      "set (e.g. --train-set CUHK-TR-1-FIT --val-set CUHK-TR-1-VAL)", DatasetWarning)
    return val_set


def image_files(dataset: Dataset) -> set[Path]:
    """The resolved image files of a data set of pairs (the parts of a combined one)."""
    return {pair.image.resolve() for part in getattr(dataset, "datasets", [dataset])
            for pair in getattr(part, "pairs", [])}


def synchronises_batchnorm(ctx: DistributedContext) -> bool:
    """Whether BatchNorm runs as SyncBatchNorm here: under DDP on CUDA (gloo on the CPU has no SyncBatchNorm)."""
    return ctx.enabled and ctx.device.type == "cuda"


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm of `module` as SyncBatchNorm, with timm's converter: timm's BatchNormAct2d (EfficientNet,
    RegNet, CSP backbones) becomes SyncBatchNormAct and keeps its activation, which torch's converter drops.
    Weights, running statistics, train/eval mode and requires_grad are kept."""
    return convert_sync_batchnorm(module)


def prepare_trained_module(module: nn.Module, args: argparse.Namespace, ctx: DistributedContext) -> nn.Module:
    """Move to the device, channels_last, SyncBatchNorm + DDP under torchrun, torch.compile on request.
    Every variant uses all its parameters in every step, so DDP does not search for unused ones."""
    refuse_one_image_batch_statistics(module, args, ctx, "the trained network")
    module = module.to(ctx.device)
    if args.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if ctx.enabled:
        if synchronises_batchnorm(ctx):
            module = sync_batchnorm(module)
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if args.compile:
        module = torch.compile(module)
    return module


def refuse_one_image_batch_statistics(module: nn.Module, args: argparse.Namespace, ctx: DistributedContext,
                                      role: str) -> None:
    """Stop at start when a network with split attention (ResNeSt) would take BatchNorm statistics of one image:
    its 1x1 pooled map then has one value per channel, which BatchNorm refuses in training."""
    micro_batch = args.batch_size // (ctx.world_size * args.accumulate)
    if micro_batch > 1 or synchronises_batchnorm(ctx) or not any(isinstance(m, SplitAttn) for m in module.modules()):
        return
    raise SystemExit(f"--batch-size {args.batch_size} over {ctx.world_size} process(es) x --accumulate "
                     f"{args.accumulate} gives micro-batches of 1 image, and {role} (split attention, ResNeSt) "
                     "cannot take BatchNorm statistics of one image; use micro-batches of 2 or more (a larger "
                     "--batch-size or a smaller --accumulate), or torchrun on CUDA GPUs (SyncBatchNorm)")


def to_device(batch: dict[str, Any], args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (channels_last on request) and masks of a training batch on the device."""
    images = batch["image"].to(device, non_blocking=True)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch["mask"].to(device, non_blocking=True)


def best_checkpoint_path(save: str | Path) -> Path:
    """Where the best validation checkpoint goes: checkpoint/DFFNet.pth -> checkpoint/DFFNet_best.pth."""
    save = Path(save)
    return save.with_name(f"{save.stem}_best{save.suffix}")


def validate(model: nn.Module, loader: DataLoader, settings: EvalSettings) -> dict[str, float]:
    """MAE and F-beta of the test set of `loader`, predicted and scored as test.py does
    (engine.evaluate.score_model)."""
    was_training = model.training
    summary, _ = score_model(model, loader.dataset, loader.dataset.name, settings, loader=loader)
    model.train(was_training)
    return {"mae": summary["mae"], "fbeta": summary["fbeta"]}


# ----------------------------------------------------------------------------------------------
# the training loop


LossFn = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class Stage:
    """What the loop trains: `network` is the (possibly wrapped) trained module; `dbd_model` the
    unwrapped defocus network saved as the checkpoint's model; `optimizer` is poly-scheduled and its
    gradients clamped; `extra_optimizers` keep a constant rate and are not clamped; `extra_modules`
    are saved for resuming. `loss_fn(images, masks, epoch)` returns the loss and its named terms;
    `epoch_values(epoch)` are the stage's own per-epoch settings logged beside them (e.g. the
    distillation weight)."""

    network: nn.Module
    dbd_model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    extra_optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    extra_modules: dict[str, nn.Module] = field(default_factory=dict)
    epoch_values: Callable[[int], dict[str, float]] = lambda epoch: {}


def training_checkpoint(stage: Stage, args: argparse.Namespace, epoch: int, sampler: EpochShuffleSampler,
                        scaler: torch.amp.GradScaler, best_val_mae: float | None,
                        rng_states: list[dict[str, Any]]) -> dict[str, Any]:
    """Our checkpoint (utils.checkpoint) of the stage's model + everything `--resume` needs."""
    return model_checkpoint(
        stage.dbd_model, vars(args), epoch,
        optimizers={"model": stage.optimizer.state_dict(),
                    **{name: opt.state_dict() for name, opt in stage.extra_optimizers.items()}},
        extra_modules={name: module.state_dict() for name, module in stage.extra_modules.items()},
        schedule={"epoch": epoch, "lr": poly_lr(epoch, args.lr, args.schedule_epochs, args.lr_power),
                  "schedule_epochs": args.schedule_epochs},
        sampler=sampler.state_dict(),
        grad_scaler=scaler.state_dict(),
        best_val_mae=best_val_mae,
        rng=rng_states,
    )


def resume_from(path: Path, stage: Stage, args: argparse.Namespace, scaler: torch.amp.GradScaler,
                ctx: DistributedContext) -> tuple[int, float | None]:
    """Load a training checkpoint into the stage; returns (last completed epoch, best validation MAE)."""
    try:
        state = read_training_checkpoint(path)
    except CheckpointError as e:
        raise SystemExit(f"--resume: {e}") from None
    if state.get("model_config", {}).get("name") == "midas":
        raise SystemExit(f"--resume {path}: is a depth-teacher checkpoint (MiDaS, written by train_depth.py), not a "
                         "blur detector's run: resume the --save of a train_single.py / train_kd.py run")
    for key in RESUME_MUST_MATCH:
        if key in state["config"] and state["config"][key] != getattr(args, key, None):
            flag = "--" + key.replace("_", "-")
            raise SystemExit(f"--resume {path}: {flag} {getattr(args, key, None)!r} differs from the checkpoint's "
                             f"{state['config'][key]!r}")
    stage.dbd_model.load_state_dict(state["model"])
    stage.optimizer.load_state_dict(state["optimizers"]["model"])
    for name, opt in stage.extra_optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    for name, module in stage.extra_modules.items():
        module.load_state_dict(state["extra_modules"][name])
    load_grad_scaler(scaler, state["grad_scaler"], path, ctx)
    if len(state["rng"]) == ctx.world_size:
        set_rng_state(state["rng"][ctx.rank], ctx.device)
    elif ctx.is_main:
        print(f"--resume {path}: saved with {len(state['rng'])} process(es), now {ctx.world_size}: "
              "random streams are reseeded, so the run is not bit-identical to an uninterrupted one")
    return int(state["epoch"]), state["best_val_mae"]


def load_grad_scaler(scaler: torch.amp.GradScaler, saved: dict[str, Any], path: Path, ctx: DistributedContext) -> None:
    """Restore the fp16 gradient scaler. A run saved without fp16 (--amp off or bf16) stored an empty state:
    resumed with --amp fp16 the scaler starts afresh (its initial scale), as a new fp16 run's does."""
    if scaler.is_enabled() and not saved:
        if ctx.is_main:
            print(f"--resume {path}: saved without --amp fp16, so the fp16 gradient scaler starts afresh")
        return
    scaler.load_state_dict(saved)


def first_non_finite_weight(stage: Stage, ctx: DistributedContext) -> str | None:
    """The first parameter or buffer of the stage's model or extra modules that holds NaN or inf on any
    process ('name (NaN|inf)'), else None."""
    tensors = dict(stage.dbd_model.state_dict())
    for name, module in stage.extra_modules.items():
        tensors.update({f"{name}.{key}": value for key, value in module.state_dict().items()})
    bad = first_non_finite(tensors)
    if ctx.enabled:
        bad_processes = all_reduce_sum(torch.tensor([float(bad is not None)], device=ctx.device)).item()
        if bad_processes and bad is None:
            bad = "a weight of another process"
    return bad


def train_step(stage: Stage, micro_batches: Iterator[dict[str, Any]], epoch: int, args: argparse.Namespace,
               ctx: DistributedContext, scaler: torch.amp.GradScaler) -> dict[str, float]:
    """One optimiser step over `args.accumulate` micro-batches: forward, loss, backward, element-wise clamp
    of the model's gradients, optimiser steps. Returns the whole batch's loss terms; raises
    NonFiniteLossError (before any weight changes) when the loss is NaN or infinite."""
    totals = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for micro in range(args.accumulate):
        images, masks = to_device(next(micro_batches), args, ctx.device)
        last_micro = micro == args.accumulate - 1
        sync = contextlib.nullcontext() if last_micro or not ctx.enabled else stage.network.no_sync()
        with sync:
            loss, terms = stage.loss_fn(images, masks, epoch)
            scaler.scale(loss / args.accumulate).backward()
        names = ("loss", *terms)
        totals = totals + torch.stack([value.detach().double() for value in (loss, *terms.values())]) / args.accumulate
    if ctx.enabled:  # the whole batch's values, not this process's share
        totals = all_reduce_sum(totals) / ctx.world_size
    terms_this_step = dict(zip(names, totals.tolist()))  # the step's one device sync
    if not math.isfinite(terms_this_step["loss"]):
        stage.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(f"loss terms {terms_this_step}")
    scaler.unscale_(stage.optimizer)
    clip_grad_value(stage.dbd_model.parameters(), args.clip)
    scaler.step(stage.optimizer)
    for opt in stage.extra_optimizers.values():
        scaler.step(opt)
    scaler.update()
    stage.optimizer.zero_grad(set_to_none=True)
    for opt in stage.extra_optimizers.values():
        opt.zero_grad(set_to_none=True)
    return terms_this_step


def fit(stage: Stage, args: argparse.Namespace, ctx: DistributedContext, loader: DataLoader,
        sampler: EpochShuffleSampler, logger: TrainingLogger, start_epoch: int, best_val_mae: float | None,
        scaler: torch.amp.GradScaler) -> Path:
    """Run epochs start_epoch..args.epochs; returns the path of the final checkpoint."""
    save_path = Path(args.save)
    val_set = make_val_set(args, loader.dataset) if ctx.is_main else None
    val_settings = EvalSettings(device=ctx.device, amp=args.amp, batch_size=1, workers=min(args.workers, 2),
                                img_size=args.img_size, data_root=args.data_root)
    val_loader = eval_loader(val_set, val_settings, persistent=True) if val_set is not None else None
    steps_per_epoch = len(loader) // args.accumulate
    last_saved = start_epoch - 1 if start_epoch > 1 else None
    pace = RemainingTime((args.epochs - start_epoch + 1) * steps_per_epoch)
    try:
        for epoch in range(start_epoch, args.epochs + 1):
            lr = poly_lr(epoch, args.lr, args.schedule_epochs, args.lr_power)
            set_lr(stage.optimizer, lr)
            sampler.set_epoch(epoch)
            micro_batches = iter(loader)
            stage.network.train()
            sums: dict[str, float] = {}
            epoch_start = time.time()
            bar = progress(range(1, steps_per_epoch + 1), desc=f"epoch {epoch}/{args.epochs}",
                           disable=not ctx.is_main)
            for step in bar:
                try:
                    terms_this_step = train_step(stage, micro_batches, epoch, args, ctx, scaler)
                except NonFiniteLossError as e:
                    raise NonFiniteLossError(f"non-finite loss at epoch {epoch}, step {step}/{steps_per_epoch} "
                                             f"({e}); stopping. Last good checkpoint: "
                                             f"{last_good_checkpoint(save_path, last_saved)}") from None
                row = {"epoch": epoch, "step": step, "global_step": (epoch - 1) * steps_per_epoch + step, "lr": lr,
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
            summary: dict[str, Any] = {"epoch": epoch, "lr": lr, **stage.epoch_values(epoch)}
            summary.update({name: total / steps_per_epoch for name, total in sums.items()})
            summary["seconds"] = time.time() - epoch_start
            summary.update(val_mae="", val_fbeta="")
            if val_loader is not None and (epoch % args.val_every == 0 or epoch == args.epochs):
                with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
                    scores = validate(stage.dbd_model, val_loader, val_settings)
                summary.update(val_mae=scores["mae"], val_fbeta=scores["fbeta"])
            logger.epoch(summary)
            improved = summary["val_mae"] != "" and (best_val_mae is None or summary["val_mae"] < best_val_mae)
            if improved:
                best_val_mae = summary["val_mae"]
            rng_states = gather_rng_states(ctx)
            if ctx.is_main:
                checkpoint = training_checkpoint(stage, args, epoch, sampler, scaler, best_val_mae, rng_states)
                for path in (save_path, best_checkpoint_path(save_path)) if improved else (save_path,):
                    try:
                        save_checkpoint(checkpoint, path)
                    except OSError as e:
                        raise SystemExit(f"--save {path}: cannot write the checkpoint of epoch {epoch} "
                                         f"({e.strerror or e}); the last good checkpoint is "
                                         f"{last_good_checkpoint(save_path, last_saved)}. Free space or fix the "
                                         "folder, then resume with --resume") from None
                if improved:
                    logger.info(f"new best validation MAE {best_val_mae:.4f} -> {best_checkpoint_path(save_path)}")
            last_saved = epoch
            barrier()
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"interrupted in epoch {epoch}; last checkpoint: "
                                  f"{last_good_checkpoint(save_path, last_saved)}. Resume with --resume") from None
    return save_path


def run_stage(stage: Stage, args: argparse.Namespace, ctx: DistributedContext, loader: DataLoader,
              sampler: EpochShuffleSampler, description: str) -> Path:
    """Resume if asked, log the set-up, run the loop, and always leave the process group (the --save and
    --log-dir locks are training_run's to release). A non-finite loss or weight ends the process with a one-line message naming the last good
    checkpoint; Ctrl-C with one line on stderr and exit status 130."""
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=args.amp == "fp16")
    start_epoch, best_val_mae = 1, None
    if args.resume is not None:
        resume_path = Path(args.resume or args.save)
        completed, best_val_mae = resume_from(resume_path, stage, args, scaler, ctx)
        start_epoch = completed + 1
    logger = TrainingLogger(claim_log_dir(args) if ctx.is_main else log_dir(args), enabled=ctx.is_main,
                            resume_epoch=start_epoch - 1 if args.resume is not None else None)
    try:
        logger.info(f"{description}: {len(loader.dataset)} training images, global batch {args.batch_size} "
                    f"({ctx.world_size} process(es) x {args.accumulate} micro-batch(es)), "
                    f"{len(loader) // args.accumulate} steps/epoch, epochs {start_epoch}..{args.epochs}, "
                    f"device {ctx.device}, amp {args.amp}")
        if start_epoch > args.epochs:
            logger.info(f"{args.save} already holds epoch {start_epoch - 1}; nothing to do")
            return Path(args.save)
        try:
            path = fit(stage, args, ctx, loader, sampler, logger, start_epoch, best_val_mae, scaler)
        except (NonFiniteLossError, NonFiniteWeightsError) as e:
            raise SystemExit(str(e)) from None
        except TrainingInterrupted as e:
            print(e, file=sys.stderr, flush=True)
            raise SystemExit(INTERRUPTED_EXIT) from None
        logger.info(f"saved {path}")
        return path
    finally:
        logger.close()
        cleanup_distributed()
