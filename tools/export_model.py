"""Write a trained model for shipping: fp16 weights, its configuration and a one-line description, no optimiser.

    python tools/export_model.py results/release/fit.pth checkpoint/release/dffnet_cuhk_cpu.pth \\
        --description "DFFNet / resnest14d at 160 px, trained from scratch by this project on CUHK-TR-1"
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.options import check_writable  # noqa: E402
from utils.errors import RunError  # noqa: E402
from models.shipped import export_release, sha256  # noqa: E402
from utils.checkpoint import CheckpointError  # noqa: E402


def check_output(checkpoint: str, out: str, overwrite: bool, prog: str) -> None:
    """Exit in one line when `out` is the input checkpoint itself, exists without --overwrite, or cannot be
    written."""
    source, target = Path(checkpoint), Path(out)
    if target.exists() and source.exists() and target.samefile(source):
        raise SystemExit(f"{prog}: out {out} is the input checkpoint itself: exporting would replace the training "
                         "checkpoint (and its optimiser state); choose another out")
    if target.exists() and not target.is_dir() and not overwrite:
        raise SystemExit(f"{prog}: out {out} already exists; pass --overwrite to replace it, or choose another out")
    check_writable(out, "out")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint written by train_single.py, train_kd.py or train_depth.py")
    parser.add_argument("out", help="the file to write")
    parser.add_argument("--description", required=True, help="one line: what the model is (test.py prints it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing out file")
    parser.add_argument("--img-size", type=int, default=None,
                        help="the input size test.py, predict and the web page run the model at (default: its "
                             "training size); a multiple of 32")
    args = parser.parse_args(argv)
    if args.img_size is not None and (args.img_size < 32 or args.img_size % 32):
        raise SystemExit(f"{parser.prog}: --img-size {args.img_size}: must be a positive multiple of 32")
    try:
        check_output(args.checkpoint, args.out, args.overwrite, parser.prog)
    except RunError as e:
        raise SystemExit(str(e)) from None
    try:
        path = export_release(args.checkpoint, args.out, args.description, args.img_size)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"{parser.prog}: {e}") from None
    except OSError as e:
        raise SystemExit(f"{parser.prog}: {args.out}: not written ({e.strerror or e}); "
                         f"{'the previous file is kept' if Path(args.out).exists() else 'nothing was written'}") from None
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {sha256(path)})")


if __name__ == "__main__":
    main()
