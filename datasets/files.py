"""Finding a data set's files: folder listings by stem, split lists, and the pairing of images with masks
(checked in full by decoding every pair)."""
from __future__ import annotations

import errno
import os
import re
import stat
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .decoding import DECODE_ERRORS, ColourMaskError, decode_mask_values, image_size
from .errors import DatasetError, format_names

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MIN_IMAGE_SIDE = 2  # a 1-pixel side leaves the E-measure's alignment term undefined (it blows up to ~1e15)
HOMOGENEOUS_DIR = "homogeneous"  # beside a set's mask folder: white = the front surface is nearly textureless
DECODE_THREADS = min(8, os.cpu_count() or 1)


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers numerically ('img2' < 'img10')."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def stem_key(name: str) -> str:
    """Pairing key of a file name: its stem, case-folded."""
    return Path(name).stem.lower()


@dataclass
class FolderListing:
    """Image files of one folder keyed by stem, plus what could not be used and the hidden files ignored;
    `unreadable` names, with the reason, the entries that are no file to read (symlink loops, FIFOs, ...)."""
    files: dict[str, Path]
    duplicates: list[str]
    odd_files: list[str]
    hidden: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def is_hidden(name: str) -> bool:
    """Dot files, among them the `._name` resource forks macOS writes beside every file on foreign disks."""
    return name.startswith(".")


