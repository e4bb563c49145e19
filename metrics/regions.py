"""MAE, F-beta and IoU restricted to the homogeneous and to the textured pixels of a test set.

A test set may come with region masks (datasets: a `homogeneous/` folder beside the mask folder, white =
the front-most surface is nearly textureless). Every scored pixel is either homogeneous or textured, and
each split metric pools the pixels of its region over the whole set:

  - MAE: sum of |P(in-focus) - GT| over the region's pixels of all images / their number;
  - F-beta (beta^2 = 0.3): precision and recall of the blur class, blur = {P(in-focus) < 0.5} (the
    protocols' 0.5 mask), from TP / FP / FN counted over the region's pixels of all images;
  - IoU: the same blur masks' intersection over union, counted the same way.
F-beta and IoU are 1 when a region has neither predicted nor GT blur pixels (nothing to find, nothing
found); F-beta is 0 when only one of the two is empty.

Pooling makes an image with no pixel of a region simply add nothing to it; a region with no pixel in
the whole set has no scores (None). The pixel and image counts of each region are reported beside the
scores. Images the protocol does not score (the official protocol excludes a GT whose size differs from
the image's) are left out of the split as well.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from metrics.protocol import fbeta

REGIONS = ("homogeneous", "textured")
DEFINITION = ("pooled over the region's pixels of all scored images; blur = P(in-focus) < 0.5; "
              "MAE on the continuous map")


@dataclass
class RegionCounts:
    """What one region has gathered over the set so far."""
    error_sum: float = 0.0  # sum of |P(in-focus) - GT| over its pixels
    pixels: int = 0
    true_blur: int = 0  # predicted blur that is GT blur
    predicted_blur: int = 0
    gt_blur: int = 0
    images: int = 0  # images with at least one pixel of the region

    def scores(self) -> dict:
        """mae, fbeta and iou of the blur class (None without pixels)."""
        if not self.pixels:
            return {"mae": None, "fbeta": None, "iou": None}
        tp, predicted, positives = self.true_blur, self.predicted_blur, self.gt_blur
        union = predicted + positives - tp
        return {"mae": self.error_sum / self.pixels,
                "fbeta": 1.0 if predicted == positives == 0 else
                fbeta(tp / predicted if predicted else 0.0, tp / positives if positives else 0.0),
                "iou": tp / union if union else 1.0}


class RegionMetrics:
    """Streaming split metrics of one data set over its homogeneous and textured pixels."""

    def __init__(self) -> None:
        self.counts = {region: RegionCounts() for region in REGIONS}

    def update(self, pred: torch.Tensor, gt: torch.Tensor, homogeneous: torch.Tensor, name: str) -> dict:
        """Add one image (maps [H, W] or [1, H, W] of the same size); returns its per-image MAE per region
        (None where the image has no pixel of that region)."""
        pred, gt, homogeneous = (x.reshape(x.shape[-2:]) for x in (pred, gt, homogeneous))
        if not (pred.shape == gt.shape == homogeneous.shape):
            raise ValueError(f"{name}: homogeneous mask {tuple(homogeneous.shape)}, prediction {tuple(pred.shape)} "
                             f"and GT {tuple(gt.shape)} must have the same size")
        pred = pred.float()
        error = (pred - (gt >= 0.5).float()).abs()
        pred_blur, gt_blur = pred < 0.5, gt < 0.5
        homogeneous = homogeneous.bool()
        row = {}
        for region, inside in (("homogeneous", homogeneous), ("textured", ~homogeneous)):
            pixels, tp, predicted, positives = torch.stack([
                inside.sum(), (inside & pred_blur & gt_blur).sum(), (inside & pred_blur).sum(),
                (inside & gt_blur).sum()]).tolist()
            error_sum = float(error[inside].double().sum()) if pixels else 0.0
            acc = self.counts[region]
            acc.error_sum += error_sum
            acc.pixels += pixels
            acc.true_blur += tp
            acc.predicted_blur += predicted
            acc.gt_blur += positives
            acc.images += int(pixels > 0)
            row[f"mae_{region}"] = error_sum / pixels if pixels else None
        return row

    def summary(self) -> dict:
        """{"homogeneous": {...}, "textured": {...}, "definition": ...}: mae, fbeta, iou (None for a region
        without pixels), pixels, share of the scored pixels, images with pixels of the region."""
        total = sum(acc.pixels for acc in self.counts.values())
        out: dict = {"definition": DEFINITION}
        for region, acc in self.counts.items():
            out[region] = {**acc.scores(), "pixels": acc.pixels, "share": acc.pixels / total if total else 0.0,
                           "images": acc.images}
        return out
