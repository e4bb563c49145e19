"""Write redistributable real photos for trying a detector: the public-domain and CC0 sample photos that
scikit-image ships (no download), each with its licence in LICENCES.md.

    python tools/sample_photos.py results/demo/photos
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets.samples import write_sample_photos  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="folder to write the photos into")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files of the same names whose content differs (e.g. an edited LICENCES.md)")
    args = parser.parse_args(argv)
    try:
        paths = write_sample_photos(Path(args.out), args.overwrite)
    except ImportError:
        raise SystemExit(f"{parser.prog}: scikit-image is not installed (pip install -r requirements.txt)") from None
    except FileExistsError as e:
        raise SystemExit(f"{parser.prog}: {e}") from None
    except OSError as e:
        raise SystemExit(f"{parser.prog}: {args.out}: not written ({e.strerror or e})") from None
    print(f"wrote {len(paths)} photos and LICENCES.md to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
