"""Redistributable real photos for trying a detector: the public-domain and CC0 sample photos scikit-image ships
(no download), written with their licences (tools/sample_photos.py, the web page of app.py)."""
from __future__ import annotations

import io
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


def sample_files() -> dict[str, bytes]:
    """The files to write, by name: the photos as PNG and LICENCES.md."""
    from skimage import data
    files, lines = {}, ["# Sample photos", "", "From scikit-image's `skimage.data`, written by tools/sample_photos.py.",
                        "", "| file | what | licence |", "|---|---|---|"]
    for name, (loader, what, licence) in SAMPLE_PHOTOS.items():
        encoded = io.BytesIO()
        Image.fromarray(np.asarray(getattr(data, loader)())).save(encoded, format="PNG")
        files[f"{name}.png"] = encoded.getvalue()
        lines.append(f"| {name}.png | {what} | {licence} |")
    files["LICENCES.md"] = ("\n".join(lines) + "\n").encode()
    return files


def write_sample_photos(out: Path, overwrite: bool = False) -> list[Path]:
    """Save the photos as PNG in `out` with LICENCES.md beside them; returns the photo paths. A file of `out`
    with other content than this writes is replaced only with `overwrite` (FileExistsError names them)."""
    files = sample_files()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: is a file, expected a folder")
    different = [name for name, content in files.items()
                 if (out / name).exists() and ((out / name).is_dir() or (out / name).read_bytes() != content)]
    if different and not overwrite:
        raise FileExistsError(f"{out}: would replace {', '.join(different)} (not written by this tool, or changed "
                              "since); choose another folder, or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (out / name).write_bytes(content)
    return [out / name for name in files if name.endswith(".png")]
