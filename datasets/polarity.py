"""Mask polarity: which class the white pixels of a raw mask mark, masks read in a polarity, and the
polarity's estimate from image sharpness.

Blurred regions carry less high-frequency energy, so the white region of a white=blurred set is the
smoother one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch

from .decoding import load_rgb, read_mask_values
from .files import Pair

MIN_REGION_SHARE = 0.02
ERODE_PX = 4
WORK_SIZE = 480

Whiteness = TypeVar("Whiteness", np.ndarray, torch.Tensor)


class MaskPolarity(Enum):
    """Which class the white pixels of a raw mask (or of a saved map) mark; the value follows 'white='."""

    WHITE_IN_FOCUS = "in-focus"
    WHITE_BLURRED = "blurred"
    UNKNOWN = "unknown"

    @property
    def label(self) -> str:
        """The user-facing spelling: 'white=in-focus', 'white=blurred' or 'white=unknown'."""
        return f"white={self.value}"

    @classmethod
    def parse(cls, text: str) -> MaskPolarity:
        """The polarity a user states ('white=in-focus' or 'white=blurred'); ValueError otherwise."""
        for polarity in STATED_POLARITIES:
            if text == polarity.label:
                return polarity
        choices = " or ".join(p.label for p in STATED_POLARITIES)
        raise ValueError(f"mask polarity must be {choices}, got {text!r}")

    def to_in_focus(self, white: Whiteness) -> Whiteness:
        """1 = in-focus from whiteness in this polarity: a boolean mask, or grey levels in [0, 1]."""
        if self is MaskPolarity.UNKNOWN:
            raise ValueError("cannot read a mask of unknown polarity; state white=in-focus or white=blurred")
        return white if self is MaskPolarity.WHITE_IN_FOCUS else 1 - white


STATED_POLARITIES = (MaskPolarity.WHITE_IN_FOCUS, MaskPolarity.WHITE_BLURRED)


def load_mask(path: Path, polarity: MaskPolarity) -> np.ndarray:
    """Decode a mask stored in `polarity` to uint8 {0,1} with 1 = in-focus: grey (RGB/RGBA via luma),
    binarised at half of its white value (files.read_mask_values)."""
    return polarity.to_in_focus(read_mask_values(path).is_white()).astype(np.uint8)


def split_polarity(term: str) -> tuple[str, MaskPolarity | None]:
    """'PATH:white=blurred' -> ('PATH', WHITE_BLURRED); a term without a stated polarity -> (term, None)."""
    head, _, tail = term.rpartition(":")
    stated = {polarity.label: polarity for polarity in STATED_POLARITIES}
    if head and tail in stated:
        return head, stated[tail]
    return term, None


@dataclass
class PolarityEstimate:
    """The estimated polarity; confidence is the share of images that agree with it."""
    polarity: MaskPolarity
    confidence: float
    images_used: int
    median_log_ratio: float

    @property
    def label(self) -> str:
        return self.polarity.label

    def as_dict(self) -> dict:
        return {"label": self.label, "white": self.polarity.value, "confidence": self.confidence,
                "images_used": self.images_used, "median_log_ratio": self.median_log_ratio}


def high_frequency_energy(grey: np.ndarray) -> np.ndarray:
    """Per-pixel |Laplacian| of a float grey image in [0,1]."""
    return np.abs(cv2.Laplacian(grey, cv2.CV_32F, ksize=3))


def white_vs_black_log_ratio(pair: Pair) -> float | None:
    """log(mean HF energy in the white region / in the black region), None when a region is too small."""
    grey = np.asarray(load_rgb(pair.image).convert("L"), dtype=np.float32) / 255.0
    white = load_mask(pair.mask, MaskPolarity.WHITE_IN_FOCUS)
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
        return PolarityEstimate(MaskPolarity.UNKNOWN, 0.0, 0, 0.0)
    median = float(np.median(ratios))
    agree = sum((r > 0) == (median > 0) for r in ratios) / len(ratios)
    polarity = MaskPolarity.WHITE_IN_FOCUS if median > 0 else MaskPolarity.WHITE_BLURRED
    return PolarityEstimate(polarity, round(agree, 3), len(ratios), round(median, 3))
