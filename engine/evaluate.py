"""Evaluation engine: batched inference, scoring under a protocol (metrics.protocol.Protocol), per-image CSVs,
saved maps; the same predict-and-score path serves test.py and validation during training.

Saved maps are 8-bit grey PNGs at the original image resolution, white = in-focus
(grey level = round(255 * P(in-focus)), the model's output polarity and the DUT / EBD mask convention).
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from datasets import DatasetError, PhotoDataset, build_dataset, collate_test
from datasets.files import IMAGE_EXTENSIONS, format_names, image_size, is_hidden, load_rgb
from datasets.polarity import STATED_POLARITIES, MaskPolarity, split_polarity
from datasets.registry import uses_split_list
from datasets.transforms import denormalise
from models import load_model
from models.inference import predict_batch
from utils.log import printable, progress
from metrics.protocol import PROTOCOLS, Protocol
from utils.plots import blur_overlay, labelled_grid
from metrics.regions import RegionMetrics
from metrics.report import write_per_image_csv
from utils.runtime import autocast, use_device

MAP_POLARITY = MaskPolarity.WHITE_IN_FOCUS
GRID_HEIGHT = 160
GRID_COLUMNS = ("image", "ground truth (white = in-focus)", "prediction (white = in-focus)")
MAX_STEM_BYTES = 200  # output names stay well under the 255-byte limit of file names
INVERTED_MAE = 0.5  # a constant grey map scores 0.5: most maps above it are likely of the other polarity


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
                logits = model(images).logits
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


class _FileWriter:
    """Writes images on two background threads (OpenCV releases the GIL while encoding). After the first
    write that fails (e.g. a full disk) nothing more is written and `error` names the file and the reason;
    `written` lists the files written, in the order asked."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.pending: list[tuple[Path, Future]] = []
        self.error: str | None = None
        self.written: list[Path] = []

    def write(self, path: Path, image: np.ndarray) -> None:
        if self.error is None:
            self.pending.append((path, self.pool.submit(self._write, path, image)))

    def _write(self, path: Path, image: np.ndarray) -> bool:
        if self.error is not None:
            return False
        try:
            _imwrite(path, image)
        except OSError as exc:
            self.error = self.error or f"{path}: {exc.strerror or exc}"
            return False
        return True

    def close(self) -> None:
        self.written = [path for path, job in self.pending if job.result()]
        self.pool.shutdown()


def _imwrite(path: Path, image: np.ndarray) -> None:
    """Encode and write one image; a file cut short by a failed write is removed."""
    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(path.suffix, data)
    if not ok:
        raise OSError(f"cannot encode {path}")
    try:
        path.write_bytes(encoded.tobytes())
    except OSError:
        path.unlink(missing_ok=True)
        raise


def _score(pairs: Iterator[tuple[dict, torch.Tensor]], dataset_name: str, settings: EvalSettings,
           out_dir: Path | None) -> tuple[dict, list[dict]]:
    """Run the protocol's metrics over (item, prediction) pairs; write maps and a grid into out_dir as asked
    (nothing without an out_dir)."""
    metrics = settings.protocol.metrics(dataset_name)
    rows, grid_rows = [], []
    grid = settings.grid if out_dir is not None else 0
    writer = _FileWriter() if settings.save_maps and out_dir is not None else None
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
    return _score(pairs, dataset_name, settings, out_dir)


def _entry(summary: dict, rows: list[dict], label: str, source: str, dataset_expr: str, out_dir: Path,
           settings: EvalSettings, upsampling: str) -> dict:
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
    entry = _entry(summary, rows, label, checkpoint, dataset_expr, out_dir, settings, settings.protocol.upsampling)
    entry["corrupt_left_out"] = dataset.corrupt
    return entry


