"""BCE + DOF-edge loss (docs/REPRODUCTION.md, section 6) and the deep-supervision segmentation loss."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from utils.resize import resize_bilinear

Reduction = Literal["sum", "mean"]
LossName = Literal["bce", "bce+edge"]


def neighbour_response(x: torch.Tensor) -> torch.Tensor:
    """The authors' fixed 3x3 filter (ones with -8 at the centre, zero padding) applied to
    B x 1 x H x W maps: the 3x3 box sum minus 9x, the same values as their conv2d at a tenth of
    its CPU cost (exact for integer-valued maps such as labels)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, divisor_override=1) - 9.0 * x


def label_edges(mask: torch.Tensor) -> torch.Tensor:
    """1 where a 3x3 neighbour (zero padding) differs from the pixel: a 2 px band around every
    boundary, plus every image-border pixel whose label is 1. `mask` is B x 1 x H x W in {0, 1}."""
    return 1.0 - (neighbour_response(mask) == 0).to(mask.dtype)


def prediction_edges(logits: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Soft edges of sigmoid(logits): e^2 / (e^2 + alpha) with e the same 3x3 filter response."""
    response = neighbour_response(torch.sigmoid(logits))
    return response.pow(2) / (response.pow(2) + alpha)


@dataclass(frozen=True)
class MaskEdges:
    """A label's edge map, flattened per sample, and its per-sample sum of squares: the label side of the
    DOF-edge dice, computed once per batch and shared by the final map's and the side maps' terms."""

    edges: torch.Tensor   # B x HW
    square_sum: torch.Tensor   # B

    @classmethod
    def of(cls, mask: torch.Tensor) -> MaskEdges:
        edges = label_edges(mask.float()).flatten(1)
        return cls(edges, edges.pow(2).sum(1))


def dof_edge_loss(logits: torch.Tensor, mask: torch.Tensor, reduction: Reduction = "sum",
                  mask_edges: MaskEdges | None = None) -> torch.Tensor:
    """Dice loss (smooth 1, power 2) between prediction and label edge maps, per sample, then summed
    over the batch as the authors do (`reduction='sum'`) or averaged (`'mean'`). `mask_edges`: the label
    side already computed (MaskEdges.of(mask)), the same values."""
    if logits.shape != mask.shape:
        raise ValueError(f"dof_edge_loss: logits {tuple(logits.shape)} and mask {tuple(mask.shape)} differ")
    logits = logits.float()
    pred_edge = prediction_edges(logits).flatten(1)
    label = mask_edges if mask_edges is not None else MaskEdges.of(mask)
    numerator = 2.0 * (pred_edge * label.edges).sum(1) + 1.0
    denominator = pred_edge.pow(2).sum(1) + label.square_sum + 1.0
    per_sample = 1.0 - numerator / denominator
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")


def bce_dof_edge_loss(
    logits: torch.Tensor,
    mask: torch.Tensor,
    edge_weight: float = 0.5,
    reduction: Reduction = "sum",
    edge_sum_scale: float = 1.0,
    mask_edges: MaskEdges | None = None,
) -> torch.Tensor:
    """The authors' ECELoss: mean BCE-with-logits + edge_weight x DOF-edge loss.

    `edge_sum_scale` multiplies a batch-summed edge term; training passes processes x accumulation
    steps so that a split batch reproduces the loss of the whole batch (see engine.train). `mask_edges`:
    the label's edges when already computed (see dof_edge_loss).
    """
    bce = F.binary_cross_entropy_with_logits(logits.float(), mask.float())
    edge = dof_edge_loss(logits, mask, reduction, mask_edges)
    if reduction == "sum":
        edge = edge * edge_sum_scale
    return bce + edge_weight * edge


def segmentation_loss(
    logits: torch.Tensor,
    sides: Sequence[torch.Tensor],
    mask: torch.Tensor,
    loss: LossName = "bce+edge",
    final_weight: float = 1.0,
    reduction: Reduction = "sum",
    edge_sum_scale: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """final_weight x L(final) + sum_k L(side_k), side maps upsampled bilinearly (align_corners=False)
    to the label size. Returns the total and the unweighted terms {'final', 'side1', ...}."""
    if loss == "bce":
        def term(x: torch.Tensor) -> torch.Tensor:
            return F.binary_cross_entropy_with_logits(x.float(), mask.float())
    elif loss == "bce+edge":
        mask_edges = MaskEdges.of(mask)   # one label, five terms: its edges once

        def term(x: torch.Tensor) -> torch.Tensor:
            return bce_dof_edge_loss(x, mask, reduction=reduction, edge_sum_scale=edge_sum_scale,
                                     mask_edges=mask_edges)
    else:
        raise ValueError(f"loss must be 'bce' or 'bce+edge', got {loss!r}")
    size = mask.shape[-2:]
    terms = {"final": term(resize_bilinear(logits, size)
                           if logits.shape[-2:] != size else logits)}
    for k, side in enumerate(sides, start=1):
        terms[f"side{k}"] = term(resize_bilinear(side, size))
    total = final_weight * terms["final"] + sum(v for key, v in terms.items() if key != "final")
    return total, terms


@dataclass(frozen=True)
class SegmentationCriterion:
    """`segmentation_loss` with a stage's fixed settings, called on a batch's final and side maps."""

    loss: LossName = "bce+edge"
    final_weight: float = 1.0
    reduction: Reduction = "sum"
    edge_sum_scale: float = 1.0

    def __call__(self, logits: torch.Tensor, sides: Sequence[torch.Tensor],
                 mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return segmentation_loss(logits, sides, mask, self.loss, final_weight=self.final_weight,
                                 reduction=self.reduction, edge_sum_scale=self.edge_sum_scale)
