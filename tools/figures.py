"""Draw a qualitative grid: a test set's image, ground truth, each detector's map and the depth teacher's depth;
or photos without ground truth with each detector's map and its blur overlay.

    python tools/figures.py --dataset synthetic:data/demo/test --checkpoint DFFNet=a.pth D-DFFNet=b.pth \\
        --depth-teacher depth_pretrained/midas_v21-f6b98070.pt --out results/qualitative.png
    python tools/figures.py --dataset CUHK-TR-1-VAL --checkpoint DFFNet=a.pth \\
        --depth-teacher "MiDaS=midas_v21-f6b98070.pt" "ours=depth_pretrained/midas_synthetic_cpu.pth" --out grid.png
    python tools/figures.py --photos photos/ --checkpoint model=checkpoint/release/dffnet_cuhk_cpu.pth \\
        --out results/photos.png
    python tools/figures.py --photos photos/ --checkpoint old=a.pth new=b.pth --out results/compare.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets import DatasetError  # noqa: E402
from datasets.errors import format_names  # noqa: E402
from engine.figures import comparison_figure, photo_figure  # noqa: E402
from engine.options import check_writable  # noqa: E402
from utils.checkpoint import CheckpointError  # noqa: E402
from utils.errors import RunError  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="test-set expression")
    source.add_argument("--photos", nargs="+", help="photos or folders without ground truth")
    parser.add_argument("--checkpoint", nargs="+", default=[], metavar="LABEL=PATH",
                        help="detectors, one column each (--dataset: may be left out when --depth-teacher is given)")
    parser.add_argument("--depth-teacher", nargs="+", default=[], metavar="[LABEL=]PATH",
                        help="MiDaS files whose depth maps form the last columns (titled LABEL, or 'depth teacher')")
    parser.add_argument("--count", type=int, default=6, help="rows (test images)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--img-size", type=int, default=None,
                        help="network input size (default: 320 for --dataset; for --photos the size the checkpoint "
                             "says to run it at, else its training size)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", required=True, help="PNG file")
    args = parser.parse_args(argv)
    if any("=" not in pair for pair in args.checkpoint):
        parser.error("--checkpoint takes LABEL=PATH pairs")
    if args.photos and not args.checkpoint:
        parser.error("--photos needs a --checkpoint to draw")
    if args.photos and args.depth_teacher:
        parser.error("--depth-teacher draws depth beside ground truth: use it with --dataset")
    if not args.checkpoint and not args.depth_teacher:
        parser.error("--dataset needs a --checkpoint or a --depth-teacher to draw")
    checkpoints = dict(pair.split("=", 1) for pair in args.checkpoint)
    if len(checkpoints) < len(args.checkpoint):
        parser.error("--checkpoint: give each file its own LABEL")
    depth_teachers = dict(item.split("=", 1) if "=" in item else ("depth teacher", item) for item in args.depth_teacher)
    if len(depth_teachers) < len(args.depth_teacher):
        parser.error("--depth-teacher: give each file its own LABEL=PATH")
    skipped: list[str] = []
    try:
        check_writable(args.out, "--out")
    except RunError as e:
        raise SystemExit(str(e)) from None
    try:
        if args.photos:
            path, skipped = photo_figure(args.photos, checkpoints, args.out, args.img_size, args.device)
        else:
            path = comparison_figure(args.dataset, checkpoints, args.out, depth_teachers, args.count,
                                     args.data_root, args.img_size or 320, args.device)
    except (DatasetError, CheckpointError, ValueError) as e:
        raise SystemExit(f"{parser.prog}: {e}") from None
    print(f"wrote {path}")
    if skipped:
        print(f"skipped {len(skipped)} files: {format_names(skipped)}")


if __name__ == "__main__":
    main()
