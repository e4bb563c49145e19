"""Evaluation of a model: batched inference, scoring under a protocol (metrics.protocol.Protocol), results
entries with per-image CSVs, saved maps and a grid; the same predict-and-score path serves test.py and
validation during training.

Saved maps are 8-bit grey PNGs at the original image resolution, white = in-focus
(grey level = round(255 * P(in-focus)), the model's output polarity and the DUT / EBD mask convention).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from datasets import build_dataset, collate_test
from datasets.polarity import MaskPolarity, split_polarity
from datasets.registry import uses_split_list
from datasets.transforms import denormalise
from metrics.protocol import PROTOCOLS, Protocol
from metrics.regions import RegionMetrics
from metrics.report import write_per_image_csv
from models import load_model
from models.inference import detector_logits
from utils.image_writer import ImageWriter
from utils.log import progress
from utils.plots import labelled_grid
from utils.runtime import autocast, use_device

MAP_POLARITY = MaskPolarity.WHITE_IN_FOCUS
GRID_HEIGHT = 160
GRID_COLUMNS = ("image", "ground truth (white = in-focus)", "prediction (white = in-focus)")


@dataclass
class EvalSettings:
    """How to run an evaluation (device, batching, protocol) and what to write."""
    protocol: Protocol = PROTOCOLS["official"]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: str = "off"
    batch_size: int = 8
    workers: int = 2
    channels_last: bool = False
    img_size: int = 320
    data_root: str = "data"
    save_maps: bool = False
    grid: int = 6
    split_file: str | None = None
    flip_average: bool = False


def build_test_set(expr: str, settings: EvalSettings) -> Dataset:
    """The test split of `expr`, with the settings' split list where the set takes one."""
    split_file = settings.split_file if settings.split_file and uses_split_list(expr) else None
    return build_dataset(expr, "test", settings.data_root, settings.img_size, split_file=split_file)


def set_label(expr: str) -> str:
    """Short, file-name-safe name of a data-set expression: 'folder:a/DUT-sample:white=...' -> 'DUT-sample'."""
    if expr.startswith(("folder:", "synthetic:")):
        path = split_polarity(expr.split(":", 1)[1])[0]
        expr = Path(path.rstrip("/")).name or path
    return re.sub(r"[^A-Za-z0-9._-]+", "_", expr)


def load_detector(path: str, settings: EvalSettings, name: str | None = None, backbone: str | None = None,
                  compile_model: bool = False) -> torch.nn.Module:
    """A checkpoint's network on the settings' device, in eval mode (channels_last, torch.compile on request);
    a depth model is refused."""
    use_device(settings.device)
    model = load_model(path, name=name, backbone=backbone, map_location=settings.device,
                       detector_only=True).eval()
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


def eval_loader(dataset: Dataset, settings: EvalSettings, persistent: bool = False) -> DataLoader:
    """The test-time loader of `dataset`; `persistent` keeps its workers alive between passes (validation
    every epoch) instead of starting them again for each."""
    return DataLoader(dataset, batch_size=settings.batch_size, shuffle=False, num_workers=settings.workers,
                      collate_fn=collate_test, pin_memory=settings.device.type == "cuda",
                      persistent_workers=persistent and settings.workers > 0)


def predict(model: torch.nn.Module, dataset: Dataset, settings: EvalSettings, desc: str,
            loader: DataLoader | None = None) -> Iterator[tuple[dict, torch.Tensor]]:
    """(item fields, P(in-focus) resized to the original image size by the protocol, on the device) per image,
    read through `loader` when given (an `eval_loader` of `dataset`)."""
    model.eval()
    bar = progress(total=len(dataset), desc=desc, unit="img")
    with torch.inference_mode():
        for batch in loader or eval_loader(dataset, settings):
            images = batch["image"].to(settings.device, non_blocking=True)
            if settings.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(settings.device, settings.amp):
                logits = detector_logits(model, images, settings.flip_average)
            probs = torch.sigmoid(logits.float())
            for i in range(len(batch["name"])):
                item = {key: value[i] for key, value in batch.items()}
                yield item, settings.protocol.upsample(probs[i:i + 1], item["image_size"])
            bar.update(len(batch["name"]))
    bar.close()


def to_8bit(prob: torch.Tensor) -> np.ndarray:
    """uint8 map round(255 * P(in-focus)) (white = in-focus) on the host."""
    return prob.mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()


