"""File discovery, stem pairing, split lists and image/mask decoding shared by every data set."""
from __future__ import annotations

import errno
import os
import re
import stat
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from utils.log import printable

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MAX_LISTED = 200
MIN_IMAGE_SIDE = 2  # a 1-pixel side leaves the E-measure's alignment term undefined (it blows up to ~1e15)
COLOUR_MASK_TOLERANCE = 48  # grey levels by which a grey mask's channels may differ (JPEG chroma noise)
HOMOGENEOUS_DIR = "homogeneous"  # beside a set's mask folder: white = the front surface is nearly textureless


class DatasetError(ValueError):
    """A data set cannot be built as asked (missing folders or files, bad pairs, bad split list)."""


class UnusableFilesError(DatasetError):
    """The set's files are there but some cannot be used as they are (e.g. colour masks): an error even where
    a missing set is only reported (test.py --skip-missing)."""


class DatasetWarning(UserWarning):
    """Something in a test set was left out or flagged; the message lists the files and the rule."""


_standard_format = warnings.formatwarning


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    """A DatasetWarning as one line, 'warning: <message>' (it names the files itself; the place in this code that
    noticed is of no use to the reader); other warnings as Python formats them."""
    if issubclass(category, DatasetWarning):
        return f"warning: {message}\n"
    return _standard_format(message, category, filename, lineno, line)


warnings.formatwarning = _format_warning


def format_names(names: list[str], limit: int = MAX_LISTED) -> str:
    """Comma-separated names (printable, utils.log), cut after `limit` with a count of the rest."""
    shown = ", ".join(map(printable, names[:limit]))
    return shown if len(names) <= limit else f"{shown}, ... and {len(names) - limit} more"


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


EXIF_ORIENTATION_TAG = 0x0112
EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                  4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                  6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
SIDEWAYS_ORIENTATIONS = (5, 6, 7, 8)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
DECODE_THREADS = min(8, os.cpu_count() or 1)
MASK_RANGES = {1: "0/1", 255: "0-255", 65535: "0-65535"}


def exif_orientation(img: Image.Image) -> int:
    """EXIF orientation (1-8) of an opened file, read from its header; 1 when absent or invalid."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # an eXIf chunk after the pixels is not in the header; Pillow would decode the file to find it
    orientation = img.getexif().get(EXIF_ORIENTATION_TAG, 1)
    return orientation if orientation in EXIF_TRANSPOSE else 1


def _upright(img: Image.Image, orientation: int) -> Image.Image:
    """The picture as viewers show it: `img` turned / mirrored as its EXIF orientation says."""
    return img.transpose(EXIF_TRANSPOSE[orientation]) if orientation in EXIF_TRANSPOSE else img


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) as shown (EXIF orientation applied) from the file header; raises DatasetError naming an
    unreadable file."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            sideways = exif_orientation(img) in SIDEWAYS_ORIENTATIONS
    except DECODE_ERRORS as exc:
        raise DatasetError(f"{path}: not a readable image ({exc})") from None
    return (width, height) if sideways else (height, width)


def _to_8bit(img: Image.Image) -> Image.Image:
    """8-bit grey of a 16/32-bit grey image: its top 8 of 16 bits (values above 255 mean a 16-bit range;
    PIL's own conversion clips them, turning a 16-bit photo almost white)."""
    values = np.asarray(img, dtype=np.int64)
    if values.size and values.max() > 255:
        values = np.clip(values, 0, 65535) >> 8
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))


ORIENTATION_INFO_KEYS = ("exif", "xmp", "XML:com.adobe.xmp")  # where Pillow finds an orientation


def upright_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of an opened image, upright as its EXIF orientation says. The result carries no orientation, so
    passing it through again leaves it as it is."""
    rgb = (_to_8bit(img) if img.mode.startswith("I") else img).convert("RGB")
    upright = _upright(rgb, exif_orientation(img))
    upright.info = {key: value for key, value in upright.info.items() if key not in ORIENTATION_INFO_KEYS}
    return upright


def _decode_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return upright_rgb(img)


def load_rgb(path: Path) -> Image.Image:
    """Decode an image as 8-bit RGB, upright as its EXIF orientation says."""
    try:
        return _decode_rgb(path)
    except DECODE_ERRORS as exc:
        raise DatasetError(f"{path}: cannot decode image ({exc})") from None


@dataclass(frozen=True)
class MaskValues:
    """A mask's grey values as stored (upright), the value that stands for white, the range's name
    ('0/1', '0-255', '0-65535' or '0.0-1.0') and the file's PIL mode."""
    values: np.ndarray
    white: float
    range_label: str
    mode: str

    def is_white(self) -> np.ndarray:
        """Boolean whiteness: at or above half of the white value (the authors' round for 0-255)."""
        return self.values >= self.white / 2


class ColourMaskError(ValueError):
    """A mask whose colour channels differ: masks must be grey (black and white)."""


def _check_grey(img: Image.Image) -> None:
    """Raise ColourMaskError when a colour mask's channels differ by more than JPEG noise."""
    if img.mode not in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr"):
        return
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    if spread.size and spread.max() > COLOUR_MASK_TOLERANCE:
        raise ColourMaskError("a colour mask (its red, green and blue differ, e.g. a painted red mask): masks "
                              "must be grey, black and white; re-save it as a grey image")


def _decode_mask_values(path: Path) -> MaskValues:
    with Image.open(path) as img:
        _check_grey(img)
        orientation = exif_orientation(img)
        grey = img if img.mode.startswith("I") or img.mode == "F" else img.convert("L")
        values = np.asarray(_upright(grey, orientation))
        mode = img.mode
    if mode == "F":
        return MaskValues(values, 1.0, "0.0-1.0", mode)
    top = int(values.max()) if values.size else 0
    if top == 0:
        white = 255 if values.dtype == np.uint8 else 65535
    else:
        white = 1 if top == 1 else 255 if top <= 255 else 65535
    return MaskValues(values, white, MASK_RANGES[white], mode)


def read_mask_values(path: Path) -> MaskValues:
    """Grey values of a mask by their real range: at most 1 is a 0/1 mask, up to 255 an 8-bit one (also
    when stored in 16 bits), above 255 a 16-bit one (white 65535); an all-0 mask has its storage's range;
    float masks are 0.0-1.0."""
    try:
        return _decode_mask_values(path)
    except DECODE_ERRORS as exc:
        raise DatasetError(f"{path}: cannot decode mask ({exc})") from None


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
        mask = _decode_mask_values(pair.mask)
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


def warn(message: str) -> None:
    """Emit a DatasetWarning attributed to the caller of the data-set API."""
    warnings.warn(message, DatasetWarning, stacklevel=3)


def load_region_mask(path: Path) -> np.ndarray:
    """A region mask (e.g. homogeneous/*.png) as bool: any non-zero grey value is inside the region."""
    try:
        with Image.open(path) as img:
            return np.asarray(img if img.mode.startswith("I") else img.convert("L")) > 0
    except DECODE_ERRORS as exc:
        raise DatasetError(f"{path}: cannot decode region mask ({exc})") from None
