"""The paper's training stages: stage 1 (DFFNet), stage 2 by feature distillation (D-DFFNet) and R-DFFNet
(response distillation).

Each `build_*` sets up what a stage trains and its loss and hands it to the shared loop (engine.train) as
a `Stage`; `train_stage1` and `train_distill` are what train_single.py and train_kd.py run.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from engine.options import bad_input, pretrained_argument
from engine.train import (Stage, make_train_loader, prepare_trained_module, refuse_one_image_batch_statistics,
                          run_stage, sync_batchnorm, synchronises_batchnorm, training_run)
from losses import Projectors, SegmentationCriterion, feature_distillation_loss, response_distillation_loss
from models import VARIANTS, build_model, load_checkpoint, load_midas, load_model, make_frozen_teacher
from utils.distributed import DistributedContext, unwrap_model
from utils.optim import adam
from utils.runtime import autocast
from utils.schedule import distill_alpha


def build_student(args: argparse.Namespace, depth_heads: bool = False) -> nn.Module:
    """The trained network from --model / --backbone / --pretrained, then --init's weights when given."""
    with bad_input("--model / --backbone / --pretrained"):
        model = build_model(args.model, backbone=args.backbone, pretrained=pretrained_argument(args.pretrained),
                            depth_heads=depth_heads)
    if getattr(args, "init", None):
        with bad_input("--init"):
            load_checkpoint(model, args.init)
    return model


def segmentation_criterion(args: argparse.Namespace, ctx: DistributedContext,
                           final_weight: float) -> SegmentationCriterion:
    """The stage's segmentation loss (--loss, --edge-reduction); a batch-summed edge term is scaled by
    processes x --accumulate so that a split batch gives the whole batch's loss."""
    return SegmentationCriterion(args.loss, final_weight=final_weight, reduction=args.edge_reduction,
                                 edge_sum_scale=ctx.world_size * args.accumulate)


def distillation_final_weight(args: argparse.Namespace, student: nn.Module) -> float:
    """Stage 2's weight of the final map: --final-weight, by default the authors' 1.1 when the student has
    side outputs and 1.0 without. The value used is written to args.final_weight, so that the log and the
    checkpoint's config record it."""
    if args.final_weight is None:
        args.final_weight = 1.1 if VARIANTS[student.config["name"]].side_outputs else 1.0
    return args.final_weight


