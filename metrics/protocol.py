"""Defocus blur detection metrics under two protocols, as streaming per-data-set accumulators.

Inputs, for both protocols, one image at a time (any torch device):
  pred: map of P(in-focus) in [0, 1], shape [H, W] (or [1, H, W]), at the original image resolution
        (the network's sigmoid map upsampled to the image size, or a saved map read as grey / 255);
  gt:   ground-truth mask, 1 = in-focus, shape [h, w] (or [1, h, w]); grey masks are binarised at >= 0.5.
F-beta, IoU, PR curves, S- and E-measure treat the BLURRED class as positive (the paper's choice).

`official` reproduces the authors' test.py / test_iou.py numbers, quirks included:
  - pairs whose GT size differs from the prediction size are excluded (and listed);
  - MAE: per-image mean |pred - gt| on the continuous map, averaged over images;
  - F-beta (beta^2 = 0.3): per image max(F of the blur mask {pred < 0.5}, F of the all-blur mask),
    averaged over images (the threshold sweep of their F_score1 on an already binary map);
  - IoU: blur class {pred <= 0.5} (strict "> 0.5" = in-focus), pooled over all pixels of the set;
    for EBD sets both maps are first nearest-resized to 320x320.
`standard` scores every image (the prediction is bilinearly resized to the GT size when they differ) on the
map quantised to 8 bits, the form in which maps are saved and exchanged, so a checkpoint and its saved
maps score identically. By default each 8-bit blur map is then min-max normalised to [0, 1] by its own
extremes, as the salient-object toolkits do (py_sod_metrics' `normalize=True`, PySODEvalToolkit); a
constant map is left as it is. `min_max=False` scores the raw map:
  - MAE, F-beta of the 0.5 blur mask (no all-blur alternative), max-F and mean-F of the image-averaged
    F curve over the 256 thresholds k/255 (normalised values truncated to 8 bits, as py_sod_metrics),
    IoU pooled over the set, S-measure and E-measure (py_sod_metrics), and the PR curve pooled over the set;
  - degenerate cases: py_sod_metrics' S-measure is NaN when the GT's blur centroid falls in the last row or
    column (an empty quadrant, weight 0); here an empty quadrant adds 0, as the area-weighted region
    term of Fan et al. defines it. A GT with one class scores 1 - mean or the mean (their definition).
Both protocols keep a pooled 256-level histogram per GT class, which gives the set's PR curve without
storing any pixels. A `Protocol` (PROTOCOLS) is one whole evaluation protocol: how the network's map is
resized to the image size (`official`: nearest, as the authors; `standard`: bilinear) and its metrics.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from py_sod_metrics import Emeasure, Smeasure

BETA2 = 0.3
LEVELS = 256
EBD_IOU_SIZE = (320, 320)


def official_iou_size(dataset_name: str) -> tuple[int, int] | None:
    """The authors' IoU resolution rule: 320x320 for any EBD set ('EBD' in the name), else None (original)."""
    return EBD_IOU_SIZE if "EBD" in dataset_name.upper() else None


def fbeta(precision: float, recall: float) -> float:
    """F-beta with beta^2 = 0.3; 0 when precision and recall are both 0."""
    denominator = BETA2 * precision + recall
    return (1 + BETA2) * precision * recall / denominator if denominator > 0 else 0.0


def _as_map(x: torch.Tensor, what: str, name: str) -> torch.Tensor:
    """[H, W] float view of a [H, W] or [1, H, W] map."""
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 2:
        raise ValueError(f"{name}: {what} must have shape [H, W] or [1, H, W], got {tuple(x.shape)}")
    return x.float()


def class_histogram(pred: torch.Tensor, gt_blur: torch.Tensor) -> torch.Tensor:
    """[2, 256] pixel counts per 8-bit BLUR level (row 0: GT in-focus pixels, row 1: GT blurred pixels).

    The in-focus level round(255 * pred) is the grey level of the saved white=in-focus map; the blur level
    is 255 minus it. In float32 (ties to even) level <= 127 <=> pred < 0.5 exactly, so the 0.5 masks of
    both protocols are read off the histogram.
    """
    codes = pred.reshape(-1).mul(255).round_().clamp_(0, 255).to(torch.int32)
    codes.add_(gt_blur.reshape(-1).to(torch.int32).mul_(LEVELS))
    return torch.bincount(codes, minlength=2 * LEVELS).view(2, LEVELS).flip(-1)


