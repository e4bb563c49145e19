"""Frozen teachers for distillation."""
from __future__ import annotations

from torch import nn

TEACHER_BN_MODES = ("eval", "batch")


def make_frozen_teacher(model: nn.Module, bn: str = "eval") -> nn.Module:
    """Freeze `model` (no parameter gradients). bn='eval': eval mode (running BN statistics);
    bn='batch': the authors' quirk, train mode so BatchNorm normalises with each batch's statistics and
    keeps updating its running statistics. Run the teacher under torch.no_grad()."""
    if bn not in TEACHER_BN_MODES:
        raise ValueError(f"teacher BatchNorm mode must be one of {TEACHER_BN_MODES}, got {bn!r}")
    model.requires_grad_(False)
    model.train(bn == "batch")
    return model
