"""Torch data sets over paired files: training/test pairs, photos without masks, synthetic depth."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from utils.log import progress

from .decoding import load_region_mask, load_rgb
from .errors import DatasetError, format_names
from .files import IMAGE_EXTENSIONS, Pair, list_folder, natural_key, not_a_file
from .polarity import MaskPolarity, load_mask
from .transforms import (crop_pair, draw_crop, draw_flip, flip_pair, jitter, mask_tensor, normalise, resize_image,
                         resize_mask)


class PairDataset(Dataset):
    """Image/mask pairs of one data set; masks stored in `polarity` are converted to 1 = in-focus.

    train: {"image": float[3,S,S], "mask": float[1,S,S], "name"}; test: the mask at its original size
    and "image_size" (H, W) of the original image, plus "homogeneous" (bool[H,W], the pixels whose surface
    is nearly textureless) when `homogeneous` lists a region mask per pair. With `augment`, a sample is
    flipped at full size, then resized, then jittered (the authors' order); `crop_scale` < 1 adds a random
    crop of at least that share of the image area after the flip (not the authors'). `cache` decodes and
    resizes everything once, up front (both orientations when augmenting; not with crops). `corrupt` names the files left out
    because they do not decode.
    """

    def __init__(self, name: str, pairs: list[Pair], polarity: MaskPolarity, train: bool,
                 img_size: int = 320, augment: bool = False, cache: bool = False,
                 corrupt: list[str] | None = None, homogeneous: list[Path] | None = None,
                 crop_scale: float = 1.0) -> None:
        if augment and not train:
            raise ValueError(f"{name}: test items are never augmented (augment=True with split 'test')")
        if not 0 < crop_scale <= 1:
            raise ValueError(f"{name}: crop_scale must be in (0, 1], got {crop_scale}")
        if cache and augment and crop_scale < 1:
            raise ValueError(f"{name}: random crops need the full-size images; cache=True stores resized ones")
        self.name = name
        self.pairs = pairs
        self.polarity = polarity
        self.train = train
        self.img_size = img_size
        self.augment = augment
        self.crop_scale = crop_scale if augment else 1.0
        self.corrupt = corrupt or []
        self.homogeneous = homogeneous
        self.size_mismatch = [p.name for p in pairs if p.image_size != p.mask_size]
        self._cache: list[tuple[tuple[np.ndarray, np.ndarray], ...]] | None = None
        if cache:
            self._cache = _decode_all(self._decode_orientations, len(pairs), f"caching {name}")

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        pair = self.pairs[index]
        return load_rgb(pair.image), load_mask(pair.mask, self.polarity)

    def _resize(self, image: Image.Image, mask: np.ndarray, flip: bool) -> tuple[np.ndarray, np.ndarray]:
        """Flipped at full size when asked, then the image resized and the mask resized for training (kept at
        its original size for testing)."""
        if flip:
            image, mask = flip_pair(image, mask)
        if self.crop_scale < 1:
            image, mask = crop_pair(image, mask, draw_crop(image.width, image.height, self.crop_scale))
        if self.train:
            mask = resize_mask(mask, self.img_size)
        return np.asarray(resize_image(image, self.img_size)), mask

    def _decode_orientations(self, index: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """(as stored, flipped) when augmenting, else (as stored,)."""
        image, mask = self._load(index)
        return tuple(self._resize(image, mask, flip) for flip in ((False, True) if self.augment else (False,)))

    def __getitem__(self, index: int) -> dict:
        flip = self.augment and draw_flip()
        if self._cache is not None:
            image, mask = self._cache[index][flip]
        else:
            image, mask = self._resize(*self._load(index), flip)
        pil = Image.fromarray(image)
        if self.augment:
            pil = jitter(pil)
        pair = self.pairs[index]
        item = {"image": normalise(pil), "mask": mask_tensor(mask), "name": pair.name}
        if not self.train:
            item["image_size"] = pair.image_size
        if self.homogeneous is not None:
            region = load_region_mask(self.homogeneous[index])
            if region.shape != mask.shape:
                raise DatasetError(f"{self.homogeneous[index]}: region mask {region.shape[1]}x{region.shape[0]} but "
                                   f"the GT mask is {mask.shape[1]}x{mask.shape[0]} (WxH)")
            item["homogeneous"] = torch.from_numpy(region)
        return item


class CombinedDataset(ConcatDataset):
    """Several training sets joined with '+', keeping a name and the union of size mismatches."""

    def __init__(self, name: str, parts: list[Dataset]) -> None:
        super().__init__(parts)
        self.name = name
        self.size_mismatch = [n for part in parts for n in getattr(part, "size_mismatch", [])]


class PhotoDataset(Dataset):
    """Photos without masks (files, folders, or a mix): {"image", "image_size", "name", "path"}.

    A folder gives every image file directly inside it, files sharing a stem included; `skipped` names,
    with the reason, its other files, hidden files, any photo given more than once and what lies in the
    `exclude` folders (a run's own output folders, e.g. with `--images photos/* --out photos`).
    """

    def __init__(self, paths: str | Path | list[str | Path], img_size: int = 320,
                 exclude: list[Path] | tuple[Path, ...] = ()) -> None:
        self.img_size = img_size
        self.paths, self.skipped = _collect_photos([paths] if isinstance(paths, (str, Path)) else paths,
                                                   [Path(e).resolve() for e in exclude])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        image = load_rgb(path)
        return {"image": normalise(resize_image(image, self.img_size)),
                "image_size": (image.height, image.width), "name": path.name, "path": str(path)}


def _collect_photos(paths: list[str | Path], exclude: list[Path]) -> tuple[list[Path], list[str]]:
    """(the photos, in order, each once; the skipped files, each with the reason)."""
    found: list[Path] = []
    skipped: list[str] = []
    for entry in map(Path, paths):
        if any(_resolved(entry) == folder or folder in _resolved(entry).parents for folder in exclude):
            skipped.append(f"{entry} (this run's output folder)")
        elif entry.is_dir():
            listing = list_folder(entry)
            images = [*listing.files.values(), *(entry / name for name in listing.duplicates)]
            found.extend(sorted(images, key=lambda p: natural_key(p.name)))
            kinds = "/".join(IMAGE_EXTENSIONS)
            skipped.extend(f"{entry / name} (not a {kinds} file)" for name in listing.odd_files)
            skipped.extend(f"{entry / name} (hidden file)" for name in listing.hidden)
            skipped.extend(f"{entry / name}" for name in listing.unreadable)
        elif entry.is_file():
            if entry.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DatasetError(f"{entry}: not an image file (expected {', '.join(IMAGE_EXTENSIONS)})")
            found.append(entry)
        elif entry.is_symlink() or entry.exists():
            skipped.append(f"{entry} ({not_a_file(entry)})")
        else:
            raise DatasetError(f"{entry}: no such file or folder")
    if not found:
        raise DatasetError(f"no images found in {', '.join(map(str, paths))}"
                           + (f" (skipped: {format_names(skipped)})" if skipped else ""))
    unique: dict[Path, Path] = {}
    for path in found:
        if path.resolve() in unique:
            skipped.append(f"{path} (given twice)")
        else:
            unique[path.resolve()] = path
    return list(unique.values()), list(dict.fromkeys(skipped))


def _resolved(path: Path) -> Path:
    """The absolute path with symlinks resolved as far as they go (a symlink loop stays as it is)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


class DepthDataset(Dataset):
    """Synthetic images with their depth: {"image": float[3,S,S], "depth": float[1,S,S], "name"}.

    `depth` is inverse depth in 1/m (the quantity MiDaS predicts), decoded from the 16-bit PNGs in
    depth/ that store depth in millimetres (see datasets.synthetic). With `augment`: flip (before resizing,
    as for the pairs) and jitter.
    """

    def __init__(self, root: str | Path, img_size: int = 320, augment: bool = True) -> None:
        self.root = Path(root)
        self.img_size = img_size
        self.augment = augment
        image_dir, depth_dir = self.root / "image", self.root / "depth"
        for folder in (image_dir, depth_dir):
            if not folder.is_dir():
                raise DatasetError(f"{self.root}: missing folder {folder.name}/ (expected a set written "
                                   "by tools/make_synthetic.py)")
        images, depths = list_folder(image_dir).files, list_folder(depth_dir).files
        unmatched = sorted(set(images) ^ set(depths))
        if unmatched:
            raise DatasetError(f"{self.root}: image/ and depth/ do not match for stems {unmatched}")
        keys = sorted(images, key=natural_key)
        self.items = [(images[k], depths[k]) for k in keys]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        image_path, depth_path = self.items[index]
        image = load_rgb(image_path)
        depth_mm = np.asarray(Image.open(depth_path), dtype=np.float32)
        if depth_mm.min() <= 0:
            raise DatasetError(f"{depth_path}: depth must be positive millimetres")
        if self.augment and draw_flip():
            image, depth_mm = flip_pair(image, depth_mm)
        image = resize_image(image, self.img_size)
        depth = np.asarray(Image.fromarray(1000.0 / depth_mm).resize(
            (self.img_size, self.img_size), Image.Resampling.NEAREST))
        if self.augment:
            image = jitter(image)
        return {"image": normalise(image), "depth": torch.from_numpy(depth.astype(np.float32))[None],
                "name": image_path.name}


def collate_test(batch: list[dict]) -> dict:
    """Stack images; keep masks (different sizes), image sizes, names and other fields as lists."""
    out = {"image": torch.stack([item["image"] for item in batch])}
    for key in batch[0]:
        if key != "image":
            out[key] = [item[key] for item in batch]
    return out


def _decode_all(decode, count: int, label: str) -> list:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(progress(pool.map(decode, range(count)), total=count, desc=label))


def read_meta(root: Path) -> dict:
    """meta.json of a synthetic set ({} when absent)."""
    meta = root / "meta.json"
    if not meta.is_file():
        return {}
    try:
        return json.loads(meta.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{meta}: not valid JSON ({exc})") from None
