"""Trivial defocus maps to put a trained detector's numbers in context.

`all-in-focus` predicts 1 (sharp) everywhere. `prior` predicts, at every pixel, the share of training
masks that are in focus there (the training set's mean mask at the training resolution, resized to each
test image). Maps are written as 8-bit PNGs, white = in-focus, one per test image (file stem = image
stem), for `test.py --pred-dir DIR --pred-polarity white=in-focus`. Command line: tools/baselines.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datasets import build_dataset
from utils.log import progress

BASELINES = ("all-in-focus", "prior")


def mean_training_mask(train_set: str, root: str, img_size: int) -> np.ndarray:
    """Per-pixel mean of the training masks (1 = in-focus) at img_size x img_size, without augmentation."""
    dataset = build_dataset(train_set, "train", root=root, img_size=img_size, augment=False)
    total = torch.zeros(1, img_size, img_size, dtype=torch.float64)
    for item in progress(dataset, desc=f"prior of {train_set}"):
        total += item["mask"].double()
    return (total / len(dataset))[0].numpy()


def write_baseline_maps(name: str, test_set: str, out: str | Path, root: str = "data",
                        train_set: str | None = None, img_size: int = 320) -> Path:
    """Write the `name` baseline's maps for every image of `test_set` into out/; returns out."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    if name == "prior" and not train_set:
        raise ValueError("the prior baseline needs the training set (--train-set)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prior = Image.fromarray(mean_training_mask(train_set, root, img_size).astype(np.float32)) if name == "prior" else None
    dataset = build_dataset(test_set, "test", root=root, img_size=img_size)
    for item in progress(dataset, desc=f"{name} maps"):
        height, width = item["image_size"]
        if prior is None:
            grey = np.full((height, width), 255, dtype=np.uint8)
        else:
            resized = np.asarray(prior.resize((width, height), Image.Resampling.BILINEAR))
            grey = np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)
        Image.fromarray(grey).save(out / f"{Path(item['name']).stem}.png")
    return out

