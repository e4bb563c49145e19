"""Training a MiDaS-v2.1-architecture depth teacher on images with depth maps.

Stands in for `midas_v21-f6b98070.pt` where that file is absent (the offline demo), and serves anyone who
needs a depth teacher with another encoder. The loss is MiDaS's scale-and-shift-invariant loss on inverse
depth (losses.depth) plus a weak mean-matching anchor that keeps a network trained from scratch out of
its final ReLU's dead zone; the saved file loads with models.load_midas like the released one.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import DepthDataset
from engine.options import bad_input, check_depth_teacher_arguments, log_dir, pretrained_argument
from losses.depth import mean_anchor_loss, scale_shift_invariant_loss
from models import build_midas
from utils.checkpoint import model_checkpoint, save_checkpoint
from utils.log import TrainingLogger
from utils.optim import adam, set_lr
from utils.runtime import autocast, configure_backends, seed_everything, select_device
from utils.schedule import poly_lr


@torch.no_grad()
def evaluate_depth(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: str) -> float:
    """Mean scale-and-shift-invariant MSE (no gradient term) over the batches of `loader`."""
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        with autocast(device, amp):
            depth = model(batch["image"].to(device)).depth
        total += scale_shift_invariant_loss(depth, batch["depth"].to(device), grad_weight=0.0).item()
        count += 1
    return total / max(count, 1)


def train_depth_teacher(args: argparse.Namespace) -> Path:
    """Train, saving a checkpoint (our format) after every epoch; returns its path."""
    device = select_device(args.device)
    check_depth_teacher_arguments(args, device)
    configure_backends(device)
    seed_everything(args.seed)
    with bad_input("--data"):
        train_set = DepthDataset(args.data, img_size=args.img_size, augment=True)
    if len(train_set) < args.batch_size:
        raise SystemExit(f"--data {args.data}: {len(train_set)} images, fewer than --batch-size {args.batch_size}")
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda")
    val_loader = None
    if args.val_data:
        with bad_input("--val-data"):
            val_set = DepthDataset(args.val_data, img_size=args.img_size, augment=False)
        val_loader = DataLoader(val_set, batch_size=args.batch_size, num_workers=args.workers)
    with bad_input("--encoder / --pretrained"):
        model = build_midas(args.encoder, features=args.features, pretrained=pretrained_argument(args.pretrained))
    model = model.to(device)
    optimizer = adam(model.parameters(), lr=args.lr)
    logger = TrainingLogger(log_dir(args))
    logger.info(f"depth teacher: MiDaS v2.1 / {args.encoder} (width {args.features}), {len(train_set)} images, "
                f"batch {args.batch_size}, {len(loader)} steps/epoch, {args.epochs} epochs, device {device}")
    try:
        for epoch in range(1, args.epochs + 1):
            lr = poly_lr(epoch, args.lr, args.epochs, 0.9)
            set_lr(optimizer, lr)
            model.train()
            start, running = time.time(), 0.0
            bar = tqdm(loader, desc=f"depth epoch {epoch}/{args.epochs}", leave=False, dynamic_ncols=True)
            for step, batch in enumerate(bar, start=1):
                with autocast(device, args.amp):
                    depth = model(batch["image"].to(device, non_blocking=True)).depth
                target = batch["depth"].to(device)
                loss = (scale_shift_invariant_loss(depth, target, grad_weight=args.grad_weight)
                        + args.anchor_weight * mean_anchor_loss(depth, target))
                if not math.isfinite(loss.item()):
                    raise SystemExit(f"non-finite depth loss at epoch {epoch}, step {step}; stopping "
                                     f"(last good checkpoint: {args.save} if an epoch completed)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                running += loss.item()
                logger.step({"epoch": epoch, "step": step, "global_step": (epoch - 1) * len(loader) + step,
                             "lr": lr, "loss": loss.item()})
                bar.set_postfix(loss=f"{loss.item():.4f}")
            summary = {"epoch": epoch, "lr": lr, "loss": running / len(loader), "seconds": time.time() - start,
                       "val_ssi_mse": evaluate_depth(model, val_loader, device, args.amp) if val_loader else ""}
            logger.epoch(summary)
            save_checkpoint(model_checkpoint(model, vars(args), epoch, optimizers={"model": optimizer.state_dict()}),
                            args.save)
        logger.info(f"saved {args.save}")
    finally:
        logger.close()
    return Path(args.save)
