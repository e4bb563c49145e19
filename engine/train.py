"""Training: stage 1 (DFFNet), stage 2 (D-DFFNet feature distillation) and R-DFFNet (response distillation).

All stages share one loop (`fit`): per epoch it sets the poly learning rate, runs `train_step` (one
optimiser step over `--accumulate` micro-batches, element-wise clamp of the model's gradients; the step
bench/train_speed.py times), logs, optionally validates, and writes a resumable checkpoint. What a
stage trains and its loss are set up by `build_stage1`, `build_feature_distill_stage` and
`build_response_distill_stage` and handed to the loop as a `Stage`.

Batch semantics: `--batch-size` is the GLOBAL batch (the paper's 6), split over torchrun processes
and `--accumulate` steps. A batch-summed loss term (the authors' DOF-edge dice) is scaled by
processes x accumulation so the gradient equals that of the whole batch. BatchNorm normalises each
micro-batch on its own, except under DDP on CUDA, where it is synchronised (SyncBatchNorm) so that
N GPUs behave like the paper's single GPU. On the CPU (gloo) SyncBatchNorm does not exist: there a
run with P processes equals a single process with `--accumulate P`.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import DatasetError, build_dataset, collate_test
from losses import Projectors, feature_distillation_loss, segmentation_loss
from losses.depth import scale_shift_invariant_loss
from models import build_model, load_midas, load_model, make_frozen_teacher
from utils.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from utils.distributed import (DistributedContext, EpochShuffleSampler, all_reduce_sum, barrier,
                               cleanup_distributed, setup_distributed, unwrap_model)
from utils.log import TrainingLogger
from utils.metrics import build_metrics
from utils.runtime import autocast, configure_backends, seed_everything
from utils.schedule import distill_alpha, poly_lr

CHECKPOINT_FORMAT = "ddffnet-checkpoint-v1"
# Settings a resumed run must share with the checkpoint it continues.
RESUME_MUST_MATCH = ("model", "backbone", "train_set", "batch_size", "accumulate", "img_size", "loss",
                     "edge_reduction", "lr", "lr_power", "schedule_epochs", "clip", "seed", "distill")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops and the last good checkpoint stays."""


# ----------------------------------------------------------------------------------------------
# command line


