"""Draw the qualitative comparison grid: image, ground truth, each detector's map, the depth teacher's depth.

    python tools/figures.py --dataset synthetic:data/demo/test --checkpoint DFFNet=a.pth D-DFFNet=b.pth \\
        --depth-teacher depth_pretrained/midas_v21-f6b98070.pt --out results/qualitative.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets import DatasetError  # noqa: E402
from engine.figures import comparison_figure  # noqa: E402
from engine.options import check_writable  # noqa: E402
from utils.checkpoint import CheckpointError  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="test-set expression")
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="LABEL=PATH")
    parser.add_argument("--depth-teacher", default=None, help="MiDaS file whose depth maps form the last column")
    parser.add_argument("--count", type=int, default=6, help="rows (test images)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", required=True, help="PNG file")
    args = parser.parse_args(argv)
    if any("=" not in pair for pair in args.checkpoint):
        parser.error("--checkpoint takes LABEL=PATH pairs")
    checkpoints = dict(pair.split("=", 1) for pair in args.checkpoint)
    check_writable(args.out, "--out")
    try:
        path = comparison_figure(args.dataset, checkpoints, args.out, args.depth_teacher, args.count,
                                 args.data_root, args.img_size, args.device)
    except (DatasetError, CheckpointError, ValueError) as e:
        raise SystemExit(f"{parser.prog}: {e}") from None
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
