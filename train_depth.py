"""Train a MiDaS-v2.1-architecture depth teacher on images with depth maps (relative-depth losses).

Trains the teacher shipped in depth_pretrained/ (tools/train_depth_teacher.sh), which stands in for
midas_v21-f6b98070.pt in the offline demo, and serves anyone who needs a depth teacher with another encoder.
The result loads with `train_kd.py --depth-teacher PATH` like the released file.
"""
from __future__ import annotations

import argparse
import sys

from engine.config import DepthConfig
from engine.depth import train_depth_teacher
from engine.options import add_depth_teacher_arguments, config_from_flags
from engine.train import TrainingInterrupted
from utils.errors import RunError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_depth_teacher_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    try:
        train_depth_teacher(config_from_flags(vars(parse_args(argv)), DepthConfig))
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr, flush=True)
        raise SystemExit(stop.exit_code) from None
    except RunError as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
