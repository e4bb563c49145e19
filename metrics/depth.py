"""Relative-depth accuracy in the MiDaS convention: align, then score AbsRel and delta < 1.25."""
from __future__ import annotations

import torch

from losses.depth import align_scale_shift


def relative_depth_errors(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image AbsRel and delta < 1.25 of inverse-depth maps [B,1,H,W]: the prediction is aligned to
    the target by a least-squares scale (>= 0) and shift, then both are compared as depths
    (1 / inverse depth), the aligned map clamped to the target's smallest inverse depth so that no
    predicted point lies beyond the farthest true one."""
    target = target.float()
    aligned = align_scale_shift(prediction.float(), target, torch.ones_like(target, dtype=torch.bool),
                                nonnegative_scale=True).flatten(1)
    target = target.flatten(1)
    aligned = torch.maximum(aligned, target.min(1, keepdim=True).values)
    depth, true_depth = 1.0 / aligned, 1.0 / target
    abs_rel = ((depth - true_depth).abs() / true_depth).mean(1)
    delta = (torch.maximum(depth / true_depth, true_depth / depth) < 1.25).float().mean(1)
    return {"abs_rel": abs_rel, "delta1": delta}
