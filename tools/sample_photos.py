"""Write redistributable real photos for trying a detector: the public-domain and CC0 sample photos that
scikit-image ships (no download), each with its licence in LICENCES.md.

    python tools/sample_photos.py results/demo/photos
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# name -> (scikit-image loader, what it shows, licence as scikit-image states it)
PHOTOS = {
    "chelsea": ("chelsea", "a cat, sharp face against a blurred room", "CC0 by the photographer (Stefan van der Walt)"),
    "coffee": ("coffee", "a coffee cup on a wooden table, shallow depth of field",
               "CC0 by the photographer (Rachel Michetti), courtesy of Pikolo Espresso Bar"),
    "camera": ("camera", "a cameraman on a lawn (grey-level)", "CC0 by the photographer (Lav Varshney)"),
    "astronaut": ("astronaut", "a studio portrait, nearly all in focus",
                  "public domain (NASA Great Images database)"),
}


def write_photos(out: Path) -> list[Path]:
    """Save the photos as PNG in `out` with LICENCES.md beside them; returns the photo paths."""
    from skimage import data
    out.mkdir(parents=True, exist_ok=True)
    paths, lines = [], ["# Sample photos", "", "From scikit-image's `skimage.data`, written by tools/sample_photos.py.", "",
                        "| file | what | licence |", "|---|---|---|"]
    for name, (loader, what, licence) in PHOTOS.items():
        pixels = np.asarray(getattr(data, loader)())
        path = out / f"{name}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
        lines.append(f"| {path.name} | {what} | {licence} |")
    (out / "LICENCES.md").write_text("\n".join(lines) + "\n")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="folder to write the photos into")
    args = parser.parse_args(argv)
    try:
        paths = write_photos(Path(args.out))
    except ImportError:
        raise SystemExit(f"{parser.prog}: scikit-image is not installed (pip install -r requirements.txt)") from None
    print(f"wrote {len(paths)} photos and LICENCES.md to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
