"""Qualitative figures: a test set's image, ground truth, the nearly textureless pixels (where the set has them),
each detector's map and the depth teacher's depth; photos without ground truth with one detector's map.

Command line: tools/figures.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datasets import DepthDataset, PhotoDataset, build_dataset
from datasets.decoding import load_rgb
from datasets.transforms import denormalise
from models import load_midas, load_model, predict
from utils.plots import blur_overlay, labelled_grid
from utils.runtime import select_device


def _at(picture: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A C x H x W picture resized (bilinear) to `size`, the ground truth's, so every column has its aspect."""
    return F.interpolate(picture[None].float(), size=size, mode="bilinear", align_corners=False)[0]


def _displayed_image(image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """uint8 H x W x 3 picture of a normalised image tensor (the ImageNet normalisation undone) at `size`."""
    return (_at(denormalise(image), size).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def _displayed_depth(depth: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Inverse depth (1 x H x W) scaled to [0, 1] per image (near = bright) at `size`, for display only."""
    d = _at(depth, size)[0]
    return ((d - d.min()) / (d.max() - d.min()).clamp_min(1e-6)).numpy()


def _true_inverse_depth(folder: str, items: list[dict], img_size: int) -> list[torch.Tensor]:
    """The synthetic set's inverse depth of each picked item, at the network's resolution."""
    depth_set = DepthDataset(folder, img_size=img_size, augment=False)
    index = {image.name: i for i, (image, _) in enumerate(depth_set.items)}
    return [depth_set[index[item["name"]]]["depth"] for item in items]


@torch.inference_mode()
def comparison_figure(dataset_expr: str, checkpoints: dict[str, str], out: str | Path,
                      depth_teachers: dict[str, str] | None = None, count: int = 6, root: str = "data",
                      img_size: int = 320, device: str = "auto") -> Path:
    """Save a grid of `count` evenly spaced test images (rows) x [image, GT, nearly textureless pixels (sets with
    region masks), detectors..., each depth teacher's depth, the true depth (synthetic sets)] (columns);
    `depth_teachers` maps a column title to a MiDaS file."""
    dev = select_device(device)
    dataset = build_dataset(dataset_expr, "test", root=root, img_size=img_size)
    picks = np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).round().astype(int)
    items = [dataset[int(i)] for i in picks]
    images = torch.stack([item["image"] for item in items]).to(dev)
    sizes = [tuple(item["mask"].shape[-2:]) for item in items]
    columns = {"image": [_displayed_image(item["image"], size) for item, size in zip(items, sizes)],
               "ground truth (white = in-focus)": [item["mask"][0].numpy() for item in items]}
    if all("homogeneous" in item for item in items):
        columns["textureless (white)"] = [item["homogeneous"].numpy().astype(np.float32) for item in items]
    for label, path in checkpoints.items():
        model = load_model(path, map_location=dev, detector_only=True).eval()
        probs = torch.sigmoid(model(images).logits.float())
        columns[label] = [_at(p.cpu(), size)[0].numpy() for p, size in zip(probs, sizes)]
    for label, path in (depth_teachers or {}).items():
        depth = load_midas(path, map_location=dev).eval()(images).depth.cpu()
        columns[f"{label} (near = bright)"] = [_displayed_depth(d, size) for d, size in zip(depth, sizes)]
    if depth_teachers and dataset_expr.startswith("synthetic:"):
        true_depth = _true_inverse_depth(dataset_expr.removeprefix("synthetic:"), items, img_size)
        columns["true depth (near = bright)"] = [_displayed_depth(d, size) for d, size in zip(true_depth, sizes)]
    rows = [[column[r] for column in columns.values()] for r in range(len(items))]
    return labelled_grid(rows, list(columns), out)



def photo_figure(photos: list[str | Path], checkpoints: dict[str, str | Path], out: str | Path,
                 img_size: int | None = None, device: str = "auto") -> tuple[Path, list[str]]:
    """Save a grid of photos without ground truth, one row each: the photo, then each detector's P(in-focus) map
    and its blurred regions tinted red (models.predict, at the detector's own input size unless `img_size` is
    given), titled by label when there are several. Returns the figure's path and the files skipped, each with
    the reason (PhotoDataset)."""
    models = {label: load_model(path, map_location=select_device(device), detector_only=True).eval()
              for label, path in checkpoints.items()}
    dataset = PhotoDataset(photos)
    rows = []
    for path in dataset.paths:
        photo = load_rgb(path)
        pixels = np.asarray(photo)
        row = [pixels]
        for model in models.values():
            in_focus = predict(model, photo, img_size)
            row += [in_focus, blur_overlay(pixels, in_focus)]
        rows.append(row)
    if len(models) == 1:
        columns = ["photo", "P(in-focus), white = sharp", "predicted blur (red)"]
    else:
        columns = ["photo"] + [title for label in models for title in (f"{label}: P(in-focus)", f"{label}: blur")]
    return labelled_grid(rows, columns, out), dataset.skipped
