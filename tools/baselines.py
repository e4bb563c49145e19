"""Write a trivial baseline's defocus maps for a test set (all-in-focus, or the training-set prior).

    python tools/baselines.py prior --train-set CUHK-TR-1 --test-set DUT-TE --out results/baselines/prior

The maps (8-bit PNG, white = in-focus, file stem = image stem) are scored with
`test.py --pred-dir DIR --pred-polarity white=in-focus`; see engine.baselines.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets import DatasetError  # noqa: E402
from engine.baselines import BASELINES, write_baseline_maps  # noqa: E402
from engine.options import check_writable  # noqa: E402
from utils.errors import RunError  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=BASELINES)
    parser.add_argument("--test-set", required=True, help="dataset expression of the test set")
    parser.add_argument("--train-set", default=None, help="dataset expression of the training set (prior)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--out", required=True, help="folder for the maps (outside the data sets)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files in --out of the maps' names that this tool did not write")
    args = parser.parse_args(argv)
    try:
        check_writable(args.out, "--out", folder=True)
    except RunError as e:
        raise SystemExit(str(e)) from None
    try:
        out = write_baseline_maps(args.name, args.test_set, args.out, args.data_root, args.train_set, args.img_size,
                                  args.overwrite)
    except (DatasetError, ValueError) as e:
        raise SystemExit(f"{parser.prog}: {e}") from None
    print(f"wrote {args.name} maps to {out}")


if __name__ == "__main__":
    main()
