"""Stage 2: train D-DFFNet by feature distillation from the stage-1 DFFNet and MiDaS, or R-DFFNet.

`--distill feature` (default, D-DFFNet): a fresh student (ImageNet backbone, not the teacher's
weights, as the authors) learns loss = 1.1 x L(final) + sum_k L(side_k) + alpha(epoch) x (defocus +
depth distillation), the projectors with their own Adam (lr 0.1, weight decay 5e-4, constant,
not clamped). The 1.1 is the authors' weight for a student with side outputs; without them
(e.g. --model dffnet_no_side) it is 1.0, as in their code (--final-weight sets it).
Teachers run frozen under inference mode; MiDaS runs its encoder only.
`--teacher-bn batch` (default) reproduces the authors' scripts, which never called .eval() on the
teachers: BatchNorm normalises with each batch's statistics (so a target depends on the other images
of its batch) and drifts its running statistics. `--teacher-bn eval` (recommended) uses the teachers'
running statistics: each image's targets are fixed, as the teachers compute them at test time.

`--distill response` (R-DFFNet, appendix B-C, one stage): the student has 1x1 depth heads on the final
layer and on each decoder branch, supervised by MiDaS depth maps (scale-and-shift-invariant MSE on
per-image normalised depth, weight 1 per head); no --teacher is needed.
"""
from __future__ import annotations

import argparse
import sys

from engine.config import DistillConfig
from engine.options import add_common_arguments, add_distillation_arguments, config_from_flags
from engine.stages import train_distill
from engine.train import TrainingInterrupted
from utils.errors import RunError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, save="checkpoint/D-DFFNet.pth")
    add_distillation_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    try:
        train_distill(config_from_flags(vars(parse_args(argv)), DistillConfig))
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr, flush=True)
        raise SystemExit(stop.exit_code) from None
    except RunError as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