def _display_image(image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB of the normalised network input, resized to GRID_HEIGHT with the original aspect."""
    rgb = (denormalise(image) * 255).round().byte().permute(1, 2, 0).numpy()
    width = max(1, round(GRID_HEIGHT * size[1] / size[0]))
    return np.asarray(Image.fromarray(rgb).resize((width, GRID_HEIGHT), Image.Resampling.BILINEAR))


def score_pairs(pairs: Iterator[tuple[dict, torch.Tensor]], dataset_name: str, settings: EvalSettings,
                out_dir: Path | None) -> tuple[dict, list[dict]]:
    """Run the protocol's metrics over (item, prediction) pairs; write maps and a grid into out_dir as asked
    (nothing without an out_dir)."""
    metrics = settings.protocol.metrics(dataset_name)
    rows, grid_rows = [], []
    grid = settings.grid if out_dir is not None else 0
    writer = ImageWriter() if settings.save_maps and out_dir is not None else None
    if writer is not None:
        maps_dir = out_dir / "maps"
        maps_dir.mkdir(parents=True, exist_ok=True)
    regions: RegionMetrics | None = None
    try:
        for item, prob in pairs:
            mask = item["mask"].to(prob.device)
            rows.append(metrics.update(prob, mask, item["name"]))
            if "homogeneous" in item:
                regions = regions or RegionMetrics()
                scored = not rows[-1].get("excluded") and prob.shape[-2:] == mask.shape[-2:]
                rows[-1].update(regions.update(prob, mask, item["homogeneous"].to(prob.device), item["name"])
                                if scored else dict.fromkeys(("mae_homogeneous", "mae_textured")))
            if writer is not None or len(grid_rows) < grid:
                grey = to_8bit(prob)
                if writer is not None:
                    writer.write(maps_dir / f"{Path(item['name']).stem}.png", grey)
                if len(grid_rows) < grid and "image" in item:
                    grid_rows.append([_display_image(item["image"], item["image_size"]),
                                      item["mask"][0].numpy(), grey])
    finally:
        if writer is not None:
            writer.close()
    summary = metrics.summary()
    if regions is not None:
        summary["regions"] = regions.summary()
    if writer is not None and writer.error:
        summary["write_error"] = f"maps not written after the first failure: {writer.error}"
        return summary, rows
    if grid_rows:
        try:
            labelled_grid(grid_rows, list(GRID_COLUMNS), out_dir / "grid.png", height=GRID_HEIGHT)
        except OSError as exc:
            (out_dir / "grid.png").unlink(missing_ok=True)
            summary["write_error"] = f"{out_dir / 'grid.png'}: not written ({exc.strerror or exc})"
    return summary, rows


def score_model(model: torch.nn.Module, dataset: Dataset, dataset_name: str, settings: EvalSettings,
                out_dir: Path | None = None, desc: str = "validation",
                loader: DataLoader | None = None) -> tuple[dict, list[dict]]:
    """Predict every image of a test set (through `loader` when given) and score the maps under the settings'
    protocol: (the set's summary, per-image rows). Maps and a grid go to out_dir when given and the settings
    ask for them."""
    pairs = predict(model, dataset, settings, desc, loader)
    return score_pairs(pairs, dataset_name, settings, out_dir)


def results_entry(summary: dict, rows: list[dict], label: str, source: str, dataset_expr: str, out_dir: Path,
                  settings: EvalSettings, upsampling: str) -> dict:
    """The results.json entry of one source on one test set; its per-image rows go to out_dir/per_image.csv."""
    csv_path = out_dir / "per_image.csv"
    try:
        write_per_image_csv(rows, csv_path)
    except OSError as exc:
        summary.setdefault("write_error", f"{csv_path}: {exc.strerror or exc}")
    return {"model": label, "source": source, "dataset": set_label(dataset_expr), "dataset_expr": dataset_expr,
            **summary, "upsampling": upsampling, "per_image_csv": str(csv_path),
            "maps": str(out_dir / "maps") if settings.save_maps else None, "map_polarity": MAP_POLARITY.label}


def evaluate_model(model: torch.nn.Module, label: str, checkpoint: str, dataset_expr: str,
                   settings: EvalSettings, out: Path) -> dict:
    """Evaluate a loaded model on one test set; returns its results.json entry."""
    dataset = build_test_set(dataset_expr, settings)
    name = set_label(dataset_expr)
    out_dir = out / label / name
    summary, rows = score_model(model, dataset, name, settings, out_dir, desc=f"{label} on {name}")
    entry = results_entry(summary, rows, label, checkpoint, dataset_expr, out_dir, settings,
                          settings.protocol.upsampling)
    entry["corrupt_left_out"] = dataset.corrupt
    entry["img_size"] = settings.img_size
    entry["flip_average"] = settings.flip_average
    return entry
