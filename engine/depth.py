"""Training a MiDaS-v2.1-architecture depth teacher on images with depth maps.

Trains the teacher shipped in depth_pretrained/ (tools/train_depth_teacher.sh), which stands in for
`midas_v21-f6b98070.pt` where that file is absent, and serves anyone who needs a depth teacher with another
encoder. The loss (`--loss`, losses.depth) is MiDaS's scale-and-shift-invariant loss on inverse depth, its
median-normalised form, or an ordinal one (per-image mid-rank targets), plus an optional weak mean-matching
anchor; a linear warm-up keeps a network trained from scratch out of its final ReLU's dead zone. Held-out
images are scored by AbsRel and delta < 1.25 after per-image scale-and-shift alignment (metrics.depth).
The teacher trains through the loop of every stage (engine.train: `--resume`, torchrun, `--amp fp16` with a
gradient scaler); the warm-up, the anchor loss, the dead-map guard and the depth validation are its hooks. The
saved file loads with models.load_midas like the released one.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from datasets import DepthDataset
from engine.config import DepthConfig, pretrained_weights
from engine.options import bad_input
from engine.run import make_train_loader, prepare_trained_module, training_run
from engine.train import Stage, Validation, run_stage
from losses.depth import DEPTH_LOSSES, mean_anchor_loss
from metrics.depth import relative_depth_errors
from models import build_midas, load_checkpoint
from utils.distributed import DistributedContext, unwrap_model
from utils.optim import adam
from utils.runtime import autocast
from utils.schedule import warmup_factor

DEAD_STEPS = 50  # consecutive dead depth maps after which training stops (a dead final ReLU)
ALIVE_SHARE = 0.01  # a map with fewer pixels above zero than this is dead


@torch.no_grad()
def evaluate_depth(model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: str,
                   with_constant: bool = False) -> dict[str, float]:
    """AbsRel and delta < 1.25 (metrics.depth: per-image scale-and-shift alignment, MiDaS's
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


def depth_validation(model: torch.nn.Module, config: DepthConfig, ctx: DistributedContext) -> Validation:
    """AbsRel and delta < 1.25 of --val-data every epoch (on the main process; blank without --val-data)."""
    columns = ("abs_rel", "delta1")
    if not config.val_data or not ctx.is_main:
        return Validation(run=None, columns=columns)
    with bad_input("--val-data"):
        val_set = DepthDataset(config.val_data, img_size=config.img_size, augment=False)
    loader = DataLoader(val_set, batch_size=config.batch_size, num_workers=config.workers,
                        persistent_workers=config.workers > 0)
    return Validation(run=lambda: evaluate_depth(model, loader, ctx.device, config.amp), columns=columns)


def build_depth_stage(config: DepthConfig, ctx: DistributedContext) -> Stage:
    """The depth teacher: Adam over MiDaS; loss = --loss (grad-weighted) + --anchor-weight x mean anchor; a
    linear warm-up over --warmup-steps; stops when the map has been zero at nearly every pixel (fewer than
    ALIVE_SHARE above zero) for DEAD_STEPS steps (a dead final ReLU gets no gradient back)."""
    with bad_input("--encoder / --pretrained"):
        model = build_midas(config.encoder, features=config.features,
                            pretrained=pretrained_weights(config.pretrained))
    if config.init:
        with bad_input("--init"):
            load_checkpoint(model, config.init)
    network = prepare_trained_module(model, config, ctx, unused_parameters=True)
    model = unwrap_model(network)
    depth_loss = DEPTH_LOSSES[config.loss]

    def loss_fn(batch: dict[str, torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with autocast(ctx.device, config.amp):
            depth = network(batch["image"]).depth
        target = batch["depth"]
        loss = (depth_loss(depth, target, grad_weight=config.grad_weight)
                + config.anchor_weight * mean_anchor_loss(depth, target))
        alive = (depth.detach() > 0).float().mean()
        return loss, {"depth_max": depth.detach().float().amax(), "alive": alive}

    dead_steps = 0

    def check_step(terms: dict[str, float], epoch: int, step: int) -> str | None:
        nonlocal dead_steps
        dead_steps = dead_steps + 1 if terms["alive"] < ALIVE_SHARE else 0
        if dead_steps < DEAD_STEPS:
            return None
        return (f"the depth map has been zero at {1 - ALIVE_SHARE:.0%} of its pixels or more for {DEAD_STEPS} steps "
                f"(epoch {epoch}, step {step}): the final ReLU died and no gradient reaches the network. Stopping; lower --lr, raise --anchor-weight or "
                "warm up (--warmup-steps)")

    def closing_note(summary: dict[str, float]) -> str | None:
        if summary.get("abs_rel", "") == "":
            return None
        return (f"depth teacher on {config.val_data}: AbsRel {summary['abs_rel']:.3f}, delta<1.25 "
                f"{summary['delta1']:.3f} (per-image scale-and-shift alignment)")

    return Stage(network=network, model=model, optimizer=adam(model.parameters(), lr=config.lr), loss_fn=loss_fn,
                 inputs=("image", "depth"), lr_factor=lambda global_step: warmup_factor(global_step, config.warmup_steps),
                 check_step=check_step, validation=depth_validation(model, config, ctx), closing_note=closing_note)


def train_depth_teacher(config: DepthConfig) -> Path:
    """Train (train_depth.py), saving a resumable checkpoint (our format) after every epoch whose weights are all
    finite; returns its path."""
    with training_run(config) as ctx:
        with bad_input("--data"):
            train_set = DepthDataset(config.data, img_size=config.img_size, augment=not config.no_augment)
        loader, sampler = make_train_loader(train_set, config, ctx, f"--data {config.data}")
        stage = build_depth_stage(config, ctx)
        return run_stage(stage, config, ctx, loader, sampler, f"depth teacher: MiDaS v2.1 / {config.encoder} "
                         f"(width {config.features})")
