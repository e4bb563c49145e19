"""Score a depth teacher on synthetic sets with depth maps: AbsRel and delta < 1.25 per set and input size,
beside a constant map (the trivial baseline); per-image scale-and-shift alignment, as MiDaS is scored.

    python tools/score_depth.py depth_pretrained/midas_small.pth results/depth_val --img-size 128 160 320
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.depth import score_depth_teacher  # noqa: E402
from engine.config import check_img_size  # noqa: E402
from engine.options import bad_input  # noqa: E402
from models import load_midas  # noqa: E402
from utils.errors import RunError  # noqa: E402
from utils.runtime import AMP_DTYPES, select_device  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a MiDaS file or a checkpoint written by train_depth.py")
    parser.add_argument("data", nargs="+", help="folders with image/ and depth/ (tools/make_synthetic.py)")
    parser.add_argument("--img-size", type=int, nargs="+", default=[160], help="network input sizes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default="off")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    try:
        for size in args.img_size:
            check_img_size(size)
        device = select_device(args.device)
        with bad_input("checkpoint"):
            model = load_midas(args.checkpoint, map_location=device)
    except RunError as e:
        raise SystemExit(str(e)) from None
    rows = []
    print("| data | px | images | AbsRel | delta<1.25 | constant map AbsRel | constant map delta<1.25 |")
    print("|---|---|---|---|---|---|---|")
    for data in args.data:
        for size in args.img_size:
            try:
                row = score_depth_teacher(model, data, size, device, args.amp)
            except RunError as e:
                raise SystemExit(str(e)) from None
            rows.append({"data": data, "img_size": size, **row})
            print(f"| {data} | {size} | {row['images']} | {row['abs_rel']:.3f} | {row['delta1']:.3f} | "
                  f"{row['constant_abs_rel']:.3f} | {row['constant_delta1']:.3f} |", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