def not_a_file(path: Path) -> str | None:
    """Why `path` cannot be read as a file ('a symlink loop', 'a broken symlink', 'a FIFO, not a file', ...),
    or None for a regular file or a folder. Opening a FIFO would wait for a writer forever."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        return "a broken symlink" if path.is_symlink() else exc.strerror or str(exc)
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return "a FIFO, not a file" if stat.S_ISFIFO(mode) else "a socket or a device, not a file"


def list_folder(folder: Path) -> FolderListing:
    """Index the image files of `folder` by stem; other files, repeated stems and entries that are no file to
    read (not_a_file) are reported, hidden files (is_hidden) are set aside."""
    by_stem: dict[str, list[Path]] = {}
    odd: list[str] = []
    hidden: list[str] = []
    unreadable: list[str] = []
    for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if path.is_dir():
            continue
        if is_hidden(path.name):
            hidden.append(path.name)
            continue
        reason = not_a_file(path)
        if reason is not None:
            unreadable.append(f"{path.name} ({reason})")
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            odd.append(path.name)
            continue
        by_stem.setdefault(stem_key(path.name), []).append(path)
    duplicates = [p.name for paths in by_stem.values() if len(paths) > 1 for p in paths]
    files = {stem: paths[0] for stem, paths in by_stem.items() if len(paths) == 1}
    return FolderListing(files, duplicates, odd, hidden, unreadable)


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
    """Result of pairing an image folder with a mask folder by file stem; `decode_all` adds what decoding
    every pair in full finds."""
    pairs: list[Pair] = field(default_factory=list)
    images_without_mask: list[str] = field(default_factory=list)
    masks_without_image: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    odd_files: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)
    too_small: list[str] = field(default_factory=list)
    colour_masks: dict[str, str] = field(default_factory=dict)
    corrupt: dict[str, str] = field(default_factory=dict)
    one_class_masks: dict[str, str] = field(default_factory=dict)
    mask_ranges: Counter = field(default_factory=Counter)
    mask_modes: Counter = field(default_factory=Counter)

    @property
    def size_mismatch(self) -> list[Pair]:
        return [p for p in self.pairs if p.image_size != p.mask_size]

    @property
    def every_mask_one_class(self) -> bool:
        """True when there are pairs and none of their masks holds both classes."""
        return bool(self.pairs) and len(self.one_class_masks) == len(self.pairs)

    def one_class_summary(self) -> str:
        """'all black: 3, all white: 1' over the one-class masks."""
        return ", ".join(f"{which}: {count}" for which, count in sorted(Counter(self.one_class_masks.values()).items()))

    def decode_all(self) -> None:
        """Decode every pair in full on a thread pool (Pillow releases the GIL while decoding). Pairs with a
        file that fails move from `pairs` to `corrupt`; masks of one class, value ranges and modes are noted."""
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            decoded = list(pool.map(decode_pair, self.pairs))
        self.pairs = []
        for result in decoded:
            if result.colour_mask:
                self.colour_masks[folder_and_name(result.pair.mask)] = result.colour_mask
                continue
            if result.failures:
                self.corrupt.update(result.failures)
                continue
            self.pairs.append(result.pair)
            self.mask_ranges[result.mask_range] += 1
            self.mask_modes[result.mask_mode] += 1
            if result.single_class is not None:
                self.one_class_masks[folder_and_name(result.pair.mask)] = result.single_class

    def problems(self) -> list[str]:
        """Human-readable list of everything that keeps files out of the set."""
        out = []
        if self.images_without_mask:
            out.append(f"images without a mask: {format_names(self.images_without_mask)}")
        if self.masks_without_image:
            out.append(f"masks without an image: {format_names(self.masks_without_image)}")
        if self.unreadable:
            out.append(f"unreadable files: {format_names(self.unreadable)}")
        if self.too_small:
            out.append(f"images smaller than {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels: {format_names(self.too_small)}")
        if self.duplicates:
            out.append(f"several files with the same stem: {format_names(self.duplicates)}")
        if self.corrupt:
            failures = [f"{name} ({reason})" for name, reason in self.corrupt.items()]
            out.append(f"files that do not decode: {format_names(failures)}")
        return out


@dataclass(frozen=True)
class DecodedPair:
    """What decoding a pair in full found: the files that fail ("folder/name" -> reason), else the mask's
    value range, mode and, when it holds one class only, which ("all white" or "all black"); `colour_mask`
    says why a mask is not grey."""
    pair: Pair
    failures: dict[str, str]
    mask_range: str = ""
    mask_mode: str = ""
    single_class: str | None = None
    colour_mask: str = ""


def folder_and_name(path: Path) -> str:
    """'gt/3.png': a file named with its folder, as the reports list them."""
    return f"{path.parent.name}/{path.name}"


def decode_pair(pair: Pair) -> DecodedPair:
    """Decode the image and the mask of `pair` to the last byte (headers alone miss truncated files)."""
    failures = {}
    try:
        with Image.open(pair.image) as img:
            img.load()
    except DECODE_ERRORS as exc:
        failures[folder_and_name(pair.image)] = str(exc)
    try:
        mask = decode_mask_values(pair.mask)
    except ColourMaskError as exc:
        return DecodedPair(pair, failures, colour_mask=str(exc))
    except DECODE_ERRORS as exc:
        failures[folder_and_name(pair.mask)] = str(exc)
    if failures:
        return DecodedPair(pair, failures)
    white = mask.is_white()
    single_class = "all white" if white.all() else "all black" if not white.any() else None
    return DecodedPair(pair, failures, mask.range_label, mask.mode, single_class)


def pair_folders(image_dir: Path, mask_dir: Path, keys: list[str] | None = None) -> Pairing:
    """Pair images and masks by stem; `keys` restricts (and orders) the stems taken, else all, sorted."""
    images, masks = list_folder(image_dir), list_folder(mask_dir)
    result = Pairing(duplicates=[f"{image_dir.name}/{n}" for n in images.duplicates]
                     + [f"{mask_dir.name}/{n}" for n in masks.duplicates],
                     odd_files=[f"{image_dir.name}/{n}" for n in images.odd_files]
                     + [f"{mask_dir.name}/{n}" for n in masks.odd_files],
                     hidden=[f"{image_dir.name}/{n}" for n in images.hidden]
                     + [f"{mask_dir.name}/{n}" for n in masks.hidden],
                     unreadable=[f"{image_dir.name}/{n}" for n in images.unreadable]
                     + [f"{mask_dir.name}/{n}" for n in masks.unreadable])
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
        if min(sizes[0]) < MIN_IMAGE_SIDE:
            result.too_small.append(f"{image.name} ({sizes[0][1]}x{sizes[0][0]})")
            continue
        result.pairs.append(Pair(image.name, image, mask, *sizes))
    return result


def _readable(path: Path) -> bool:
    try:
        image_size(path)
    except DatasetError:
        return False
    return True
