"""Trivial defocus maps to put a trained detector's numbers in context.

`all-in-focus` predicts 1 (sharp) everywhere. `prior` predicts, at every pixel, the share of training
masks that are in focus there (the training set's mean mask at the training resolution, resized to each
test image). Maps are written as 8-bit PNGs, white = in-focus, one per test image (file stem = image
stem), for `test.py --pred-dir DIR --pred-polarity white=in-focus`. Command line: tools/baselines.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch.utils.data import Dataset

from datasets import build_dataset
from datasets.errors import format_names
from utils.log import progress

BASELINES = ("all-in-focus", "prior")
MAP_SOFTWARE = "D-DFFNet tools/baselines.py"  # the PNG 'Software' text of every map written here


def mean_training_mask(dataset: Dataset) -> np.ndarray:
    """Per-pixel mean of the masks (1 = in-focus) of a training set built without augmentation."""
    total = None
    for item in progress(dataset, desc=f"prior of {dataset.name}"):
        total = item["mask"].double() if total is None else total + item["mask"].double()
    return (total / len(dataset))[0].numpy()


def file_folders(dataset: Dataset) -> set[Path]:
    """The resolved folders that hold a data set's files: images, masks and region masks."""
    folders = set()
    for part in getattr(dataset, "datasets", [dataset]):
        folders |= {path.parent.resolve() for pair in part.pairs for path in (pair.image, pair.mask)}
        folders |= {path.parent.resolve() for path in part.homogeneous or []}
    return folders


def check_out(out: Path, datasets: dict[str, Dataset], names: list[str], overwrite: bool) -> None:
    """Refuse (ValueError) an `out` that is a folder of the data sets read (or lies inside one of their image or
    mask folders), and, without `overwrite`, one that holds files of the `names` to write not written by this
    tool."""
    target = out.resolve()
    for flag, dataset in datasets.items():
        inside = file_folders(dataset)
        for folder in sorted(inside | {folder.parent for folder in inside}):
            if target == folder or (folder in inside and folder in target.parents):
                where = "is a folder" if target == folder else f"lies inside {folder}, a folder"
                raise ValueError(f"--out {out} {where} of {flag} {dataset.name}: the maps would go among its files "
                                 "and could replace them (a mask of the same name); choose a folder outside the "
                                 "data set")
    foreign = [name for name in names if (out / name).exists() and not _written_here(out / name)]
    if foreign and not overwrite:
        raise ValueError(f"--out {out} holds {len(foreign)} files of the names the maps take that this tool did not "
                         f"write ({format_names(foreign, 5)}); choose another --out, or pass --overwrite to replace "
                         "them")


def _written_here(path: Path) -> bool:
    """Whether `path` is a map this tool wrote (its PNG carries MAP_SOFTWARE)."""
    try:
        with Image.open(path) as img:
            return img.info.get("Software") == MAP_SOFTWARE
    except (OSError, ValueError):
        return False


def write_baseline_maps(name: str, test_set: str, out: str | Path, root: str = "data",
                        train_set: str | None = None, img_size: int = 320, overwrite: bool = False) -> Path:
    """Write the `name` baseline's maps for every image of `test_set` into out/ (check_out first); returns out."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    if name == "prior" and not train_set:
        raise ValueError("the prior baseline needs the training set (--train-set)")
    out = Path(out)
    dataset = build_dataset(test_set, "test", root=root, img_size=img_size)
    read = {"--test-set": dataset}
    if name == "prior":
        read["--train-set"] = build_dataset(train_set, "train", root=root, img_size=img_size, augment=False)
    check_out(out, read, [f"{Path(pair.name).stem}.png" for pair in dataset.pairs], overwrite)
    prior = Image.fromarray(mean_training_mask(read["--train-set"]).astype(np.float32)) if name == "prior" else None
    out.mkdir(parents=True, exist_ok=True)
    tag = PngInfo()
    tag.add_text("Software", MAP_SOFTWARE)
    for item in progress(dataset, desc=f"{name} maps"):
        height, width = item["image_size"]
        if prior is None:
            grey = np.full((height, width), 255, dtype=np.uint8)
        else:
            resized = np.asarray(prior.resize((width, height), Image.Resampling.BILINEAR))
            grey = np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)
        Image.fromarray(grey).save(out / f"{Path(item['name']).stem}.png", pnginfo=tag)
    return out