def counts_at_thresholds(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(TP_k, FP_k) of the blur masks {blur level >= k}, k = 0..255, from a [2, 256] class histogram."""
    at_or_above = hist.flip(-1).cumsum(-1).flip(-1)
    return at_or_above[1], at_or_above[0]


def pr_curve(hist: torch.Tensor) -> dict[str, list[float]]:
    """Precision and recall of the blur class at thresholds k/255 from a pooled class histogram.

    Precision is 1 where nothing is predicted blurred; recall is 0 when the set has no blurred pixel.
    """
    tp, fp = (c.double() for c in counts_at_thresholds(hist))
    predicted = tp + fp
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.ones_like(tp))
    positives = tp[0]
    recall = tp / positives if positives > 0 else torch.zeros_like(tp)
    return {
        "thresholds": [k / 255 for k in range(LEVELS)],
        "precision": precision.tolist(),
        "recall": recall.tolist(),
    }


def fbeta_curve(tp: torch.Tensor, fp: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Per-threshold F-beta (float64); an empty predicted AND empty GT blur region scores 1, one empty side 0."""
    tp, fp = tp.double(), fp.double()
    predicted = tp + fp
    precision = tp / predicted.clamp(min=1)
    recall = tp / positives.double().clamp(min=1)
    denominator = BETA2 * precision + recall
    f = torch.where(denominator > 0, (1 + BETA2) * precision * recall / denominator.clamp(min=1e-300),
                    torch.zeros_like(tp))
    both_empty = (predicted == 0) & (positives == 0)
    return torch.where(both_empty, torch.ones_like(f), f)


def _iou(intersection: int, predicted: int, positives: int) -> float:
    """IoU of two pixel sets from their counts; 1 when both are empty."""
    union = predicted + positives - intersection
    return intersection / union if union > 0 else 1.0


class OfficialMetrics:
    """The authors' protocol (test.py for MAE / F-beta, test_iou.py for IoU), streaming over a data set."""

    protocol = "official"

    def __init__(self, iou_size: tuple[int, int] | None = None) -> None:
        self.iou_size = iou_size
        self.excluded: list[dict[str, str]] = []
        self.n_images = 0
        self.sum_mae = 0.0
        self.sum_fbeta = 0.0
        self.sum_fbeta_mask = 0.0
        self.sum_fbeta_with_blur = 0.0
        self.n_without_blur = 0
        self.iou_counts = [0, 0, 0]  # intersection, predicted blur, GT blur: pooled over the set
        self.hist: torch.Tensor | None = None

    def update(self, pred: torch.Tensor, gt: torch.Tensor, name: str) -> dict:
        """Score one image; returns its CSV row (metrics None and a reason when the pair is excluded)."""
        pred, gt = _as_map(pred, "prediction", name), _as_map(gt, "ground truth", name)
        if pred.shape != gt.shape:
            reason = (f"GT size {gt.shape[1]}x{gt.shape[0]} differs from image size "
                      f"{pred.shape[1]}x{pred.shape[0]} (WxH)")
            self.excluded.append({"name": name, "reason": reason})
            return {"name": name, "mae": None, "fbeta": None, "fbeta_mask": None, "iou": None, "excluded": reason}
        gt_blur = gt < 0.5
        hist = class_histogram(pred, gt_blur)
        half = LEVELS // 2  # blur level >= 128 <=> pred < 0.5 (their F mask)
        if self.iou_size is None:  # their IoU mask is pred <= 0.5: add the pixels exactly at 0.5
            tie = pred == 0.5
            iou_extra = torch.stack([torch.count_nonzero(tie & gt_blur), torch.count_nonzero(tie)])
        else:
            small = F.interpolate(torch.stack([pred, gt])[None], size=self.iou_size, mode="nearest")[0]
            small_pred_blur, small_gt_blur = small[0] <= 0.5, small[1] < 0.5
            iou_extra = torch.stack([torch.count_nonzero(small_pred_blur & small_gt_blur),
                                     torch.count_nonzero(small_pred_blur), torch.count_nonzero(small_gt_blur)])
        # sum |pred - in-focus GT| = sum over GT-blur pixels of pred + sum over GT-in-focus pixels of (1 - pred)
        sums = torch.stack([pred.masked_fill(~gt_blur, 0).sum(), pred.sum()]).double()
        counts = torch.cat([hist[1, half:].sum()[None], hist[:, half:].sum()[None], hist[1].sum()[None], iou_extra])
        blur_sum, pred_sum = sums.tolist()
        tp, n_pred, n_gt, *iou_extra = counts.tolist()
        n_pixels = pred.numel()
        mae = (2 * blur_sum - pred_sum + (n_pixels - n_gt)) / n_pixels
        if self.iou_size is None:
            iou_counts = (tp + iou_extra[0], n_pred + iou_extra[1], n_gt)
        else:
            iou_counts = tuple(iou_extra)
        # F_score1: eps-guarded precision / recall of the blur mask and of the all-blur mask (threshold 0)
        f_mask = self._authors_fbeta(tp, n_pred, n_gt)
        f_all = self._authors_fbeta(n_gt, n_pixels, n_gt)
        f_official = max(f_mask, f_all)
        # test1.py (saved maps): sklearn precision / recall, 0 on empty denominators, no all-blur mask
        f_plain = fbeta(tp / n_pred if n_pred else 0.0, tp / n_gt if n_gt else 0.0)
        for i, count in enumerate(iou_counts):
            self.iou_counts[i] += count
        self.hist = hist if self.hist is None else self.hist + hist
        self.n_images += 1
        self.sum_mae += mae
        self.sum_fbeta += f_official
        self.sum_fbeta_mask += f_plain
        if n_gt > 0:
            self.sum_fbeta_with_blur += f_official
        else:
            self.n_without_blur += 1
        return {"name": name, "mae": mae, "fbeta": f_official, "fbeta_mask": f_plain,
                "iou": _iou(*iou_counts), "excluded": ""}

    @staticmethod
    def _authors_fbeta(tp: int, n_pred: int, n_gt: int) -> float:
        """F as in the authors' eval_pr / F_score1: P = TP/(|pred|+1e-20), R = TP/(|GT|+1e-20)."""
        precision = tp / (n_pred + 1e-20)
        recall = tp / (n_gt + 1e-20)
        return (1 + BETA2) * precision * recall / (BETA2 * precision + recall + 1e-10)

    def summary(self) -> dict:
        """Set-level results; raises ValueError when no image could be scored."""
        if self.n_images == 0:
            raise ValueError("official protocol: no image was scored "
                             f"({len(self.excluded)} excluded because of a GT / image size mismatch)")
        n = self.n_images
        n_with_blur = n - self.n_without_blur
        return {
            "protocol": self.protocol,
            "n_images": n,
            "mae": self.sum_mae / n,
            "fbeta": self.sum_fbeta / n,
            "iou": _iou(*self.iou_counts),
            "fbeta_mask": self.sum_fbeta_mask / n,
            "n_gt_without_blur": self.n_without_blur,
            "fbeta_gt_with_blur": self.sum_fbeta_with_blur / n_with_blur if n_with_blur else None,
            "iou_resolution": "x".join(map(str, self.iou_size)) if self.iou_size else "original",
            "map_normalisation": "none",
            "excluded": list(self.excluded),
            "pr_curve": pr_curve(self.hist),
        }


def blur_level_values(hist: torch.Tensor, min_max: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per 8-bit blur level: (the map value in [0, 1], its 8-bit code for the threshold sweep).

    min_max normalises by the lowest and highest level present in `hist` ([2, 256]) with py_sod_metrics'
    exact float64 operations (level / 255, then (x - min) / (max - min), codes by truncation), so the
    values equal what py_sod_metrics scores; a constant map, or min_max=False, keeps level / 255.
    """
    values = np.arange(LEVELS) / 255
    if min_max:
        present = np.flatnonzero(hist.sum(0).cpu().numpy())
        low, high = values[present[0]], values[present[-1]]
        if high != low:
            values = (values - low) / (high - low)
    codes = (np.clip(values, 0, 1) * 255).astype(np.int64)
    return values, codes


class AreaWeightedSmeasure(Smeasure):
    """py_sod_metrics' S-measure with an empty quadrant adding 0 to the region term (its area weight is 0)
    instead of NaN."""

    def ssim(self, pred: np.ndarray, gt: np.ndarray) -> float:
        """SSIM of one quadrant; 0 for an empty one."""
        return super().ssim(pred, gt) if pred.size else 0.0


class StandardMetrics:
    """Common DBD / salient-object metrics on every image, with the blurred class as positive; each map
    min-max normalised first unless min_max=False."""

    protocol = "standard"

    def __init__(self, min_max: bool = True) -> None:
        self.min_max = min_max
        self.n_images = 0
        self.resized: list[str] = []
        self.sum_mae = 0.0
        self.sum_fbeta = 0.0
        self.hist: torch.Tensor | None = None
        self.sum_fbeta_curve: torch.Tensor | None = None
        self.s_measure = AreaWeightedSmeasure()
        self.e_measure = Emeasure()

    def update(self, pred: torch.Tensor, gt: torch.Tensor, name: str) -> dict:
        """Score one image; returns its CSV row."""
        pred, gt = _as_map(pred, "prediction", name), _as_map(gt, "ground truth", name)
        resized = pred.shape != gt.shape
        if resized:
            self.resized.append(name)
            pred = F.interpolate(pred[None, None], size=gt.shape, mode="bilinear", align_corners=False)[0, 0]
        gt_blur = gt < 0.5
        level_hist = class_histogram(pred, gt_blur)
        values, codes = blur_level_values(level_hist, self.min_max)
        codes = torch.from_numpy(codes).to(level_hist.device)
        hist = torch.zeros_like(level_hist).index_add_(1, codes, level_hist)
        tp, fp = counts_at_thresholds(hist)
        positives = hist[1].sum()
        curve = fbeta_curve(tp, fp, positives)
        blur_value = torch.from_numpy(values).to(level_hist.device)
        abs_error = level_hist[0].double() @ blur_value + level_hist[1].double() @ (1 - blur_value)
        half = LEVELS // 2  # code >= 128: blur score >= 128 / 255 (raw: P(in-focus) < 0.5)
        stats = torch.stack([abs_error / gt.numel(), curve[half], tp[half].double(), fp[half].double(),
                             positives.double()]).tolist()
        mae, f_half, tp_half, fp_half, n_pos = stats
        blur_level = (255 - pred.mul(255).round_().clamp_(0, 255)).to(torch.int64).cpu().numpy()
        blur_score = values[blur_level]
        gt_blur_np = gt_blur.cpu().numpy()
        self.s_measure.step(blur_score, gt_blur_np, normalize=False)
        self.e_measure.step(blur_score, gt_blur_np, normalize=False)
        s_measure = float(self.s_measure.sms[-1])
        e_measure = float(np.mean(self.e_measure.changeable_ems[-1]))
        self.hist = hist if self.hist is None else self.hist + hist
        self.sum_fbeta_curve = curve if self.sum_fbeta_curve is None else self.sum_fbeta_curve + curve
        self.n_images += 1
        self.sum_mae += mae
        self.sum_fbeta += f_half
        return {"name": name, "mae": mae, "fbeta": f_half,
                "iou": _iou(int(tp_half), int(tp_half + fp_half), int(n_pos)),
                "s_measure": s_measure, "e_measure": e_measure,
                "resized": "yes" if resized else ""}

    def summary(self) -> dict:
        """Set-level results; raises ValueError when no image was scored."""
        if self.n_images == 0:
            raise ValueError("standard protocol: no image was scored")
        n = self.n_images
        mean_curve = self.sum_fbeta_curve / n
        tp, fp = counts_at_thresholds(self.hist)
        half = LEVELS // 2
        e_curve = self.e_measure.get_results()["em"]["curve"]
        return {
            "protocol": self.protocol,
            "n_images": n,
            "mae": self.sum_mae / n,
            "fbeta": self.sum_fbeta / n,
            "iou": _iou(int(tp[half]), int(tp[half] + fp[half]), int(tp[0])),
            "max_fbeta": float(mean_curve.max()),
            "mean_fbeta": float(mean_curve.mean()),
            "s_measure": float(self.s_measure.get_results()["sm"]),
            "e_measure_max": float(np.max(e_curve)),
            "e_measure_mean": float(np.mean(e_curve)),
            "map_normalisation": "min-max" if self.min_max else "none",
            "resized_to_gt": list(self.resized),
            "excluded": [],
            "pr_curve": pr_curve(self.hist),
        }


Metrics = OfficialMetrics | StandardMetrics


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: how a network's map is resized to the image size, and what is scored.

    `metrics(dataset_name)` returns a fresh accumulator for the data set called `dataset_name`."""

    name: str
    upsampling: str
    metrics: Callable[[str], Metrics]

    def upsample(self, prob: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """[1, 1, h, w] map -> [H, W] map at `size` (the image size)."""
        extra = {} if self.upsampling == "nearest" else {"align_corners": False}
        return F.interpolate(prob, size=tuple(size), mode=self.upsampling, **extra)[0, 0]


PROTOCOLS = {
    "official": Protocol("official", "nearest", lambda name: OfficialMetrics(iou_size=official_iou_size(name))),
    "standard": Protocol("standard", "bilinear", lambda name: StandardMetrics()),
}


def get_protocol(name: str, raw_maps: bool = False) -> Protocol:
    """The protocol called `name` (official | standard); raw_maps: the standard protocol without its per-map
    min-max normalisation."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    if not raw_maps:
        return PROTOCOLS[name]
    if name != "standard":
        raise ValueError(f"raw maps apply to the standard protocol; the {name} protocol never normalises maps")
    return dataclasses.replace(PROTOCOLS[name], metrics=lambda _: StandardMetrics(min_max=False))
