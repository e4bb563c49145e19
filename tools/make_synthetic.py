"""Write a synthetic defocus set: thin-lens renderings with exact in-focus masks and depth maps.

    python tools/make_synthetic.py OUT --n N --seed S --size 320 [--wide-dof 0.1] [--workers 2]

OUT receives image/, gt/ (white = in-focus), depth/ (uint16 millimetres) and meta.json; the output
depends only on the seed, not on the number of workers (see datasets.synthetic).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets.synthetic import generate_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output folder (image/, gt/, depth/, meta.json)")
    parser.add_argument("--n", type=int, default=200, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=320, help="image side in pixels")
    parser.add_argument("--wide-dof", type=float, default=0.1, help="share of almost all-in-focus images")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--format", choices=("png", "jpg"), default="png", dest="image_format")
    parser.add_argument("--coc-threshold", type=float, default=None,
                        help="CoC radius (px) below which a pixel counts as in focus")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing set in OUT")
    args = parser.parse_args(argv)
    try:
        generate_dataset(args.out, args.n, args.seed, args.size, args.wide_dof, args.workers,
                         args.image_format, args.coc_threshold, args.overwrite)
    except (ValueError, FileExistsError, OSError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {args.n} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