def add_common_arguments(parser: argparse.ArgumentParser, save: str) -> None:
    """Flags shared by train_single.py and train_kd.py; defaults are the authors' effective run."""
    parser.add_argument("--model", default="dffnet", help="registry name (models.list_models())")
    parser.add_argument("--backbone", default="resnest101e", help="timm backbone of the model")
    parser.add_argument("--pretrained", default="imagenet",
                        help="backbone initialisation: imagenet | none | PATH to an ImageNet weight file")
    parser.add_argument("--train-set", default="CUHK-TR-1", help="dataset expression, e.g. CUHK-TR-1+DUT-TR")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--no-augment", action="store_true", help="no flip / colour jitter (tests, ablations)")
    parser.add_argument("--epochs", type=int, default=74,
                        help="epochs actually run, numbered 1..N (the authors' `--epoch 75` ran 74)")
    parser.add_argument("--schedule-epochs", type=int, default=75,
                        help="the authors' --epoch value used by the schedules: poly denominator = this + 5 (80), "
                             "alpha ramp denominator = this - 15 (60)")
    parser.add_argument("--batch-size", type=int, default=6,
                        help="GLOBAL batch, split over torchrun processes and --accumulate steps")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimiser step")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam base learning rate (poly per epoch)")
    parser.add_argument("--lr-power", type=float, default=0.9, help="poly power")
    parser.add_argument("--clip", type=float, default=0.5, help="element-wise gradient clamp of the model")
    parser.add_argument("--loss", choices=["bce", "bce+edge"], default="bce+edge")
    parser.add_argument("--edge-reduction", choices=["sum", "mean"], default="sum",
                        help="DOF-edge dice over the batch: sum (the authors') or mean")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the trained network")
    parser.add_argument("--save", default=save, help="checkpoint written every epoch (atomically)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                        help="continue from PATH (default: the --save file)")
    parser.add_argument("--val-set", default=None,
                        help="optional test set scored (MAE, F-beta) during training; the best MAE is kept "
                             "as <save>_best.pth, e.g. CUHK-TE-1")
    parser.add_argument("--val-every", type=int, default=1, help="validate every N epochs (with --val-set)")
    parser.add_argument("--log-dir", default=None, help="CSV / TensorBoard folder (default runs/<save name>)")


def check_arguments(args: argparse.Namespace, ctx: DistributedContext) -> None:
    """Reject settings that cannot run, with a message naming the flag."""
    if args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1, got {args.epochs}")
    if args.epochs >= args.schedule_epochs + 5:
        raise SystemExit(f"--epochs {args.epochs}: the poly schedule reaches 0 at --schedule-epochs + 5 = "
                         f"{args.schedule_epochs + 5}; raise --schedule-epochs")
    if args.batch_size % (ctx.world_size * args.accumulate):
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by processes x --accumulate = "
                         f"{ctx.world_size} x {args.accumulate}")
    if args.img_size % 32:
        raise SystemExit(f"--img-size {args.img_size} must be divisible by 32")
    if getattr(args, "distill", None) == "feature" and args.schedule_epochs <= 15:
        raise SystemExit(f"--schedule-epochs {args.schedule_epochs}: the alpha schedule needs more than 15")
    if args.val_every < 1:
        raise SystemExit(f"--val-every must be >= 1, got {args.val_every}")


@contextlib.contextmanager
def bad_input(flags: str) -> Iterator[None]:
    """Turn an error about a user-supplied file or name into a one-line exit naming the flag(s)."""
    try:
        yield
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"{flags}: {e}") from None


def pretrained_argument(value: str) -> bool | str:
    """--pretrained imagenet|none|PATH -> models.build_model's `pretrained`."""
    if value == "imagenet":
        return True
    if value == "none":
        return False
    if not Path(value).is_file():
        raise SystemExit(f"--pretrained {value}: no such file (use imagenet, none or a weight file)")
    return value


# ----------------------------------------------------------------------------------------------
# reproducible state


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states, as types torch.load(weights_only=True) accepts."""
    version, mt_state, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by `rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(ctx: DistributedContext) -> list[dict[str, Any]]:
    """Every process's generator states, indexed by rank."""
    state = rng_state()
    if not ctx.enabled:
        return [state]
    states: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(states, state)
    return states


# ----------------------------------------------------------------------------------------------
# set-up helpers


def make_train_loader(args: argparse.Namespace, ctx: DistributedContext) -> tuple[DataLoader, EpochShuffleSampler]:
    """Shuffled loader of this process's share of every global batch, in micro-batches."""
    with bad_input("--train-set / --data-root"):
        dataset = build_dataset(args.train_set, "train", root=args.data_root, img_size=args.img_size,
                                augment=False if args.no_augment else None)
    sampler = EpochShuffleSampler(len(dataset), args.batch_size, ctx.rank, ctx.world_size, args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size // (ctx.world_size * args.accumulate), sampler=sampler,
                        num_workers=args.workers, pin_memory=ctx.device.type == "cuda", drop_last=False)
    return loader, sampler


def make_val_loader(args: argparse.Namespace) -> DataLoader | None:
    """Test-split loader for `--val-set` (batch 1, masks at their original size), or None."""
    if not args.val_set:
        return None
    with bad_input("--val-set / --data-root"):
        dataset = build_dataset(args.val_set, "test", root=args.data_root, img_size=args.img_size)
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=min(args.workers, 2), collate_fn=collate_test)


