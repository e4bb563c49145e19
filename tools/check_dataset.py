"""Check a defocus data set folder: pairs, problem files by name, formats, one-class masks, mask polarity.

    python tools/check_dataset.py PATH [--json] [--max-images 100]

PATH holds an image folder (image/ or images/) and a mask folder (gt/ or masks/); every file is decoded
in full. Exit status 1 when files are unpaired, unreadable, corrupt, ambiguous, too small or of mismatched size,
when a mask is in colour, or when every mask is one class; 2 when PATH is not a data set. Piping the output into
`head` is fine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets import DatasetError  # noqa: E402
from datasets.check import check_folder, format_report, has_problems  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="folder with image/ and gt/")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--max-images", type=int, default=100,
                        help="pairs (spread over the set) used to estimate the polarity")
    args = parser.parse_args(argv)
    try:
        report = check_folder(args.path, args.max_images)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    status = 1 if has_problems(report) else 0
    try:
        print(json.dumps(report) if args.json else format_report(report), flush=True)
    except BrokenPipeError:  # the reader (e.g. `| head`) has stopped: nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return status


if __name__ == "__main__":
    sys.exit(main())
