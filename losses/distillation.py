"""Feature (D-DFFNet) and response (R-DFFNet) distillation losses (docs/REPRODUCTION.md, section 5).

Feature: 1x1 projectors and the normalised L2 distance; response: the scale-and-shift-invariant depth
loss on the student's depth heads against the teacher's normalised depth.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from losses.depth import normalised_depth, scale_shift_invariant_loss


def l2_normalise(features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """f / sqrt(sum_c f^2 + eps) at every pixel (the epsilon inside the square root, as the authors)."""
    return features / torch.sqrt(features.pow(2).sum(1, keepdim=True) + eps)


def feature_distillation_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], eps: float = 1e-6
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """sum_l mean_{b,h,w} sum_c (n(s_l) - n(t_l))^2 over the levels; returns (total, per-level terms).

    `student` are the projected student features (same channels as the teacher's). A teacher feature
    whose spatial size differs from the student's is resized bilinearly (align_corners=False) to the
    student's size before normalisation, so both sides are unit vectors at every pixel. The teacher
    side carries no gradient.
    """
    if len(student) != len(teacher):
        raise ValueError(f"feature_distillation_loss: {len(student)} student levels vs {len(teacher)} teacher levels")
    levels = []
    for s, t in zip(student, teacher):
        if s.shape[:2] != t.shape[:2]:
            raise ValueError(f"feature_distillation_loss: student {tuple(s.shape)} vs teacher {tuple(t.shape)}: "
                             "batch and channels must match (project the student first)")
        t = t.detach().float()
        if t.shape[-2:] != s.shape[-2:]:
            t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
        levels.append((l2_normalise(s.float(), eps) - l2_normalise(t, eps)).pow(2).sum(1).mean())
    return torch.stack(levels).sum(), levels


class Projectors(nn.Module):
    """One 1x1 convolution without bias per level, student channels -> teacher channels,
    xavier-normal initialised (the authors' adapters)."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(f"Projectors: {len(student_channels)} student levels vs {len(teacher_channels)} teacher levels")
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=1, bias=False) for c_in, c_out in zip(student_channels, teacher_channels)
        )
        for conv in self.convs:
            nn.init.xavier_normal_(conv.weight)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Project each student level to its teacher's channel count."""
        return [conv(f) for conv, f in zip(self.convs, features, strict=True)]


def response_distillation_loss(heads: Sequence[torch.Tensor],
                               depth: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """R-DFFNet's depth loss: sum over the depth heads of the scale-and-shift-invariant MSE (no gradient
    term) against the teacher's depth map, resized bilinearly to the head's resolution and normalised per
    image (`normalised_depth`). MiDaS's inverse depth is defined only up to a per-image scale and shift,
    so the heads are judged on relative depth alone. Returns (total, per-head terms)."""
    terms = []
    for head in heads:
        target = normalised_depth(F.interpolate(depth.float(), size=head.shape[-2:], mode="bilinear",
                                                align_corners=False))
        terms.append(scale_shift_invariant_loss(head, target, grad_weight=0.0))
    return torch.stack(terms).sum(), terms
