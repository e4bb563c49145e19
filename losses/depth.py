"""Relative-depth losses: MiDaS's scale-and-shift-invariant ones (Ranftl et al., TPAMI 2022, eqs. 4-7 and 11:
the least-squares fit and the median normalisation) and an ordinal one (per-image mid-rank targets)."""
from __future__ import annotations

import torch

from utils.resize import resize_bilinear


def align_scale_shift(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                      nonnegative_scale: bool = False) -> torch.Tensor:
    """Per-image least-squares scale s and shift t; returns s * pred + t (B x 1 x H x W). `valid` marks the
    pixels that count (bool) or weighs them (float). With `nonnegative_scale` the fit is constrained to
    s >= 0 (an inverted map then gets s = 0)."""
    b = pred.shape[0]
    p, g, m = pred.reshape(b, -1), target.reshape(b, -1), valid.reshape(b, -1).to(pred.dtype)
    n = m.sum(1).clamp_min(1.0)
    mean_p, mean_g = (m * p).sum(1) / n, (m * g).sum(1) / n
    var_p = (m * (p - mean_p[:, None]) ** 2).sum(1)
    cov = (m * (p - mean_p[:, None]) * (g - mean_g[:, None])).sum(1)
    scale = cov / var_p.clamp_min(1e-12)
    if nonnegative_scale:
        scale = scale.clamp_min(0.0)
    shift = mean_g - scale * mean_p
    return scale.view(b, 1, 1, 1) * pred + shift.view(b, 1, 1, 1)


def gradient_matching_loss(residual: torch.Tensor, valid: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """Mean absolute x/y gradient of the aligned residual, summed over `scales` halvings."""
    total = residual.new_zeros(())
    for k in range(scales):
        if k:
            residual = residual[:, :, ::2, ::2]
            valid = valid[:, :, ::2, ::2]
        if residual.shape[-1] < 2 or residual.shape[-2] < 2:
            break
        vx = valid[..., :, 1:] & valid[..., :, :-1]
        vy = valid[..., 1:, :] & valid[..., :-1, :]
        gx = (residual[..., :, 1:] - residual[..., :, :-1]).abs() * vx
        gy = (residual[..., 1:, :] - residual[..., :-1, :]).abs() * vy
        total = total + (gx.sum() + gy.sum()) / valid.sum().clamp_min(1)
    return total


def scale_shift_invariant_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    grad_weight: float = 0.5,
    scales: int = 4,
) -> torch.Tensor:
    """L_ssi (MSE after per-image scale/shift alignment) + grad_weight x multi-scale gradient matching.

    `pred` and `target` are B x 1 x H x W inverse-depth maps (MiDaS predicts disparity); `pred` is
    resized bilinearly to the target's size first. `valid` marks the pixels that count.
    """
    if pred.shape[-2:] != target.shape[-2:]:
        pred = resize_bilinear(pred, target.shape[-2:])
    pred, target = pred.float(), target.float()
    if valid is None:
        valid = torch.ones_like(target, dtype=torch.bool)
    residual = (align_scale_shift(pred, target, valid) - target) * valid
    ssi = 0.5 * (residual**2).sum() / valid.sum().clamp_min(1)
    if grad_weight == 0:
        return ssi
    return ssi + grad_weight * gradient_matching_loss(residual, valid, scales)


def _l1_and_gradient_matching(residual: torch.Tensor, grad_weight: float, scales: int) -> torch.Tensor:
    """Mean |residual| + grad_weight x multi-scale gradient matching of it, every pixel valid."""
    loss = residual.abs().mean()
    if grad_weight == 0:
        return loss
    return loss + grad_weight * gradient_matching_loss(residual, torch.ones_like(residual, dtype=torch.bool), scales)


def lower_median(flat: torch.Tensor) -> torch.Tensor:
    """The value torch.median(dim=1, keepdim=True) gives (the lower middle value), by sorting: on CUDA a median
    along a dimension has no deterministic implementation, so it would fail under --deterministic."""
    middle = (flat.shape[1] - 1) // 2
    return flat.sort(dim=1).values[:, middle : middle + 1]


def normalised_depth(depth: torch.Tensor) -> torch.Tensor:
    """Per-image (d - median) / mean|d - median|: MiDaS's relative inverse depth on a fixed scale."""
    flat = depth.float().flatten(1)
    median = lower_median(flat)
    spread = (flat - median).abs().mean(dim=1, keepdim=True).clamp_min(1e-6)
    return ((flat - median) / spread).view_as(depth)


def normalised_depth_loss(pred: torch.Tensor, target: torch.Tensor, grad_weight: float = 0.5,
                          scales: int = 4) -> torch.Tensor:
    """MiDaS's median-normalised form of the invariant loss (eqs. 6-7, untrimmed): mean |n(pred) - n(target)|
    with n = normalised_depth, + grad_weight x multi-scale gradient matching of that residual. Unlike the
    least-squares fit, the normalisation keeps the sign: an inverted map is penalised, not flipped back."""
    if pred.shape[-2:] != target.shape[-2:]:
        pred = resize_bilinear(pred, target.shape[-2:])
    return _l1_and_gradient_matching(normalised_depth(pred) - normalised_depth(target), grad_weight, scales)


def ordinal_depth(depth: torch.Tensor) -> torch.Tensor:
    """Per-image mid-rank of every pixel's value, in (0, 1]: the share of the image's pixels below it plus half
    the share equal to it. Invariant to any increasing transform of `depth`; ties (a flat surface) share one value."""
    flat = depth.float().flatten(1).contiguous()
    ordered = flat.sort(dim=1).values
    below = torch.searchsorted(ordered, flat, right=False)
    up_to = torch.searchsorted(ordered, flat, right=True)
    return ((below + up_to).float() / (2 * flat.shape[1]) + 0.5 / flat.shape[1]).view_as(depth)


def ordinal_depth_loss(pred: torch.Tensor, target: torch.Tensor, grad_weight: float = 0.5,
                       scales: int = 4) -> torch.Tensor:
    """Mean |pred - ordinal_depth(target)| + grad_weight x multi-scale gradient matching of that residual: `pred`
    regresses the depth order of the image's pixels (1 = nearest), which is what AbsRel and delta < 1.25 reward
    after alignment, on one scale for every image (raw inverse depths span three decades between scenes)."""
    if pred.shape[-2:] != target.shape[-2:]:
        pred = resize_bilinear(pred, target.shape[-2:])
    return _l1_and_gradient_matching(pred.float() - ordinal_depth(target), grad_weight, scales)


def mean_anchor_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared difference of the per-image means of `pred` and `target` (B x 1 x H x W), averaged.

    The invariant loss gives no gradient to the output's offset, so a network trained from scratch can
    drift below zero and die in MiDaS's final ReLU (an all-zero map); a small weight on this term keeps
    the output in the target's range without changing what the invariant loss measures.
    """
    if pred.shape[-2:] != target.shape[-2:]:
        pred = resize_bilinear(pred, target.shape[-2:])
    return ((pred.float().mean((1, 2, 3)) - target.float().mean((1, 2, 3))) ** 2).mean()


DEPTH_LOSSES = {"ssi": scale_shift_invariant_loss, "normalised": normalised_depth_loss, "ordinal": ordinal_depth_loss}