def prepare_trained_module(module: nn.Module, args: argparse.Namespace, ctx: DistributedContext) -> nn.Module:
    """Move to the device, channels_last, SyncBatchNorm + DDP under torchrun, torch.compile on request."""
    module = module.to(ctx.device)
    if args.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if ctx.enabled:
        if ctx.device.type == "cuda":
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=True)
    if args.compile:
        module = torch.compile(module)
    return module


def prepare_teacher(teacher: nn.Module, args: argparse.Namespace, ctx: DistributedContext) -> nn.Module:
    """A frozen teacher on the device (BatchNorm per --teacher-bn)."""
    teacher = make_frozen_teacher(teacher.to(ctx.device), bn=args.teacher_bn)
    if args.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher


def to_device(batch: dict[str, Any], args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (channels_last on request) and masks of a training batch on the device."""
    images = batch["image"].to(device, non_blocking=True)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch["mask"].to(device, non_blocking=True)


def default_log_dir(args: argparse.Namespace) -> Path:
    return Path(args.log_dir) if args.log_dir else Path("runs") / Path(args.save).stem


def best_checkpoint_path(save: str | Path) -> Path:
    """Where the best validation checkpoint goes: checkpoint/DFFNet.pth -> checkpoint/DFFNet_best.pth."""
    save = Path(save)
    return save.with_name(f"{save.stem}_best{save.suffix}")


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, device: torch.device, amp: str) -> dict[str, float]:
    """MAE and F-beta of the test split under the authors' protocol (utils.metrics 'official': sigmoid map
    nearest-upsampled to the image size, per-image scores averaged)."""
    was_training = model.training
    model.eval()
    metrics = build_metrics("official", loader.dataset.name)
    for batch in loader:
        with autocast(device, amp):
            logits = model(batch["image"].to(device)).logits
        for prob, mask, size, name in zip(torch.sigmoid(logits.float()), batch["mask"], batch["image_size"],
                                          batch["name"]):
            prob = F.interpolate(prob[None], size=tuple(size), mode="nearest")[0]
            metrics.update(prob.cpu(), mask, name)
    model.train(was_training)
    summary = metrics.summary()
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
    `alpha_fn(epoch)` is the distillation weight, logged when present."""

    network: nn.Module
    dbd_model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    extra_optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    extra_modules: dict[str, nn.Module] = field(default_factory=dict)
    alpha_fn: Callable[[int], float] | None = None


