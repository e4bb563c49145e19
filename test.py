"""Evaluate DBD checkpoints or saved maps on test sets, or predict defocus maps for photos.

  python test.py --checkpoint checkpoint/D-DFFNet.pth --dataset CUHK-TE-1 DUT-TE --protocol official
  python test.py --pred-dir maps/DD --dataset CUHK-TE-1 --pred-polarity white=blurred
  python test.py --checkpoint checkpoint/D-DFFNet.pth --baseline DD=maps/DD IS2CNet=maps/IS2CNet
  python test.py --checkpoint checkpoint/D-DFFNet.pth --images photos/ --out results/photos

Writes OUT/results.json, OUT/<model>/<set>/per_image.csv (and maps/, grid.png), OUT/pr_curves.png, and prints
the paper's table with the paper's rows. Saved maps: 8-bit PNG, white = in-focus, original resolution.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from datasets import DatasetError
from engine.eval_options import (EvalOptions, OptionError, UsageError, add_test_arguments, check_test_options,
                                 choose_checkpoints, eval_settings)
from engine.eval_run import run_test
from engine.config import check_img_size
from engine.options import check_writable
from utils.checkpoint import CheckpointError
from utils.errors import RunError
from utils.runlock import RunLockError, acquire, release
from utils.runtime import check_amp, select_device, use_device

INTERRUPTED_EXIT = 130  # the shell's status for a process ended by SIGINT


def parse_args(argv: list[str] | None = None) -> EvalOptions:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_test_arguments(parser)
    options = EvalOptions(**vars(parser.parse_args(argv)))
    try:
        check_test_options(options)
        if options.img_size is not None:
            check_img_size(options.img_size)
        options.checkpoint = choose_checkpoints(options)
    except UsageError as exc:
        parser.error(str(exc))
    except (OptionError, RunError) as exc:
        raise SystemExit(str(exc)) from None
    return options


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse_args(argv)
    except CheckpointError as exc:  # the default detector is damaged
        print(f"test.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        device = select_device(options.device)
        check_amp(options.amp, device)
        use_device(device)
        check_writable(options.out, "--out", folder=True)
    except RunError as exc:
        raise SystemExit(str(exc)) from None
    settings = eval_settings(options, device)
    out = Path(options.out)
    try:
        acquire(out, "--out", folder=True)
    except RunLockError as exc:
        print(f"test.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        return run_test(options, settings, out)
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"test.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        results = "" if options.images is not None else " (results.json is written only at the end of a run)"
        print(f"test.py: interrupted (Ctrl-C); the files finished so far stay in {out}{results}", file=sys.stderr)
        return INTERRUPTED_EXIT
    finally:
        release(out, folder=True)


if __name__ == "__main__":
    for stream in (sys.stdout, sys.stderr):  # a checkpoint or photo name that is not UTF-8 cannot stop it
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    sys.exit(main())