class SavedMapDataset(Dataset):
    """Test items of a data set with another method's saved map ("pred", P(in-focus)) found by file stem."""

    def __init__(self, dataset: Dataset, pred_dir: str | Path, polarity: MaskPolarity) -> None:
        if polarity not in STATED_POLARITIES:
            choices = ", ".join(p.label for p in STATED_POLARITIES)
            raise ValueError(f"--pred-polarity must be one of {choices}, got {polarity.label!r}")
        self.dataset, self.pred_dir, self.polarity = dataset, Path(pred_dir), polarity
        if not self.pred_dir.is_dir():
            raise FileNotFoundError(f"{self.pred_dir}: no such folder of prediction maps")
        by_stem: dict[str, list[Path]] = {}
        for path in sorted(self.pred_dir.iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(path.name):
                by_stem.setdefault(path.stem, []).append(path)
        duplicates = sorted(p.name for paths in by_stem.values() if len(paths) > 1 for p in paths)
        if duplicates:
            raise ValueError(f"{self.pred_dir}: several maps share a stem: {', '.join(duplicates[:10])}")
        names = _item_names(dataset)
        missing = [n for n in names if Path(n).stem not in by_stem]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise FileNotFoundError(f"{self.pred_dir}: no map for {len(missing)} of {len(names)} images "
                                    f"(expected <image stem>.png): {shown}")
        self.maps = {Path(n).stem: by_stem[Path(n).stem][0] for n in names}

    def size_mismatch(self) -> list[str]:
        """'map.png 160x120, GT 320x240' for every map whose size (file header) differs from its GT mask's."""
        sizes = [(path, image_size(path), pair.mask_size) for pair in getattr(self.dataset, "pairs", [])
                 for path in (self.maps[Path(pair.name).stem],)]
        return [f"{path.name} {_wxh(size)}, GT {_wxh(gt)}" for path, size, gt in sizes if size != gt]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        item["pred"] = read_map(self.maps[Path(item["name"]).stem], self.polarity)
        return item


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"


def polarity_hint(rows: list[dict], pred_dir: str | Path, polarity: MaskPolarity,
                  constant: set[str] = frozenset()) -> str | None:
    """A warning when most scored maps have an MAE above 0.5 (worse than a constant grey map): they are
    likely stored in the other polarity than `polarity`; else None. The maps named in `constant` (one value
    everywhere, such as the all-in-focus baseline) are left out: their MAE says which class the set holds
    more of, not which polarity they are stored in."""
    maes = [row["mae"] for row in rows if row.get("mae") is not None and row.get("name") not in constant]
    inverted = sum(mae > INVERTED_MAE for mae in maes)
    if not maes or inverted <= len(maes) / 2:
        return None
    other = next(p for p in STATED_POLARITIES if p is not polarity)
    return (f"{pred_dir}: MAE above {INVERTED_MAE} on {inverted} of {len(maes)} maps (a constant grey map scores "
            f"{INVERTED_MAE}): the maps look inverted. If white means {other.label.split('=')[1]} in them, pass "
            f"--pred-polarity {other.label}")


def _item_names(dataset: Dataset) -> list[str]:
    """Image file names of a test set, from its pairing when available (no decoding)."""
    pairs = getattr(dataset, "pairs", None)
    if pairs is not None:
        return [p.name for p in pairs]
    return [dataset[i]["name"] for i in range(len(dataset))]


def read_map(path: Path, polarity: MaskPolarity = MaskPolarity.WHITE_IN_FOCUS) -> torch.Tensor:
    """P(in-focus) float[H, W] from a saved grey map stored in `polarity` (8- or 16-bit; colour maps are
    read as luma)."""
    try:
        with Image.open(path) as img:
            if img.mode.startswith("I"):
                grey = np.asarray(img, dtype=np.float32) / 65535.0
            else:
                grey = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the prediction map ({exc})") from None
    prob = torch.from_numpy(np.ascontiguousarray(grey))
    return polarity.to_in_focus(prob)


def evaluate_saved_maps(pred_dir: str | Path, polarity: MaskPolarity, dataset_expr: str, settings: EvalSettings,
                        out: Path, label: str | None = None) -> dict:
    """Evaluate another method's saved maps on one test set; returns its results.json entry."""
    dataset = SavedMapDataset(build_test_set(dataset_expr, settings), pred_dir, polarity)
    label = label or printable(Path(pred_dir).resolve().name)
    name = set_label(dataset_expr)
    out_dir = out / label / name
    resize = settings.protocol.name == "standard"
    warnings = []
    mismatch = dataset.size_mismatch()
    if mismatch and not resize and len(mismatch) == len(dataset):
        raise ValueError(f"{pred_dir}: every map's size differs from its GT mask ({format_names(mismatch, 3)}): the "
                         "maps were saved at another size. Save them at the GT size, or use --protocol standard, "
                         "which resizes them")
    if mismatch:
        done = "resized to the GT size (bilinear)" if resize else "the official protocol leaves them out"
        warnings.append(f"{pred_dir}: {len(mismatch)} of {len(dataset)} maps differ in size from their GT mask, "
                        f"the maps' size is wrong ({format_names(mismatch, 3)}); {done}")

    constant: set[str] = set()

    def pairs() -> Iterator[tuple[dict, torch.Tensor]]:
        for batch in progress(eval_loader(dataset, settings), desc=f"{label} on {name}", unit="batch"):
            for i in range(len(batch["name"])):
                item = {key: value[i] for key, value in batch.items() if key != "image"}
                item["image"] = batch["image"][i]
                pred = item["pred"].to(settings.device)
                if torch.equal(pred.amin(), pred.amax()):
                    constant.add(item["name"])
                gt_size = tuple(item["mask"].shape[-2:])
                if resize and tuple(pred.shape) != gt_size:
                    pred = settings.protocol.upsample(pred[None, None], gt_size)
                yield item, pred

    summary, rows = _score(pairs(), name, settings, out_dir)
    hint = polarity_hint(rows, pred_dir, polarity, constant)
    entry = _entry(summary, rows, label, str(pred_dir), dataset_expr, out_dir, settings, "none (saved maps)")
    entry["pred_polarity"] = polarity.label
    entry["corrupt_left_out"] = dataset.dataset.corrupt
    entry["warnings"] = warnings + ([hint] if hint else [])
    return entry


@dataclass
class PhotoReport:
    """What predict_photos did: the maps and overlays written, the photos written under a changed name,
    the photos that could not be read and the files skipped (each with the reason)."""
    written: list[Path]
    renamed: list[str]
    unreadable: list[str]
    skipped: list[str]
    write_error: str | None = None


def photo_output_stems(paths: list[Path]) -> list[str]:
    """One output stem per photo, distinct ignoring case: the file stem; for photos whose stems clash, their
    path below the clashing photos' common folder joined with '-' (and '-<extension>' where that still
    clashes); a stem longer than MAX_STEM_BYTES is cut and ends in a hash of the whole. Raises DatasetError
    naming photos no rule tells apart."""
    stems = [p.stem for p in paths]
    groups: dict[str, list[int]] = {}
    for i, stem in enumerate(stems):
        groups.setdefault(stem.casefold(), []).append(i)
    for members in (m for m in groups.values() if len(m) > 1):
        absolute = [paths[i].absolute() for i in members]
        common = Path(os.path.commonpath(absolute))
        names = ["-".join(p.relative_to(common).with_suffix("").parts) for p in absolute]
        counts = Counter(n.casefold() for n in names)
        for i, path, name in zip(members, absolute, names):
            stems[i] = f"{name}-{path.suffix[1:]}" if counts[name.casefold()] > 1 else name
    stems = [_short_stem(stem) for stem in stems]
    counts = Counter(s.casefold() for s in stems)
    clashes = [str(p) for p, s in zip(paths, stems) if counts[s.casefold()] > 1]
    if clashes:
        raise DatasetError(f"--images: no distinct output names for {', '.join(clashes)}; rename one of them")
    return stems


def _short_stem(stem: str) -> str:
    """`stem`, or when it passes MAX_STEM_BYTES as a file name (os.fsencode: UTF-8, with the bytes of a name that is
    not UTF-8 kept as they are) its start and a hash of the whole stem."""
    encoded = os.fsencode(stem)
    if len(encoded) <= MAX_STEM_BYTES:
        return stem
    digest = hashlib.sha1(encoded).hexdigest()[:12]
    return f"{encoded[:MAX_STEM_BYTES - 13].decode(errors='ignore')}-{digest}"


def _readable_batches(paths: list[Path], size: int, unreadable: list[str]) -> Iterator[list[tuple[int, Image.Image]]]:
    """(index, upright RGB picture) of the photos, `size` at a time; the reason a photo cannot be read goes to
    `unreadable`."""
    batch = []
    for index, path in enumerate(paths):
        try:
            batch.append((index, load_rgb(path)))
        except DatasetError as exc:
            unreadable.append(str(exc))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_photos(model: torch.nn.Module, paths: list[str], settings: EvalSettings, out: Path) -> PhotoReport:
    """Maps (8-bit, white = in-focus) and blur overlays for photos without GT, each under a distinct name
    (photo_output_stems), through models.predict_batch (the map resized to the photo size bilinearly) in batches of
    the settings' batch size. A photo that cannot be read is reported and the others are written."""
    maps_dir, overlay_dir = out / "maps", out / "overlays"
    photos = PhotoDataset(paths, settings.img_size, exclude=[maps_dir, overlay_dir])
    stems = photo_output_stems(photos.paths)
    maps_dir.mkdir(parents=True, exist_ok=True)
    overlay_dir.mkdir(parents=True, exist_ok=True)
    renamed = [f"{path} -> {stem}.png" for path, stem in zip(photos.paths, stems) if stem != path.stem]
    report = PhotoReport(written=[], renamed=renamed, unreadable=[], skipped=photos.skipped)
    writer = _FileWriter()
    bar = progress(total=len(photos), desc="photos", unit="img")
    done = 0
    try:
        for batch in _readable_batches(photos.paths, settings.batch_size, report.unreadable):
            pictures = [picture for _, picture in batch]
            probs = predict_batch(model, pictures, settings.img_size, settings.amp)
            for (index, picture), prob in zip(batch, probs):
                grey = to_8bit(torch.from_numpy(prob))
                overlay = np.concatenate([blur_overlay(np.asarray(picture), grey / 255.0),
                                          np.repeat(grey[..., None], 3, axis=2)], axis=1)
                for path, image in ((maps_dir / f"{stems[index]}.png", grey),
                                    (overlay_dir / f"{stems[index]}.jpg", overlay)):
                    writer.write(path, image)
            bar.update(batch[-1][0] + 1 - done)  # unreadable photos before this batch included
            done = batch[-1][0] + 1
    finally:
        writer.close()
        bar.close()
    report.written = writer.written
    report.write_error = writer.error
    return report