def training_checkpoint(stage: Stage, args: argparse.Namespace, epoch: int, sampler: EpochShuffleSampler,
                        scaler: torch.amp.GradScaler, best_val_mae: float | None,
                        rng_states: list[dict[str, Any]]) -> dict[str, Any]:
    """The contract's checkpoint: model, model_config, config, epoch + everything `--resume` needs."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": stage.dbd_model.state_dict(),
        "model_config": stage.dbd_model.config,
        "config": vars(args),
        "epoch": epoch,
        "optimizers": {"model": stage.optimizer.state_dict(),
                       **{name: opt.state_dict() for name, opt in stage.extra_optimizers.items()}},
        "extra_modules": {name: module.state_dict() for name, module in stage.extra_modules.items()},
        "schedule": {"epoch": epoch, "lr": poly_lr(epoch, args.lr, args.schedule_epochs, args.lr_power),
                     "schedule_epochs": args.schedule_epochs},
        "sampler": sampler.state_dict(),
        "grad_scaler": scaler.state_dict(),
        "best_val_mae": best_val_mae,
        "rng": rng_states,
    }


def resume_from(path: Path, stage: Stage, args: argparse.Namespace, scaler: torch.amp.GradScaler,
                ctx: DistributedContext) -> tuple[int, float | None]:
    """Load a training checkpoint into the stage; returns (last completed epoch, best validation MAE)."""
    try:
        state = read_checkpoint(path, map_location="cpu")
    except CheckpointError as e:
        raise SystemExit(f"--resume: {e}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "optimizers" not in state:
        raise SystemExit(f"--resume {path}: not a training checkpoint of this code (no optimiser state)")
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
    scaler.load_state_dict(state["grad_scaler"])
    if len(state["rng"]) == ctx.world_size:
        set_rng_state(state["rng"][ctx.rank])
    elif ctx.is_main:
        print(f"--resume {path}: saved with {len(state['rng'])} process(es), now {ctx.world_size}: "
              "random streams are reseeded, so the run is not bit-identical to an uninterrupted one")
    return int(state["epoch"]), state["best_val_mae"]


def train_step(stage: Stage, micro_batches: Iterator[dict[str, Any]], epoch: int, args: argparse.Namespace,
               ctx: DistributedContext, scaler: torch.amp.GradScaler) -> dict[str, float]:
    """One optimiser step over `args.accumulate` micro-batches: forward, loss, backward, element-wise clamp
    of the model's gradients, optimiser steps. Returns the whole batch's loss terms; raises
    NonFiniteLossError (before any weight changes) when the loss is NaN or infinite."""
    terms_this_step: dict[str, float] = {}
    for micro in range(args.accumulate):
        images, masks = to_device(next(micro_batches), args, ctx.device)
        last_micro = micro == args.accumulate - 1
        sync = contextlib.nullcontext() if last_micro or not ctx.enabled else stage.network.no_sync()
        with sync:
            loss, terms = stage.loss_fn(images, masks, epoch)
            scaler.scale(loss / args.accumulate).backward()
        for name, value in {"loss": loss, **terms}.items():
            terms_this_step[name] = terms_this_step.get(name, 0.0) + value.item() / args.accumulate
    if ctx.enabled:  # the whole batch's values, not this process's share
        totals = all_reduce_sum(torch.tensor(list(terms_this_step.values()), device=ctx.device)).tolist()
        terms_this_step = {name: total / ctx.world_size for name, total in zip(terms_this_step, totals)}
    if not math.isfinite(terms_this_step["loss"]):
        stage.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(f"loss terms {terms_this_step}")
    scaler.unscale_(stage.optimizer)
    nn.utils.clip_grad_value_(stage.dbd_model.parameters(), args.clip)
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
    val_loader = make_val_loader(args) if ctx.is_main else None
    steps_per_epoch = len(loader) // args.accumulate
    last_saved = start_epoch - 1 if start_epoch > 1 else None
    for epoch in range(start_epoch, args.epochs + 1):
        lr = poly_lr(epoch, args.lr, args.schedule_epochs, args.lr_power)
        for group in stage.optimizer.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch)
        micro_batches = iter(loader)
        stage.network.train()
        sums: dict[str, float] = {}
        epoch_start = time.time()
        bar = tqdm(range(1, steps_per_epoch + 1), desc=f"epoch {epoch}/{args.epochs}", disable=not ctx.is_main,
                   leave=False, dynamic_ncols=True)
        for step in bar:
            try:
                terms_this_step = train_step(stage, micro_batches, epoch, args, ctx, scaler)
            except NonFiniteLossError as e:
                last = f"{save_path} (epoch {last_saved})" if last_saved else "none: no epoch completed"
                raise NonFiniteLossError(f"non-finite loss at epoch {epoch}, step {step}/{steps_per_epoch} "
                                         f"({e}); stopping. Last good checkpoint: {last}") from None
            row = {"epoch": epoch, "step": step, "global_step": (epoch - 1) * steps_per_epoch + step, "lr": lr}
            if stage.alpha_fn is not None:
                row["alpha"] = stage.alpha_fn(epoch)
            row.update(terms_this_step)
            logger.step(row)
            for name, value in terms_this_step.items():
                sums[name] = sums.get(name, 0.0) + value
            bar.set_postfix(loss=f"{terms_this_step['loss']:.4f}")
        summary: dict[str, Any] = {"epoch": epoch, "lr": lr}
        if stage.alpha_fn is not None:
            summary["alpha"] = stage.alpha_fn(epoch)
        summary.update({name: total / steps_per_epoch for name, total in sums.items()})
        summary["seconds"] = time.time() - epoch_start
        summary.update(val_mae="", val_fbeta="")
        if val_loader is not None and (epoch % args.val_every == 0 or epoch == args.epochs):
            with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
                scores = validate(stage.dbd_model, val_loader, ctx.device, args.amp)
            summary.update(val_mae=scores["mae"], val_fbeta=scores["fbeta"])
        logger.epoch(summary)
        improved = summary["val_mae"] != "" and (best_val_mae is None or summary["val_mae"] < best_val_mae)
        if improved:
            best_val_mae = summary["val_mae"]
        rng_states = gather_rng_states(ctx)
        if ctx.is_main:
            checkpoint = training_checkpoint(stage, args, epoch, sampler, scaler, best_val_mae, rng_states)
            save_checkpoint(checkpoint, save_path)
            if improved:
                save_checkpoint(checkpoint, best_checkpoint_path(save_path))
                logger.info(f"new best validation MAE {best_val_mae:.4f} -> {best_checkpoint_path(save_path)}")
        last_saved = epoch
        barrier()
    return save_path


# ----------------------------------------------------------------------------------------------
# stages


def _start(args: argparse.Namespace) -> DistributedContext:
    ctx = setup_distributed(args.device)
    check_arguments(args, ctx)
    configure_backends(ctx.device)
    seed_everything(args.seed + ctx.rank)
    return ctx


def _run(stage: Stage, args: argparse.Namespace, ctx: DistributedContext, loader: DataLoader,
         sampler: EpochShuffleSampler, description: str) -> Path:
    """Resume if asked, log the set-up, run the loop, and always leave the process group."""
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=args.amp == "fp16")
    start_epoch, best_val_mae = 1, None
    if args.resume is not None:
        resume_path = Path(args.resume or args.save)
        completed, best_val_mae = resume_from(resume_path, stage, args, scaler, ctx)
        start_epoch = completed + 1
    logger = TrainingLogger(default_log_dir(args), enabled=ctx.is_main,
                            resume_epoch=start_epoch - 1 if args.resume is not None else None)
    try:
        logger.info(f"{description}: {len(loader.dataset)} training images, global batch {args.batch_size} "
                    f"({ctx.world_size} process(es) x {args.accumulate} micro-batch(es)), "
                    f"{len(loader) // args.accumulate} steps/epoch, epochs {start_epoch}..{args.epochs}, "
                    f"device {ctx.device}, amp {args.amp}")
        if start_epoch > args.epochs:
            logger.info(f"{args.save} already holds epoch {start_epoch - 1}; nothing to do")
            return Path(args.save)
        path = fit(stage, args, ctx, loader, sampler, logger, start_epoch, best_val_mae, scaler)
        logger.info(f"saved {path}")
        return path
    finally:
        logger.close()
        cleanup_distributed()


def build_student(args: argparse.Namespace, depth_heads: bool = False) -> nn.Module:
    """The trained network from --model / --backbone / --pretrained."""
    with bad_input("--model / --backbone / --pretrained"):
        return build_model(args.model, backbone=args.backbone, pretrained=pretrained_argument(args.pretrained),
                           depth_heads=depth_heads)


def adam(params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """torch.optim.Adam with the fused kernel (CPU and CUDA): the same update, one pass over the weights."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


