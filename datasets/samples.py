"""Redistributable real photos for trying a detector: the public-domain and CC0 sample photos scikit-image ships
(no download), written with their licences (tools/sample_photos.py, the web page of app.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# name -> (scikit-image loader, what it shows, licence as scikit-image states it)
SAMPLE_PHOTOS = {
    "chelsea": ("chelsea", "a cat, sharp face against a blurred room", "CC0 by the photographer (Stefan van der Walt)"),
    "coffee": ("coffee", "a coffee cup on a wooden table, shallow depth of field",
               "CC0 by the photographer (Rachel Michetti), courtesy of Pikolo Espresso Bar"),
    "camera": ("camera", "a cameraman on a lawn (grey-level)", "CC0 by the photographer (Lav Varshney)"),
    "astronaut": ("astronaut", "a studio portrait, nearly all in focus",
                  "public domain (NASA Great Images database)"),
}


def write_sample_photos(out: Path) -> list[Path]:
    """Save the photos as PNG in `out` with LICENCES.md beside them; returns the photo paths."""
    from skimage import data
    out.mkdir(parents=True, exist_ok=True)
    paths, lines = [], ["# Sample photos", "", "From scikit-image's `skimage.data`, written by tools/sample_photos.py.", "",
                        "| file | what | licence |", "|---|---|---|"]
    for name, (loader, what, licence) in SAMPLE_PHOTOS.items():
        pixels = np.asarray(getattr(data, loader)())
        path = out / f"{name}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
        lines.append(f"| {path.name} | {what} | {licence} |")
    (out / "LICENCES.md").write_text("\n".join(lines) + "\n")
    return paths