def training_mae(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean |sigmoid(logits) - mask| of the batch (logged, as the authors do)."""
    return (torch.sigmoid(logits.detach().float()) - masks).abs().mean()


def prepare_teacher(teacher: nn.Module, args: argparse.Namespace, ctx: DistributedContext) -> nn.Module:
    """A frozen teacher on the device (BatchNorm per --teacher-bn). With batch statistics under DDP on CUDA
    its BatchNorm is synchronised like the student's, so that its targets come from the global batch as on
    one GPU (and a process's single image does not make split attention's 1x1 BatchNorm fail)."""
    if args.teacher_bn == "batch":
        refuse_one_image_batch_statistics(teacher, args, ctx, "the teacher with --teacher-bn batch")
    teacher = make_frozen_teacher(teacher.to(ctx.device), bn=args.teacher_bn)
    if args.teacher_bn == "batch" and synchronises_batchnorm(ctx):
        teacher = sync_batchnorm(teacher)
    if args.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher


# ----------------------------------------------------------------------------------------------
# stage 1


def build_stage1(args: argparse.Namespace, ctx: DistributedContext) -> Stage:
    """Stage 1: Adam over the model; loss = L(final) + sum_k L(side_k)."""
    network = prepare_trained_module(build_student(args), args, ctx)
    model = unwrap_model(network)
    optimizer = adam(model.parameters(), lr=args.lr)
    criterion = segmentation_criterion(args, ctx, final_weight=1.0)

    def loss_fn(images: torch.Tensor, masks: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with autocast(ctx.device, args.amp):
            out = network(images)
        loss, terms = criterion(out.logits, out.sides, masks)
        terms["mae"] = training_mae(out.logits, masks)
        return loss, terms

    return Stage(network=network, dbd_model=model, optimizer=optimizer, loss_fn=loss_fn)


def train_stage1(args: argparse.Namespace) -> Path:
    """Stage 1 (train_single.py): DFFNet or an ablation; writes args.save every epoch."""
    with training_run(args) as ctx:
        loader, sampler = make_train_loader(args, ctx)
        stage = build_stage1(args, ctx)
        return run_stage(stage, args, ctx, loader, sampler, f"stage 1: {args.model} / {args.backbone}")


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


def build_feature_distill_stage(args: argparse.Namespace, ctx: DistributedContext,
                                teachers: dict[str, nn.Module]) -> Stage:
    """D-DFFNet: loss = final_weight x L(final) + sum_k L(side_k) + alpha(epoch) x sum over `teachers`
    ("defocus": the stage-1 DFFNet, "depth": MiDaS; the paper uses both) of their feature distillation,
    final_weight from `distillation_final_weight`. The teachers (frozen, on the device) run once per batch
    under inference mode, MiDaS its encoder only; the projectors have their own Adam (constant lr, not
    clamped). The stage logs its alpha with every step and epoch."""
    student = build_student(args)
    projectors = {name: Projectors(student.feature_channels, teacher.feature_channels)
                  for name, teacher in teachers.items()}
    network = prepare_trained_module(DistillationStudent(student, projectors), args, ctx)
    combined = unwrap_model(network)
    optimizer = adam(combined.student.parameters(), lr=args.lr)
    projector_optimizer = adam(combined.projectors.parameters(), lr=args.projector_lr, weight_decay=args.projector_wd)
    criterion = segmentation_criterion(args, ctx, final_weight=distillation_final_weight(args, student))

    def alpha(epoch: int) -> float:
        return distill_alpha(epoch, args.schedule_epochs)

    def loss_fn(images: torch.Tensor, masks: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.inference_mode(), autocast(ctx.device, args.amp):
            targets = {name: teacher.features(images) for name, teacher in teachers.items()}
        with autocast(ctx.device, args.amp):
            out, projected = network(images)
        seg, terms = criterion(out.logits, out.sides, masks)
        distill = {f"{name}_distill": feature_distillation_loss(projected[name], targets[name])[0] for name in teachers}
        terms.update(seg=seg, **distill)
        terms["mae"] = training_mae(out.logits, masks)
        return seg + alpha(epoch) * sum(distill.values()), terms

    return Stage(network=network, dbd_model=combined.student, optimizer=optimizer, loss_fn=loss_fn,
                 extra_optimizers={"projectors": projector_optimizer},
                 extra_modules={f"to_{name}": projector for name, projector in combined.projectors.items()},
                 epoch_values=lambda epoch: {"alpha": alpha(epoch)})


def build_response_distill_stage(args: argparse.Namespace, ctx: DistributedContext, depth_teacher: nn.Module) -> Stage:
    """R-DFFNet: loss = final_weight x L(final) + sum_k L(side_k) + sum_h L_depth(head h), each depth head
    regressing MiDaS's full-forward depth map (once per batch, inference mode) with
    losses.response_distillation_loss. Weight 1 per head, no alpha (paper, appendix B-C)."""
    network = prepare_trained_module(build_student(args, depth_heads=True), args, ctx)
    student = unwrap_model(network)
    optimizer = adam(student.parameters(), lr=args.lr)
    criterion = segmentation_criterion(args, ctx, final_weight=distillation_final_weight(args, student))

    def loss_fn(images: torch.Tensor, masks: torch.Tensor, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.inference_mode(), autocast(ctx.device, args.amp):
            depth = depth_teacher(images).depth
        with autocast(ctx.device, args.amp):
            out = network(images)
        seg, terms = criterion(out.logits, out.sides, masks)
        depth_loss, _ = response_distillation_loss(out.depth, depth)
        terms.update(seg=seg, depth=depth_loss)
        terms["mae"] = training_mae(out.logits, masks)
        return seg + depth_loss, terms

    return Stage(network=network, dbd_model=student, optimizer=optimizer, loss_fn=loss_fn)


def train_distill(args: argparse.Namespace) -> Path:
    """Stage 2 (train_kd.py): `--distill feature` (D-DFFNet, from the --teachers) or `response`
    (R-DFFNet); writes args.save."""
    with training_run(args) as ctx:
        return _train_distill(args, ctx)


def _train_distill(args: argparse.Namespace, ctx: DistributedContext) -> Path:
    """train_distill once the run has started (its outputs locked)."""
    loader, sampler = make_train_loader(args, ctx)
    uses_depth = args.distill == "response" or args.teachers in ("both", "depth")
    depth_teacher = None
    if uses_depth:
        with bad_input("--depth-teacher"):
            depth_teacher = prepare_teacher(load_midas(args.depth_teacher), args, ctx)
    if args.distill == "response":
        stage = build_response_distill_stage(args, ctx, depth_teacher)
        return run_stage(stage, args, ctx, loader, sampler, f"R-DFFNet: {args.model} / {args.backbone}, "
                         f"final weight {args.final_weight}, depth teacher {args.depth_teacher}")
    teachers, described = {}, []
    if args.teachers in ("both", "defocus"):
        if not args.teacher:
            raise SystemExit(f"--teachers {args.teachers} needs --teacher (the stage-1 checkpoint, e.g. "
                             "checkpoint/DFFNet.pth)")
        with bad_input("--teacher"):
            teachers["defocus"] = prepare_teacher(load_model(args.teacher, detector_only=True), args, ctx)
        described.append(f"teacher {args.teacher}")
    if depth_teacher is not None:
        teachers["depth"] = depth_teacher
        described.append(f"depth teacher {args.depth_teacher}")
    stage = build_feature_distill_stage(args, ctx, teachers)
    return run_stage(stage, args, ctx, loader, sampler, f"D-DFFNet: {args.model} / {args.backbone}, "
                     f"final weight {args.final_weight}, {', '.join(described)} (bn {args.teacher_bn})")
