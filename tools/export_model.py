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
from models.shipped import export_release, sha256  # noqa: E402
from utils.checkpoint import CheckpointError  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint written by train_single.py, train_kd.py or train_depth.py")
    parser.add_argument("out", help="the file to write")
    parser.add_argument("--description", required=True, help="one line: what the model is (test.py prints it)")
    args = parser.parse_args(argv)
    check_writable(args.out, "out")
    try:
        path = export_release(args.checkpoint, args.out, args.description)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"{parser.prog}: {e}") from None
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 {sha256(path)})")


if __name__ == "__main__":
    main()
