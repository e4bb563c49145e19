"""The paper's training stages: stage 1 (DFFNet), stage 2 by feature distillation (D-DFFNet) and R-DFFNet
(response distillation).

Each `build_*` sets up what a stage trains, its loss and its validation and hands it to the shared loop
(engine.train) as a `Stage`; `train_stage1` and `train_distill` are what train_single.py and train_kd.py run.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from datasets import DatasetWarning, build_dataset
from engine.config import DistillConfig, TrainConfig, pretrained_weights
from engine.evaluate import EvalSettings, eval_loader, score_model
from engine.options import bad_input
from engine.run import (make_train_loader, prepare_trained_module, refuse_one_image_batch_statistics,
                        sync_batchnorm, synchronises_batchnorm, training_run)
from engine.train import Stage, Validation, best_checkpoint_path, run_stage
from losses import Projectors, SegmentationCriterion, feature_distillation_loss, response_distillation_loss
from models import build_model, load_checkpoint, load_midas, load_model, make_frozen_teacher
from utils.distributed import DistributedContext, EpochShuffleSampler, unwrap_model
from utils.optim import adam, encoder_scaled_groups
from utils.runtime import autocast
from utils.schedule import distill_alpha


def build_student(config: TrainConfig, depth_heads: bool = False) -> nn.Module:
    """The trained network from --model / --backbone / --pretrained, then --init's weights when given."""
    with bad_input("--model / --backbone / --pretrained"):
        model = build_model(config.model, backbone=config.backbone, pretrained=pretrained_weights(config.pretrained),
                            depth_heads=depth_heads)
    if config.init:
        with bad_input("--init"):
            load_checkpoint(model, config.init)
    return model


def segmentation_criterion(config: TrainConfig, ctx: DistributedContext,
                           final_weight: float) -> SegmentationCriterion:
    """The stage's segmentation loss (--loss, --edge-reduction); a batch-summed edge term is scaled by
    processes x --accumulate so that a split batch gives the whole batch's loss."""
    return SegmentationCriterion(config.loss, final_weight=final_weight, reduction=config.edge_reduction,
                                 edge_sum_scale=ctx.world_size * config.accumulate)


def make_dbd_loader(config: TrainConfig, ctx: DistributedContext) -> tuple[DataLoader, EpochShuffleSampler]:
    """The training loader of --train-set (engine.run.make_train_loader)."""
    with bad_input("--train-set / --data-root"):
        dataset = build_dataset(config.train_set, "train", root=config.data_root, img_size=config.img_size,
                                augment=False if config.no_augment else None, crop_scale=config.crop_scale,
                                split_file=config.split_file)
    return make_train_loader(dataset, config, ctx, config.train_set)


def make_val_set(config: TrainConfig, train_set: Dataset | None = None) -> Dataset | None:
    """The test split of `--val-set` (masks at their original size), or None; a DatasetWarning when it shares
    images with `train_set`."""
    if not config.val_set:
        return None
    with bad_input("--val-set / --data-root"):
        val_set = build_dataset(config.val_set, "test", root=config.data_root, img_size=config.img_size)
    shared = image_files(val_set) & image_files(train_set) if train_set is not None else set()
    if shared:
        warnings.warn(f"--val-set {config.val_set} shares {len(shared)} of its {len(val_set)} images with "
                      f"--train-set {config.train_set}: validation scores the network on images it trains on, so "
                      f"{best_checkpoint_path(config.save)} would be chosen on training images; validate on a "
                      "held-out set (e.g. --train-set CUHK-TR-1-FIT --val-set CUHK-TR-1-VAL)", DatasetWarning)
    return val_set


def image_files(dataset: Dataset) -> set[Path]:
    """The resolved image files of a data set of pairs (the parts of a combined one)."""
    return {pair.image.resolve() for part in getattr(dataset, "datasets", [dataset])
            for pair in getattr(part, "pairs", [])}


def dbd_validation(model: nn.Module, config: TrainConfig, ctx: DistributedContext, train_set: Dataset) -> Validation:
    """MAE and F-beta of --val-set (on the main process), predicted and scored as test.py does
    (engine.evaluate.score_model); the lowest MAE is kept as <save>_best.pth."""
    columns = ("val_mae", "val_fbeta")
    val_set = make_val_set(config, train_set) if ctx.is_main else None
    if val_set is None:
        return Validation(run=None, columns=columns, every=config.val_every)
    settings = EvalSettings(device=ctx.device, amp=config.amp, batch_size=1, workers=min(config.workers, 2),
                            img_size=config.img_size, data_root=config.data_root)
    loader = eval_loader(val_set, settings, persistent=True)

    def run() -> dict[str, float]:
        was_training = model.training
        summary, _ = score_model(model, val_set, val_set.name, settings, loader=loader)
        model.train(was_training)
        return {"val_mae": summary["mae"], "val_fbeta": summary["fbeta"]}

    return Validation(run=run, columns=columns, every=config.val_every, best="val_mae")


