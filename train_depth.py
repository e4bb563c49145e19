"""Train a MiDaS-v2.1-architecture depth teacher on images with depth maps (relative-depth losses).

Trains the teacher shipped in depth_pretrained/ (tools/train_depth_teacher.sh), which stands in for
midas_v21-f6b98070.pt in the offline demo, and serves anyone who needs a depth teacher with another encoder.
The result loads with `train_kd.py --depth-teacher PATH` like the released file.
"""
from __future__ import annotations

import argparse

from engine.depth import train_depth_teacher
from engine.options import add_depth_teacher_arguments


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_depth_teacher_arguments(parser)
    train_depth_teacher(parser.parse_args(argv))


if __name__ == "__main__":
    main()
