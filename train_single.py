"""Stage 1: train DFFNet (or an ablation) with BCE + DOF-edge loss on the final and side maps.

Defaults reproduce the authors' effective run: dffnet / resnest101e from ImageNet, CUHK-TR-1,
320x320, global batch 6, Adam 1e-4 with per-epoch poly (denominator 80), 74 epochs, element-wise
gradient clamp 0.5, seed 42. Multi-GPU: torchrun --nproc_per_node N train_single.py (same flags).
"""
from __future__ import annotations

import argparse
import sys

from engine.config import TrainConfig
from engine.options import add_common_arguments, config_from_flags
from engine.stages import train_stage1
from engine.train import TrainingInterrupted
from utils.errors import RunError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, save="checkpoint/DFFNet.pth")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    try:
        train_stage1(config_from_flags(vars(parse_args(argv)), TrainConfig))
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr, flush=True)
        raise SystemExit(stop.exit_code) from None
    except RunError as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
