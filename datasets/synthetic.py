"""Synthetic defocus data sets on disk: the scenes of datasets.scenes written as image/, gt/, depth/,
homogeneous/ and meta.json.

The files agree exactly: the mask (white = in-focus) is `r_px(z) < coc_threshold_px` for the
millimetre-quantised depth z of the front-most layer that covers the pixel, and depth/*.png stores that z
in millimetres (uint16, z = value / 1000 m). homogeneous/*.png is white where that front-most layer has the
nearly textureless "flat" texture (datasets.scenes.homogeneous_mask). Every image is drawn from its own
generator seeded by (seed, index): the output does not depend on the number of worker processes.

    python tools/make_synthetic.py OUT --n N --seed S --size 320 [--wide-dof 0.1] [--workers 2]
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from utils.log import progress

from .files import HOMOGENEOUS_DIR
from .polarity import MaskPolarity
from .scenes import BlurRange, generate_image, homogeneous_mask


def is_wide_dof(index: int, share: float) -> bool:
    """Exactly floor(n * share) of the first n images are wide-DOF, spread evenly."""
    return math.floor((index + 1) * share) > math.floor(index * share)


@dataclass(frozen=True)
class _Job:
    out: Path
    seed: int
    size: int
    wide_dof_share: float
    image_format: str
    coc_threshold_px: float | None


def _write_one(job: _Job, index: int) -> dict:
    rendering, meta = generate_image(job.seed, index, job.size, is_wide_dof(index, job.wide_dof_share),
                                     job.coc_threshold_px)
    name = f"{index:05d}"
    bgr = cv2.cvtColor(rendering.image, cv2.COLOR_RGB2BGR)
    image_file = job.out / "image" / f"{name}.{job.image_format}"
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if job.image_format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    depth_mm = np.round(rendering.depth_m * 1000.0).astype(np.uint16)
    homogeneous = homogeneous_mask(rendering, meta["layers"]).astype(np.uint8) * 255
    for path, data, extra in ((image_file, bgr, params),
                              (job.out / "gt" / f"{name}.png", rendering.in_focus.astype(np.uint8) * 255, []),
                              (job.out / "depth" / f"{name}.png", depth_mm, []),
                              (job.out / HOMOGENEOUS_DIR / f"{name}.png", homogeneous, [])):
        if not cv2.imwrite(str(path), data, extra):
            raise OSError(f"cannot write {path}")
    return {"name": image_file.name, **meta}


def _worker_context():
    """Processes started from a clean server, never forked from the caller: a child forked after the
    caller's OpenCV thread pool has run deadlocks (e.g. a second generate_dataset call in one process)."""
    if sys.platform.startswith("linux"):
        context = get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return get_context("spawn")


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _write_indexed(args: tuple[_Job, int]) -> dict:
    return _write_one(*args)


def generate_dataset(out: str | Path, n: int, seed: int = 0, size: int = 320,
                     wide_dof: float = 0.1, workers: int = 1, image_format: str = "png",
                     coc_threshold_px: float | None = None, overwrite: bool = False) -> Path:
    """Write n images to out/image, out/gt (white = in-focus), out/depth (uint16 mm), out/homogeneous
    (white = textureless front surface) and out/meta.json."""
    out = Path(out)
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    if not 0.0 <= wide_dof <= 1.0:
        raise ValueError(f"wide_dof is a share in [0, 1], got {wide_dof}")
    if n < 1 or size < 16:
        raise ValueError(f"need n >= 1 and size >= 16, got n={n}, size={size}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty (pass overwrite=True / --overwrite to replace)")
    for sub in ("image", "gt", "depth", HOMOGENEOUS_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for old in (out / sub).iterdir():
            old.unlink()
    job = _Job(out, seed, size, wide_dof, image_format, coc_threshold_px)
    tasks = [(job, i) for i in range(n)]
    shown = dict(total=n, desc=f"synthetic -> {out}")
    if workers > 1:
        with _worker_context().Pool(workers, initializer=_worker_init) as pool:
            records = list(progress(pool.imap(_write_indexed, tasks, chunksize=4), **shown))
    else:
        records = [_write_indexed(t) for t in progress(tasks, **shown)]
    meta = {"generator": "datasets.synthetic", "seed": seed, "size": size, "count": n,
            "wide_dof_share": wide_dof,
            "coc_threshold_px": BlurRange().threshold_px(size) if coc_threshold_px is None else coc_threshold_px,
            "mask_polarity": MaskPolarity.WHITE_IN_FOCUS.label,
            "depth_encoding": "uint16 PNG, depth in millimetres: z_m = value / 1000",
            "homogeneous_encoding": "8-bit PNG, white where the front-most surface is nearly textureless",
            "coc_formula": "r_px = coc_scale_px * |1/z_m - 1/focus_distance_m|; in-focus where "
                           "r_px < coc_threshold_px",
            "images": records}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return out