def training_mae(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean |sigmoid(logits) - mask| of the batch (logged, as the authors do)."""
    return (torch.sigmoid(logits.detach().float()) - masks).abs().mean()


def prepare_teacher(teacher: nn.Module, config: DistillConfig, ctx: DistributedContext) -> nn.Module:
    """A frozen teacher on the device (BatchNorm per --teacher-bn). With batch statistics under DDP on CUDA
    its BatchNorm is synchronised like the student's, so that its targets come from the global batch as on
    one GPU (and a process's single image does not make split attention's 1x1 BatchNorm fail)."""
    if config.teacher_bn == "batch":
        refuse_one_image_batch_statistics(teacher, config, ctx, "the teacher with --teacher-bn batch")
    teacher = make_frozen_teacher(teacher.to(ctx.device), bn=config.teacher_bn)
    if config.teacher_bn == "batch" and synchronises_batchnorm(ctx):
        teacher = sync_batchnorm(teacher)
    if config.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher


# ----------------------------------------------------------------------------------------------
# stage 1


def build_stage1(config: TrainConfig, ctx: DistributedContext) -> Stage:
    """Stage 1: Adam over the model (its encoder at --encoder-lr-scale x the rate); loss = L(final) + sum_k
    L(side_k)."""
    network = prepare_trained_module(build_student(config), config, ctx)
    model = unwrap_model(network)
    optimizer = adam(encoder_scaled_groups(model, config.encoder_lr_scale), lr=config.lr)
    criterion = segmentation_criterion(config, ctx, final_weight=1.0)

    def loss_fn(batch: dict[str, torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with autocast(ctx.device, config.amp):
            out = network(batch["image"])
        loss, terms = criterion(out.logits, out.sides, batch["mask"])
        terms["mae"] = training_mae(out.logits, batch["mask"])
        return loss, terms

    return Stage(network=network, model=model, optimizer=optimizer, loss_fn=loss_fn)


def train_stage1(config: TrainConfig) -> Path:
    """Stage 1 (train_single.py): DFFNet or an ablation; writes --save every epoch."""
    with training_run(config) as ctx:
        loader, sampler = make_dbd_loader(config, ctx)
        stage = build_stage1(config, ctx)
        stage.validation = dbd_validation(stage.model, config, ctx, loader.dataset)
        return run_stage(stage, config, ctx, loader, sampler, f"stage 1: {config.model} / {config.backbone}")


# ----------------------------------------------------------------------------------------------
# stage 2: feature distillation (D-DFFNet) or response distillation (R-DFFNet)


class DistillationStudent(nn.Module):
    """The student and one projector set per teacher, trained (and DDP-synchronised) as one module."""

    def __init__(self, student: nn.Module, projectors: dict[str, Projectors]) -> None:
        super().__init__()
        self.student = student
        self.projectors = nn.ModuleDict(projectors)

    def forward(self, images: torch.Tensor) -> tuple[Any, dict[str, list[torch.Tensor]]]:
        out = self.student(images)
        return out, {name: projector(out.features) for name, projector in self.projectors.items()}


def build_feature_distill_stage(config: DistillConfig, ctx: DistributedContext,
                                teachers: dict[str, nn.Module]) -> Stage:
    """D-DFFNet: loss = final_weight x L(final) + sum_k L(side_k) + alpha(epoch) x sum over `teachers`
    ("defocus": the stage-1 DFFNet, "depth": MiDaS; the paper uses both) of their feature distillation.
    The teachers (frozen, on the device) run once per batch under inference mode, MiDaS its encoder only; the
    projectors have their own Adam (constant lr, not clamped). The stage logs its alpha with every step and
    epoch."""
    student = build_student(config)
    projectors = {name: Projectors(student.feature_channels, teacher.feature_channels)
                  for name, teacher in teachers.items()}
    network = prepare_trained_module(DistillationStudent(student, projectors), config, ctx)
    combined = unwrap_model(network)
    optimizer = adam(encoder_scaled_groups(combined.student, config.encoder_lr_scale), lr=config.lr)
    projector_optimizer = adam(combined.projectors.parameters(), lr=config.projector_lr,
                               weight_decay=config.projector_wd)
    criterion = segmentation_criterion(config, ctx, final_weight=config.final_weight)

    def alpha(epoch: int) -> float:
        return distill_alpha(epoch, config.schedule_epochs)

    def loss_fn(batch: dict[str, torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, masks = batch["image"], batch["mask"]
        with torch.inference_mode(), autocast(ctx.device, config.amp):
            targets = {name: teacher.features(images) for name, teacher in teachers.items()}
        with autocast(ctx.device, config.amp):
            out, projected = network(images)
        seg, terms = criterion(out.logits, out.sides, masks)
        distill = {f"{name}_distill": feature_distillation_loss(projected[name], targets[name])[0] for name in teachers}
        terms.update(seg=seg, **distill)
        terms["mae"] = training_mae(out.logits, masks)
        return seg + alpha(epoch) * sum(distill.values()), terms

    return Stage(network=network, model=combined.student, optimizer=optimizer, loss_fn=loss_fn,
                 extra_optimizers={"projectors": projector_optimizer},
                 extra_modules={f"to_{name}": projector for name, projector in combined.projectors.items()},
                 epoch_values=lambda epoch: {"alpha": alpha(epoch)})


def build_response_distill_stage(config: DistillConfig, ctx: DistributedContext, depth_teacher: nn.Module) -> Stage:
    """R-DFFNet: loss = final_weight x L(final) + sum_k L(side_k) + sum_h L_depth(head h), each depth head
    regressing MiDaS's full-forward depth map (once per batch, inference mode) with
    losses.response_distillation_loss. Weight 1 per head, no alpha (paper, appendix B-C)."""
    network = prepare_trained_module(build_student(config, depth_heads=True), config, ctx)
    student = unwrap_model(network)
    optimizer = adam(encoder_scaled_groups(student, config.encoder_lr_scale), lr=config.lr)
    criterion = segmentation_criterion(config, ctx, final_weight=config.final_weight)

    def loss_fn(batch: dict[str, torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, masks = batch["image"], batch["mask"]
        with torch.inference_mode(), autocast(ctx.device, config.amp):
            depth = depth_teacher(images).depth
        with autocast(ctx.device, config.amp):
            out = network(images)
        seg, terms = criterion(out.logits, out.sides, masks)
        depth_loss, _ = response_distillation_loss(out.depth, depth)
        terms.update(seg=seg, depth=depth_loss)
        terms["mae"] = training_mae(out.logits, masks)
        return seg + depth_loss, terms

    return Stage(network=network, model=student, optimizer=optimizer, loss_fn=loss_fn)


def load_teachers(config: DistillConfig, ctx: DistributedContext) -> dict[str, nn.Module]:
    """The frozen teachers on the device: "defocus" (--teacher) and "depth" (--depth-teacher), those the
    distillation uses."""
    teachers, depth_teacher = {}, None
    if config.uses_depth_teacher:
        with bad_input("--depth-teacher"):
            depth_teacher = prepare_teacher(load_midas(config.depth_teacher), config, ctx)
    if config.uses_defocus_teacher:
        with bad_input("--teacher"):
            teachers["defocus"] = prepare_teacher(load_model(config.teacher, detector_only=True), config, ctx)
    if depth_teacher is not None:
        teachers["depth"] = depth_teacher
    return teachers


def train_distill(config: DistillConfig) -> Path:
    """Stage 2 (train_kd.py): `--distill feature` (D-DFFNet, from the --teachers) or `response`
    (R-DFFNet); writes --save every epoch."""
    with training_run(config) as ctx:
        loader, sampler = make_dbd_loader(config, ctx)
        teachers = load_teachers(config, ctx)
        if config.distill == "response":
            stage = build_response_distill_stage(config, ctx, teachers["depth"])
            described = f"depth teacher {config.depth_teacher}"
        else:
            stage = build_feature_distill_stage(config, ctx, teachers)
            named = {"defocus": f"teacher {config.teacher}", "depth": f"depth teacher {config.depth_teacher}"}
            described = ", ".join(named[name] for name in teachers) + f" (bn {config.teacher_bn})"
        stage.validation = dbd_validation(stage.model, config, ctx, loader.dataset)
        title = "R-DFFNet" if config.distill == "response" else "D-DFFNet"
        return run_stage(stage, config, ctx, loader, sampler, f"{title}: {config.model} / {config.backbone}, "
                         f"final weight {config.final_weight}, {described}")
