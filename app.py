"""A local web page to try the detector on a photo: upload one or pick a sample, see the P(in-focus) map, the
blurred regions and the in-focus mask at a threshold you choose (Gradio, on the CPU; engine/web.py).

  python app.py                         # http://127.0.0.1:7860
  python app.py --port 8080 --checkpoint-dir checkpoint
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from datasets.samples import write_sample_photos  # noqa: E402
from engine.web import build_page, find_detectors, serve  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every network interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--checkpoint-dir", default="checkpoint",
                        help="offer every checkpoint under this folder that loads, after the shipped model")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be in 1-65535, got {args.port}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    detectors, left_out = find_detectors(Path(args.checkpoint_dir))
    for line in left_out:
        print(f"app.py: not offered: {line}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="ddffnet-samples-") as samples:
        page = build_page(detectors, write_sample_photos(Path(samples)))
        try:
            serve(page, args.host, args.port)
        except OSError as exc:
            print(f"app.py: error: cannot serve on {args.host}:{args.port}: {' '.join(str(exc).split())}",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
