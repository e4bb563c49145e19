"""Mask polarity from image sharpness: blurred regions carry less high-frequency energy."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .files import Pair, load_mask, load_rgb

MIN_REGION_SHARE = 0.02
ERODE_PX = 4
WORK_SIZE = 480


@dataclass
class PolarityEstimate:
    """`white` is 'blurred', 'in-focus' or 'unknown'; confidence is the share of images that agree."""
    white: str
    confidence: float
    images_used: int
    median_log_ratio: float

    @property
    def label(self) -> str:
        return f"white={self.white}"

    def as_dict(self) -> dict:
        return {"label": self.label, **asdict(self)}


def high_frequency_energy(grey: np.ndarray) -> np.ndarray:
    """Per-pixel |Laplacian| of a float grey image in [0,1]."""
    return np.abs(cv2.Laplacian(grey, cv2.CV_32F, ksize=3))


def white_vs_black_log_ratio(pair: Pair) -> float | None:
    """log(mean HF energy in the white region / in the black region), None when a region is too small."""
    grey = np.asarray(load_rgb(pair.image).convert("L"), dtype=np.float32) / 255.0
    white = load_mask(pair.mask, white_is_in_focus=True)
    if white.shape != grey.shape:
        return None
    scale = WORK_SIZE / max(grey.shape)
    if scale < 1:
        size = (round(grey.shape[1] * scale), round(grey.shape[0] * scale))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        white = cv2.resize(white, size, interpolation=cv2.INTER_NEAREST)
    energy = high_frequency_energy(grey)
    kernel = np.ones((2 * ERODE_PX + 1, 2 * ERODE_PX + 1), np.uint8)
    inside = cv2.erode(white, kernel).astype(bool)
    outside = cv2.erode(1 - white, kernel).astype(bool)
    if min(inside.mean(), outside.mean()) < MIN_REGION_SHARE:
        return None
    return math.log((energy[inside].mean() + 1e-6) / (energy[outside].mean() + 1e-6))


def estimate_polarity(pairs: list[Pair], max_images: int = 100) -> PolarityEstimate:
    """Vote over up to `max_images` pairs spread evenly over the set."""
    if len(pairs) > max_images:
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, max_images).round().astype(int)]
    ratios = [r for r in map(white_vs_black_log_ratio, pairs) if r is not None]
    if not ratios:
        return PolarityEstimate("unknown", 0.0, 0, 0.0)
    median = float(np.median(ratios))
    agree = sum((r > 0) == (median > 0) for r in ratios) / len(ratios)
    return PolarityEstimate("in-focus" if median > 0 else "blurred", round(agree, 3), len(ratios),
                            round(median, 3))
