"""Maps for photos without GT (test.py --images): 8-bit maps and blur overlays, each under a distinct name."""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from datasets import DatasetError, PhotoDataset
from datasets.decoding import load_rgb
from engine.evaluate import EvalSettings, to_8bit
from models.inference import predict_batch
from utils.image_writer import ImageWriter
from utils.log import progress
from utils.plots import blur_overlay

MAX_STEM_BYTES = 200  # output names stay well under the 255-byte limit of file names


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
    writer = ImageWriter()
    bar = progress(total=len(photos), desc="photos", unit="img")
    done = 0
    try:
        for batch in _readable_batches(photos.paths, settings.batch_size, report.unreadable):
            pictures = [picture for _, picture in batch]
            probs = predict_batch(model, pictures, settings.img_size, settings.amp, settings.flip_average)
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
