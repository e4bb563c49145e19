"""Scoring saved maps (test.py --pred-dir, --baseline): another method's maps read by file stem, in a stated
polarity, scored under the same protocol as a model, with a hint when they look inverted."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.decoding import image_size
from datasets.errors import format_names
from datasets.files import IMAGE_EXTENSIONS, is_hidden
from datasets.polarity import STATED_POLARITIES, MaskPolarity
from engine.evaluate import EvalSettings, build_test_set, eval_loader, results_entry, score_pairs, set_label
from utils.log import printable, progress

INVERTED_MAE = 0.5  # a constant grey map scores 0.5: most maps above it are likely of the other polarity


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

    summary, rows = score_pairs(pairs(), name, settings, out_dir)
    hint = polarity_hint(rows, pred_dir, polarity, constant)
    entry = results_entry(summary, rows, label, str(pred_dir), dataset_expr, out_dir, settings, "none (saved maps)")
    entry["pred_polarity"] = polarity.label
    entry["corrupt_left_out"] = dataset.dataset.corrupt
    entry["warnings"] = warnings + ([hint] if hint else [])
    return entry
