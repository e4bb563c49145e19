"""Decoding images and masks: upright 8-bit RGB (EXIF orientation), sizes from file headers, a mask's grey values
and range, region masks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DatasetError

COLOUR_MASK_TOLERANCE = 48  # grey levels by which a grey mask's channels may differ (JPEG chroma noise)
EXIF_ORIENTATION_TAG = 0x0112
EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                  4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                  6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
SIDEWAYS_ORIENTATIONS = (5, 6, 7, 8)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
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


def decode_mask_values(path: Path) -> MaskValues:
    """MaskValues of a mask file; ColourMaskError for a colour mask, one of DECODE_ERRORS for a file that does not
    decode."""
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
        return decode_mask_values(path)
    except DECODE_ERRORS as exc:
        raise DatasetError(f"{path}: cannot decode mask ({exc})") from None


def load_region_mask(path: Path) -> np.ndarray:
    """A region mask (e.g. homogeneous/*.png) as bool: any non-zero grey value is inside the region."""
    try:
        with Image.open(path) as img:
            return np.asarray(img if img.mode.startswith("I") else img.convert("L")) > 0
    except DECODE_ERRORS as exc:
        raise DatasetError(f"{path}: cannot decode region mask ({exc})") from None
