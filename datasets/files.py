"""File discovery, stem pairing, split lists and image/mask decoding shared by every data set."""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    from .polarity import MaskPolarity

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MAX_LISTED = 200
HOMOGENEOUS_DIR = "homogeneous"  # beside a set's mask folder: white = the front surface is nearly textureless


class DatasetError(ValueError):
    """A data set cannot be built as asked (missing folders or files, bad pairs, bad split list)."""


class DatasetWarning(UserWarning):
    """Something in a test set was left out or flagged; the message lists the files and the rule."""


def format_names(names: list[str], limit: int = MAX_LISTED) -> str:
    """Comma-separated names, cut after `limit` with a count of the rest."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... and {len(names) - limit} more"


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers numerically ('img2' < 'img10')."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def stem_key(name: str) -> str:
    """Pairing key of a file name: its stem, case-folded."""
    return Path(name).stem.lower()


@dataclass
class FolderListing:
    """Image files of one folder keyed by stem, plus what could not be used."""
    files: dict[str, Path]
    duplicates: list[str]
    odd_files: list[str]


def list_folder(folder: Path) -> FolderListing:
    """Index the image files of `folder` by stem; other files and repeated stems are reported."""
    by_stem: dict[str, list[Path]] = {}
    odd: list[str] = []
    for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if path.is_dir():
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            odd.append(path.name)
            continue
        by_stem.setdefault(stem_key(path.name), []).append(path)
    duplicates = [p.name for paths in by_stem.values() if len(paths) > 1 for p in paths]
    files = {stem: paths[0] for stem, paths in by_stem.items() if len(paths) == 1}
    return FolderListing(files, duplicates, odd)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header; raises DatasetError naming an unreadable file."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None
    return height, width


def load_rgb(path: Path) -> Image.Image:
    """Decode an image as 8-bit RGB."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path}: cannot decode image ({exc})") from None


def load_mask(path: Path, polarity: MaskPolarity) -> np.ndarray:
    """Decode a mask stored in `polarity` to uint8 {0,1} with 1 = in-focus: grey (RGB/RGBA via luma),
    binarised at 0.5."""
    try:
        with Image.open(path) as img:
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
                white = np.asarray(img, dtype=np.float64) >= 32767.5
            elif img.mode == "F":
                white = np.asarray(img, dtype=np.float64) >= 0.5
            else:
                white = np.asarray(img.convert("L")) >= 128
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path}: cannot decode mask ({exc})") from None
    return polarity.to_in_focus(white).astype(np.uint8)


def read_split_list(path: Path) -> list[str]:
    """Image names of a split list: one per line, `<k>.bmp--<name>` (BTBNet format) or `<name>`."""
    if not path.is_file():
        raise DatasetError(f"split list {path} does not exist")
    names = []
    for line in path.read_text().splitlines():
        name = line.split("--", 1)[1] if "--" in line else line
        if name.strip():
            names.append(name.strip())
    if not names:
        raise DatasetError(f"split list {path} names no files")
    return names


@dataclass(frozen=True)
class Pair:
    """One image with its mask; sizes are (H, W) read from the file headers."""
    name: str
    image: Path
    mask: Path
    image_size: tuple[int, int]
    mask_size: tuple[int, int]


@dataclass
class Pairing:
    """Result of pairing an image folder with a mask folder by file stem."""
    pairs: list[Pair] = field(default_factory=list)
    images_without_mask: list[str] = field(default_factory=list)
    masks_without_image: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    odd_files: list[str] = field(default_factory=list)

    @property
    def size_mismatch(self) -> list[Pair]:
        return [p for p in self.pairs if p.image_size != p.mask_size]

    def problems(self) -> list[str]:
        """Human-readable list of everything that keeps files out of the set."""
        out = []
        if self.images_without_mask:
            out.append(f"images without a mask: {format_names(self.images_without_mask)}")
        if self.masks_without_image:
            out.append(f"masks without an image: {format_names(self.masks_without_image)}")
        if self.unreadable:
            out.append(f"unreadable files: {format_names(self.unreadable)}")
        if self.duplicates:
            out.append(f"several files with the same stem: {format_names(self.duplicates)}")
        return out


def pair_folders(image_dir: Path, mask_dir: Path, keys: list[str] | None = None) -> Pairing:
    """Pair images and masks by stem; `keys` restricts (and orders) the stems taken, else all, sorted."""
    images, masks = list_folder(image_dir), list_folder(mask_dir)
    result = Pairing(duplicates=[f"{image_dir.name}/{n}" for n in images.duplicates]
                     + [f"{mask_dir.name}/{n}" for n in masks.duplicates],
                     odd_files=[f"{image_dir.name}/{n}" for n in images.odd_files]
                     + [f"{mask_dir.name}/{n}" for n in masks.odd_files])
    if keys is None:
        keys = sorted(set(images.files) | set(masks.files), key=natural_key)
    for key in keys:
        image, mask = images.files.get(key), masks.files.get(key)
        if image is None and mask is None:
            continue
        if mask is None:
            result.images_without_mask.append(image.name)
            continue
        if image is None:
            result.masks_without_image.append(mask.name)
            continue
        try:
            sizes = image_size(image), image_size(mask)
        except DatasetError:
            result.unreadable.extend(p.name for p in (image, mask) if not _readable(p))
            continue
        result.pairs.append(Pair(image.name, image, mask, *sizes))
    return result


def _readable(path: Path) -> bool:
    try:
        image_size(path)
    except DatasetError:
        return False
    return True


def warn(message: str) -> None:
    """Emit a DatasetWarning attributed to the caller of the data-set API."""
    warnings.warn(message, DatasetWarning, stacklevel=3)


def load_region_mask(path: Path) -> np.ndarray:
    """A region mask (e.g. homogeneous/*.png) as bool: any non-zero grey value is inside the region."""
    try:
        with Image.open(path) as img:
            return np.asarray(img if img.mode.startswith("I") else img.convert("L")) > 0
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path}: cannot decode region mask ({exc})") from None
