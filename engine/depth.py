"""Training a MiDaS-v2.1-architecture depth teacher on images with depth maps.

Stands in for `midas_v21-f6b98070.pt` where that file is absent (the offline demo), and serves anyone who
needs a depth teacher with another encoder. The loss is MiDaS's scale-and-shift-invariant loss on inverse
depth (losses.depth), the target normalised per image by its median and mean absolute deviation as MiDaS
does (so that every image weighs the same), plus a weak mean-matching anchor on the raw inverse depth that
keeps a network trained from scratch out of its final ReLU's dead zone. Held-out images are scored by
AbsRel and delta < 1.25 after per-image scale-and-shift alignment. The saved file loads with
models.load_midas like the released one.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import DatasetError, DepthDataset
from losses.depth import mean_anchor_loss, scale_shift_invariant_loss
from models import build_midas
from engine.train import CHECKPOINT_FORMAT, adam, normalised_depth, pretrained_argument
from utils.depth_metrics import relative_depth_errors
from utils.checkpoint import save_checkpoint
from utils.log import TrainingLogger
from utils.runtime import autocast, configure_backends, seed_everything, select_device
from utils.schedule import poly_lr


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of train_depth.py."""
    parser.add_argument("--data", required=True, help="folder with image/ and depth/ (python -m datasets.synthetic)")
    parser.add_argument("--val-data", default=None, help="held-out folder of the same layout, evaluated every epoch")
    parser.add_argument("--encoder", default="resnet18", help="timm ResNet-family encoder")
    parser.add_argument("--features", type=int, default=64, help="decoder width (MiDaS v2.1: 256)")
    parser.add_argument("--pretrained", default="none", help="encoder initialisation: imagenet | none | PATH")
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4, help="Adam base learning rate, poly decay per epoch")
    parser.add_argument("--grad-weight", type=float, default=0.5, help="weight of MiDaS's gradient-matching term")
    parser.add_argument("--anchor-weight", type=float, default=0.1,
                        help="weight of the mean-matching term that keeps the non-negative output alive "
                             "(losses.depth.mean_anchor_loss); 0 = the invariant loss alone")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    parser.add_argument("--save", default="depth_pretrained/midas_small.pth")
    parser.add_argument("--log-dir", default=None, help="CSV / TensorBoard folder (default runs/<save name>)")


def _dataset(path: str, flag: str, img_size: int, augment: bool) -> DepthDataset:
    try:
        return DepthDataset(path, img_size=img_size, augment=augment)
    except DatasetError as e:
        raise SystemExit(f"{flag}: {e}") from None


@torch.no_grad()
def evaluate_depth(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: str) -> dict[str, float]:
    """AbsRel and delta < 1.25 (utils.depth_metrics: per-image scale-and-shift alignment, MiDaS's
    convention), averaged over the images of `loader`."""
    model.eval()
    totals, count = {"abs_rel": 0.0, "delta1": 0.0}, 0
    for batch in loader:
        with autocast(device, amp):
            depth = model(batch["image"].to(device)).depth.float()
        target = batch["depth"].to(device)
        depth = F.interpolate(depth, size=target.shape[-2:], mode="bilinear", align_corners=False)
        for name, values in relative_depth_errors(depth, target).items():
            totals[name] += values.sum().item()
        count += len(target)
    return {name: total / max(count, 1) for name, total in totals.items()}


def train_depth_teacher(args: argparse.Namespace) -> Path:
    """Train, saving a checkpoint (our format) after every epoch; returns its path."""
    if args.img_size % 32:
        raise SystemExit(f"--img-size {args.img_size} must be divisible by 32")
    device = select_device(args.device)
    configure_backends(device)
    seed_everything(args.seed)
    train_set = _dataset(args.data, "--data", args.img_size, augment=True)
    if len(train_set) < args.batch_size:
        raise SystemExit(f"--data {args.data}: {len(train_set)} images, fewer than --batch-size {args.batch_size}")
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda")
    val_loader = None
    if args.val_data:
        val_set = _dataset(args.val_data, "--val-data", args.img_size, augment=False)
        val_loader = DataLoader(val_set, batch_size=args.batch_size, num_workers=args.workers)
    try:
        model = build_midas(args.encoder, features=args.features, pretrained=pretrained_argument(args.pretrained))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"--encoder / --pretrained: {e}") from None
    model = model.to(device)
    optimizer = adam(model.parameters(), lr=args.lr)
    logger = TrainingLogger(Path(args.log_dir) if args.log_dir else Path("runs") / Path(args.save).stem)
    logger.info(f"depth teacher: MiDaS v2.1 / {args.encoder} (width {args.features}), {len(train_set)} images, "
                f"batch {args.batch_size}, {len(loader)} steps/epoch, {args.epochs} epochs, device {device}")
    try:
        for epoch in range(1, args.epochs + 1):
            lr = poly_lr(epoch, args.lr, args.epochs, 0.9)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            start, running = time.time(), 0.0
            bar = tqdm(loader, desc=f"depth epoch {epoch}/{args.epochs}", leave=False, dynamic_ncols=True)
            for step, batch in enumerate(bar, start=1):
                with autocast(device, args.amp):
                    depth = model(batch["image"].to(device, non_blocking=True)).depth
                inverse_depth = batch["depth"].to(device)
                loss = (scale_shift_invariant_loss(depth, normalised_depth(inverse_depth), grad_weight=args.grad_weight)
                        + args.anchor_weight * mean_anchor_loss(depth, inverse_depth))
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
            summary = {"epoch": epoch, "lr": lr, "loss": running / len(loader), "seconds": time.time() - start}
            summary.update(evaluate_depth(model, val_loader, device, args.amp) if val_loader
                           else {"abs_rel": "", "delta1": ""})
            logger.epoch(summary)
            save_checkpoint({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": model.config,
                             "config": vars(args), "epoch": epoch, "optimizers": {"model": optimizer.state_dict()}},
                            args.save)
        if val_loader:
            logger.info(f"depth teacher on {args.val_data}: AbsRel {summary['abs_rel']:.3f}, "
                        f"delta<1.25 {summary['delta1']:.3f} (per-image scale-and-shift alignment)")
        logger.info(f"saved {args.save}")
    finally:
        logger.close()
    return Path(args.save)