def training_mae(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean |sigmoid(logits) - mask| of the batch (logged, as the authors do)."""
    return (torch.sigmoid(logits.detach().float()) - masks).abs().mean()


def build_stage1(args: argparse.Namespace, ctx: DistributedContext) -> Stage:
    """Stage 1: Adam over the model; loss = L(final) + sum_k L(side_k)."""
    network = prepare_trained_module(build_student(args), args, ctx)
    model = unwrap_model(network)
    optimizer = adam(model.parameters(), lr=args.lr)
    loss_scale = ctx.world_size * args.accumulate

    def loss_fn(images: torch.Tensor, masks: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with autocast(ctx.device, args.amp):
            out = network(images)
        loss, terms = segmentation_loss(out.logits, out.sides, masks, args.loss, final_weight=1.0,
                                        reduction=args.edge_reduction, edge_sum_scale=loss_scale)
        terms["mae"] = training_mae(out.logits, masks)
        return loss, terms

    return Stage(network=network, dbd_model=model, optimizer=optimizer, loss_fn=loss_fn)


def train_stage1(args: argparse.Namespace) -> Path:
    """Stage 1 (train_single.py): DFFNet or an ablation; writes args.save every epoch."""
    ctx = _start(args)
    loader, sampler = make_train_loader(args, ctx)
    stage = build_stage1(args, ctx)
    return _run(stage, args, ctx, loader, sampler, f"stage 1: {args.model} / {args.backbone}")


class DistillationStudent(nn.Module):
    """The student and its two projector sets, trained (and DDP-synchronised) as one module."""

    def __init__(self, student: nn.Module, to_defocus: Projectors, to_depth: Projectors) -> None:
        super().__init__()
        self.student, self.to_defocus, self.to_depth = student, to_defocus, to_depth

    def forward(self, images: torch.Tensor) -> tuple[Any, list[torch.Tensor], list[torch.Tensor]]:
        out = self.student(images)
        return out, self.to_defocus(out.features), self.to_depth(out.features)


def normalised_depth(depth: torch.Tensor) -> torch.Tensor:
    """Per-image (d - median) / mean|d - median|: MiDaS's relative inverse depth on a fixed scale."""
    flat = depth.float().flatten(1)
    median = flat.median(dim=1, keepdim=True).values
    spread = (flat - median).abs().mean(dim=1, keepdim=True).clamp_min(1e-6)
    return ((flat - median) / spread).view_as(depth)


def build_feature_distill_stage(args: argparse.Namespace, ctx: DistributedContext, defocus_teacher: nn.Module,
                                depth_teacher: nn.Module) -> Stage:
    """D-DFFNet: loss = final_weight x L(final) + sum_k L(side_k) + alpha(epoch) x (defocus + depth
    distillation). The teachers (frozen, on the device) run once per batch under inference mode,
    MiDaS its encoder only; the projectors have their own Adam (constant lr, not clamped)."""
    student = build_student(args)
    to_defocus = Projectors(student.feature_channels, defocus_teacher.feature_channels)
    to_depth = Projectors(student.feature_channels, depth_teacher.feature_channels)
    network = prepare_trained_module(DistillationStudent(student, to_defocus, to_depth), args, ctx)
    combined = unwrap_model(network)
    optimizer = adam(combined.student.parameters(), lr=args.lr)
    projector_params = [*combined.to_defocus.parameters(), *combined.to_depth.parameters()]
    projector_optimizer = adam(projector_params, lr=args.projector_lr, weight_decay=args.projector_wd)
    loss_scale = ctx.world_size * args.accumulate

    def alpha_fn(epoch: int) -> float:
        return distill_alpha(epoch, args.schedule_epochs)

    def loss_fn(images: torch.Tensor, masks: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.inference_mode(), autocast(ctx.device, args.amp):
            defocus_targets = defocus_teacher.features(images)
            depth_targets = depth_teacher.features(images)
        with autocast(ctx.device, args.amp):
            out, defocus_projected, depth_projected = network(images)
        seg, terms = segmentation_loss(out.logits, out.sides, masks, args.loss, final_weight=args.final_weight,
                                       reduction=args.edge_reduction, edge_sum_scale=loss_scale)
        defocus_distill, _ = feature_distillation_loss(defocus_projected, defocus_targets)
        depth_distill, _ = feature_distillation_loss(depth_projected, depth_targets)
        terms.update(seg=seg, defocus_distill=defocus_distill, depth_distill=depth_distill)
        terms["mae"] = training_mae(out.logits, masks)
        return seg + alpha_fn(epoch) * (defocus_distill + depth_distill), terms

    return Stage(network=network, dbd_model=combined.student, optimizer=optimizer, loss_fn=loss_fn,
                 extra_optimizers={"projectors": projector_optimizer},
                 extra_modules={"to_defocus": combined.to_defocus, "to_depth": combined.to_depth}, alpha_fn=alpha_fn)


def build_response_distill_stage(args: argparse.Namespace, ctx: DistributedContext, depth_teacher: nn.Module) -> Stage:
    """R-DFFNet: loss = final_weight x L(final) + sum_k L(side_k) + sum_h L_depth(head h). Each depth
    head regresses MiDaS's full-forward depth map (once per batch, inference mode), resized bilinearly to
    the head's resolution and normalised per image by median and mean absolute deviation, with the
    scale-and-shift-invariant MSE of losses.depth (no gradient term): MiDaS's inverse depth is defined
    only up to a per-image scale and shift, so the heads are judged on relative depth alone. Weight 1
    per head, no alpha (paper, appendix B-C)."""
    network = prepare_trained_module(build_student(args, depth_heads=True), args, ctx)
    student = unwrap_model(network)
    optimizer = adam(student.parameters(), lr=args.lr)
    loss_scale = ctx.world_size * args.accumulate

    def loss_fn(images: torch.Tensor, masks: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.inference_mode(), autocast(ctx.device, args.amp):
            depth = depth_teacher(images).depth
        with autocast(ctx.device, args.amp):
            out = network(images)
        seg, terms = segmentation_loss(out.logits, out.sides, masks, args.loss, final_weight=args.final_weight,
                                       reduction=args.edge_reduction, edge_sum_scale=loss_scale)
        depth_terms = []
        for head in out.depth:
            target = normalised_depth(F.interpolate(depth.float(), size=head.shape[-2:], mode="bilinear",
                                                    align_corners=False))
            depth_terms.append(scale_shift_invariant_loss(head, target, grad_weight=0.0))
        depth_loss = torch.stack(depth_terms).sum()
        terms.update(seg=seg, depth=depth_loss)
        terms["mae"] = training_mae(out.logits, masks)
        return seg + depth_loss, terms

    return Stage(network=network, dbd_model=student, optimizer=optimizer, loss_fn=loss_fn)


def train_distill(args: argparse.Namespace) -> Path:
    """Stage 2 (train_kd.py): `--distill feature` (D-DFFNet) or `response` (R-DFFNet); writes args.save."""
    ctx = _start(args)
    loader, sampler = make_train_loader(args, ctx)
    with bad_input("--depth-teacher"):
        depth_teacher = prepare_teacher(load_midas(args.depth_teacher), args, ctx)
    if args.distill == "response":
        stage = build_response_distill_stage(args, ctx, depth_teacher)
        return _run(stage, args, ctx, loader, sampler, f"R-DFFNet: {args.model} / {args.backbone}, "
                    f"depth teacher {args.depth_teacher}")
    if not args.teacher:
        raise SystemExit("--distill feature needs --teacher (the stage-1 checkpoint, e.g. checkpoint/DFFNet.pth)")
    with bad_input("--teacher"):
        defocus_teacher = prepare_teacher(load_model(args.teacher), args, ctx)
    stage = build_feature_distill_stage(args, ctx, defocus_teacher, depth_teacher)
    return _run(stage, args, ctx, loader, sampler, f"D-DFFNet: {args.model} / {args.backbone}, teacher "
                f"{args.teacher} (bn {args.teacher_bn}), depth teacher {args.depth_teacher}")
