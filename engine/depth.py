"""Training a MiDaS-v2.1-architecture depth teacher on images with depth maps.

Trains the teacher shipped in depth_pretrained/ (tools/train_depth_teacher.sh), which stands in for
`midas_v21-f6b98070.pt` where that file is absent, and serves anyone who needs a depth teacher with another
encoder. The loss (`--loss`, losses.depth) is MiDaS's scale-and-shift-invariant loss on inverse depth, its
median-normalised form, or an ordinal one (per-image mid-rank targets), plus an optional weak mean-matching
anchor; a linear warm-up keeps a network trained from scratch out of its final ReLU's dead zone. Held-out
images are scored by AbsRel and delta < 1.25 after per-image scale-and-shift alignment (utils.depth_metrics).
`--amp fp16` trains with a gradient scaler. The saved file loads with models.load_midas like the released one.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from datasets import DepthDataset
from engine.options import (bad_input, check_depth_teacher_arguments, claim_log_dir, lock_outputs,
                            pretrained_argument, release_outputs)
from losses.depth import DEPTH_LOSSES, mean_anchor_loss
from metrics.depth import relative_depth_errors
from models import build_midas, load_checkpoint
from utils.checkpoint import first_non_finite, last_good_checkpoint, model_checkpoint, save_checkpoint
from utils.log import RemainingTime, TrainingLogger, progress
from utils.optim import adam, set_lr
from utils.runtime import (autocast, configure_backends, seed_everything, select_device, use_deterministic_algorithms,
                           use_device)
from utils.schedule import poly_lr, warmup_factor

DEAD_STEPS = 50  # consecutive all-zero depth maps after which training stops (a dead final ReLU)


@torch.no_grad()
def evaluate_depth(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: str,
                   with_constant: bool = False) -> dict[str, float]:
    """AbsRel and delta < 1.25 (utils.depth_metrics: per-image scale-and-shift alignment, MiDaS's
    convention), averaged over the images of `loader`; with `with_constant`, in the same pass, also those
    of a constant map (the trivial baseline: after alignment, every pixel at the image's mean)."""
    model.eval()
    totals, count = {"abs_rel": 0.0, "delta1": 0.0}, 0
    if with_constant:
        totals.update({"constant_abs_rel": 0.0, "constant_delta1": 0.0})
    for batch in loader:
        with autocast(device, amp):
            depth = model(batch["image"].to(device)).depth.float()
        target = batch["depth"].to(device)
        depth = F.interpolate(depth, size=target.shape[-2:], mode="bilinear", align_corners=False)
        maps = {"": depth, "constant_": torch.ones_like(target)} if with_constant else {"": depth}
        for prefix, prediction in maps.items():
            for name, values in relative_depth_errors(prediction, target).items():
                totals[prefix + name] += values.sum().item()
        count += len(target)
    return {name: total / max(count, 1) for name, total in totals.items()}


def score_depth_teacher(model: torch.nn.Module, data: str | Path, img_size: int, device: torch.device,
                        amp: str = "off", batch_size: int = 8) -> dict[str, float]:
    """AbsRel and delta < 1.25 of a depth teacher on the images of a folder with depth/
    (tools/make_synthetic.py) at `img_size`, beside those of a constant map, and the image count."""
    with bad_input("data"):
        dataset = DepthDataset(data, img_size=img_size, augment=False)
    scores = evaluate_depth(model, DataLoader(dataset, batch_size=batch_size), device, amp, with_constant=True)
    return {**scores, "images": len(dataset)}


def train_depth_teacher(args: argparse.Namespace) -> Path:
    """Train, saving a checkpoint (our format) after every epoch whose weights are all finite; returns its path."""
    if args.deterministic:
        use_deterministic_algorithms()
    device = select_device(args.device)
    check_depth_teacher_arguments(args, device)
    lock_outputs(args)
    try:
        return _train_depth_teacher(args, device)
    finally:
        release_outputs(args)


def _train_depth_teacher(args: argparse.Namespace, device: torch.device) -> Path:
    """The training of train_depth_teacher, run while it holds the --save and --log-dir locks."""
    use_device(device)
    configure_backends(device, deterministic=args.deterministic)
    seed_everything(args.seed)
    with bad_input("--data"):
        train_set = DepthDataset(args.data, img_size=args.img_size, augment=True)
    if len(train_set) < args.batch_size:
        raise SystemExit(f"--data {args.data}: {len(train_set)} images, fewer than --batch-size {args.batch_size}")
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda",
                        persistent_workers=args.workers > 0)
    val_loader = None
    if args.val_data:
        with bad_input("--val-data"):
            val_set = DepthDataset(args.val_data, img_size=args.img_size, augment=False)
        val_loader = DataLoader(val_set, batch_size=args.batch_size, num_workers=args.workers,
                                persistent_workers=args.workers > 0)
    with bad_input("--encoder / --pretrained"):
        model = build_midas(args.encoder, features=args.features, pretrained=pretrained_argument(args.pretrained))
    if args.init:
        with bad_input("--init"):
            load_checkpoint(model, args.init)
    model = model.to(device)
    optimizer = adam(model.parameters(), lr=args.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")  # fp16 gradients underflow unscaled
    logger = TrainingLogger(claim_log_dir(args))
    logger.info(f"depth teacher: MiDaS v2.1 / {args.encoder} (width {args.features}), {len(train_set)} images, "
                f"batch {args.batch_size}, {len(loader)} steps/epoch, {args.epochs} epochs, device {device}")
    pace = RemainingTime(args.epochs * len(loader))
    dead_steps = 0
    try:
        for epoch in range(1, args.epochs + 1):
            lr = poly_lr(epoch, args.lr, args.epochs, 0.9)
            model.train()
            start, running = time.time(), 0.0
            bar = progress(loader, desc=f"depth epoch {epoch}/{args.epochs}")
            for step, batch in enumerate(bar, start=1):
                global_step = (epoch - 1) * len(loader) + step
                step_lr = lr * warmup_factor(global_step, args.warmup_steps)
                set_lr(optimizer, step_lr)
                with autocast(device, args.amp):
                    depth = model(batch["image"].to(device, non_blocking=True)).depth
                target = batch["depth"].to(device)
                loss = (DEPTH_LOSSES[args.loss](depth, target, grad_weight=args.grad_weight)
                        + args.anchor_weight * mean_anchor_loss(depth, target))
                value, peak = torch.stack([loss.detach(), depth.detach().float().amax()]).tolist()  # one sync
                if not math.isfinite(value):
                    raise SystemExit(f"non-finite depth loss at epoch {epoch}, step {step}; stopping. Last good "
                                     f"checkpoint: {last_good_checkpoint(args.save, epoch - 1)}")
                dead_steps = dead_steps + 1 if peak <= 0 else 0
                if dead_steps == DEAD_STEPS:
                    raise SystemExit(f"the depth map has been zero everywhere for {DEAD_STEPS} steps (epoch {epoch}, "
                                     f"step {step}): the final ReLU died and no gradient reaches the network. "
                                     "Stopping; lower --lr, raise --anchor-weight or warm up (--warmup-steps). "
                                     f"Last good checkpoint: {last_good_checkpoint(args.save, epoch - 1)}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                running += value
                logger.step({"epoch": epoch, "step": step, "global_step": global_step,
                             "lr": step_lr, "loss": value})
                bar.set_postfix(loss=f"{value:.4f}")
                if (estimate := pace.step()) is not None:
                    logger.info(estimate)
            bad_weight = first_non_finite(model.state_dict())
            if bad_weight is not None:
                raise SystemExit(f"non-finite weights after epoch {epoch}: {bad_weight}; stopping without saving "
                                 "(the run diverged: lower --lr?). Last good checkpoint: "
                                 f"{last_good_checkpoint(args.save, epoch - 1)}")
            summary = {"epoch": epoch, "lr": lr, "loss": running / len(loader), "seconds": time.time() - start}
            summary.update(evaluate_depth(model, val_loader, device, args.amp) if val_loader
                           else {"abs_rel": "", "delta1": ""})
            logger.epoch(summary)
            save_checkpoint(model_checkpoint(model, vars(args), epoch, optimizers={"model": optimizer.state_dict()}),
                            args.save)
        if val_loader:
            logger.info(f"depth teacher on {args.val_data}: AbsRel {summary['abs_rel']:.3f}, "
                        f"delta<1.25 {summary['delta1']:.3f} (per-image scale-and-shift alignment)")
        logger.info(f"saved {args.save}")
    finally:
        logger.close()
    return Path(args.save)
