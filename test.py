"""Evaluate DBD checkpoints or saved maps on test sets, or predict defocus maps for photos.

  python test.py --checkpoint checkpoint/D-DFFNet.pth --dataset CUHK-TE-1 DUT-TE --protocol official
  python test.py --pred-dir maps/DD --dataset CUHK-TE-1 --pred-polarity white=blurred
  python test.py --checkpoint checkpoint/D-DFFNet.pth --images photos/ --out results/photos

Writes OUT/results.json, OUT/<model>/<set>/per_image.csv (and maps/, grid.png), OUT/pr_curves.png, and prints
the paper's table with the paper's rows. Saved maps: 8-bit PNG, white = in-focus, original resolution.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

from datasets import DatasetError
from engine.evaluate import (POLARITIES, EvalSettings, evaluate_model, evaluate_saved_maps, markdown_table,
                             paper_set_order, pr_figure, predict_photos, set_label, write_results)
from models import load_model
from utils.checkpoint import CheckpointError
from utils.metrics import PROTOCOLS
from utils.paper_results import PAPER_SETS, TABLES
from utils.runtime import AMP_DTYPES, select_device

DEFAULT_CHECKPOINT = "checkpoint/D-DFFNet.pth"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("what to evaluate")
    source.add_argument("--checkpoint", nargs="+", default=None,
                        help=f"checkpoint files (ours or the authors'); default {DEFAULT_CHECKPOINT}")
    source.add_argument("--pred-dir", help="folder of another method's saved maps, <image stem>.<ext>")
    source.add_argument("--pred-polarity", choices=POLARITIES, default="white=in-focus",
                        help="what white means in the --pred-dir maps")
    source.add_argument("--label", help="name of the --pred-dir method in the results (default: folder name)")
    source.add_argument("--images", nargs="+", help="photos or folders without GT: write maps and overlays")
    source.add_argument("--dataset", nargs="+", default=list(PAPER_SETS),
                        help="test sets: registry names, folder:PATH[:white=...], synthetic:PATH "
                             f"(default: {' '.join(PAPER_SETS)})")
    source.add_argument("--model", help="network of bare state_dicts (default: as the keys say)")
    source.add_argument("--backbone", help="backbone of bare state_dicts")
    run = parser.add_argument_group("how")
    run.add_argument("--protocol", choices=PROTOCOLS, default="official")
    run.add_argument("--data-root", default="data")
    run.add_argument("--out", default="results")
    run.add_argument("--save-maps", action="store_true", help="write 8-bit maps (white = in-focus)")
    run.add_argument("--grid", type=int, default=6, help="images in each set's qualitative grid (0: none)")
    run.add_argument("--skip-missing", action="store_true",
                     help="report a missing test set in one line and go on (default: stop)")
    run.add_argument("--device", default="auto")
    run.add_argument("--amp", choices=list(AMP_DTYPES), default="off")
    run.add_argument("--channels-last", action="store_true")
    run.add_argument("--compile", action="store_true")
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--img-size", type=int, default=320)
    table = parser.add_argument_group("table")
    table.add_argument("--paper-table", choices=list(TABLES), default="I",
                       help="paper table to compare with (I: CUHK-TR-1, II: CUHK-TR-1 & DUT-TR)")
    table.add_argument("--paper-row", nargs="+", default=[], metavar="LABEL=METHOD",
                       help="compare model LABEL with the paper's METHOD row (default: same name)")
    table.add_argument("--paper-methods", nargs="+", default=[], help="extra paper rows, e.g. DD IS2CNet")
    table.add_argument("--extra-results", nargs="+", default=[], metavar="RESULTS_JSON",
                       help="add the entries of earlier results.json files (e.g. baselines) to the table and figure")
    args = parser.parse_args(argv)
    modes = [args.pred_dir is not None, args.images is not None]
    if all(modes):
        parser.error("--pred-dir and --images cannot be combined")
    if args.pred_dir is not None and args.checkpoint:
        parser.error("--pred-dir evaluates saved maps: drop --checkpoint")
    if args.pred_dir is not None and len(args.dataset) != 1:
        parser.error("--pred-dir needs exactly one --dataset (the set the maps belong to)")
    if args.batch_size < 1 or args.workers < 0 or args.img_size % 32:
        parser.error("need --batch-size >= 1, --workers >= 0 and --img-size divisible by 32")
    for pair in args.paper_row:
        if "=" not in pair:
            parser.error(f"--paper-row takes LABEL=METHOD, got {pair!r}")
    args.checkpoint = args.checkpoint or ([] if args.pred_dir else [DEFAULT_CHECKPOINT])
    if args.images is not None and len(args.checkpoint) != 1:
        parser.error("--images runs one checkpoint")
    return args


def checkpoint_labels(paths: list[str]) -> list[str]:
    """File stems, prefixed with the parent folder when two stems collide."""
    stems = [Path(p).stem for p in paths]
    return [f"{Path(p).parent.name}-{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]


def load(path: str, args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    model = load_model(path, name=args.model, backbone=args.backbone, map_location=device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if args.compile else model


def line(entry: dict) -> str:
    excluded = len(entry["excluded"])
    return (f"{entry['model']} on {entry['dataset']} ({entry['protocol']}): MAE {entry['mae']:.4f}  "
            f"F-beta {entry['fbeta']:.4f}  IoU {entry['iou']:.4f}  ({entry['n_images']} images"
            + (f", {excluded} excluded: size mismatch)" if excluded else ")"))


def run_evaluation(args: argparse.Namespace, settings: EvalSettings, out: Path) -> int:
    entries, missing = [], []
    jobs = ([(None, args.label, args.pred_dir)] if args.pred_dir
            else list(zip(args.checkpoint, checkpoint_labels(args.checkpoint), args.checkpoint)))
    for checkpoint, label, source in jobs:
        model = load(checkpoint, args, settings.device) if checkpoint else None
        for expr in args.dataset:
            try:
                if model is None:
                    entry = evaluate_saved_maps(source, args.pred_polarity, expr, settings, out, label)
                else:
                    entry = evaluate_model(model, label, checkpoint, expr, settings, out)
            except DatasetError as exc:
                if not args.skip_missing:
                    raise
                if expr not in [m["dataset_expr"] for m in missing]:
                    message = re.sub(r"(looked for [^,]+), .*?(\(see [^)]*\))", r"\1, ... \2",
                                     " ".join(str(exc).split()))
                    missing.append({"dataset_expr": expr, "reason": message})
                    print(f"missing {expr}: {message}", flush=True)
                continue
            entries.append(entry)
            print(line(entry), flush=True)
    run = {"protocol": args.protocol, "device": str(settings.device), "amp": args.amp, "img_size": args.img_size,
           "data_root": args.data_root, "command": sys.argv, "torch": torch.__version__,
           "time": time.strftime("%Y-%m-%d %H:%M:%S"), "missing": missing}
    write_results(entries, out / "results.json", run)
    if not entries:
        print(f"nothing evaluated: none of {', '.join(args.dataset)} was found under {args.data_root}")
        return 1
    shown = entries + [e for path in args.extra_results for e in read_results(path)]
    pr_figure(shown, out / "pr_curves.png", f"PR curves, blurred class positive ({args.protocol} protocol)")
    sets = paper_set_order(list(dict.fromkeys([set_label(d) for d in args.dataset] + [e["dataset"] for e in shown])))
    paper_rows = dict(pair.split("=", 1) for pair in args.paper_row)
    print()
    print(markdown_table(shown, sets, args.paper_table, paper_rows, args.paper_methods))
    print(f"\nwrote {out / 'results.json'}, {out / 'pr_curves.png'} and per-image CSVs under {out}/")
    return 0


def read_results(path: str) -> list[dict]:
    """Entries of an earlier results.json (for --extra-results)."""
    try:
        return json.loads(Path(path).read_text())["results"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a results.json written by test.py ({exc})") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = select_device(args.device)
    settings = EvalSettings(protocol=args.protocol, device=device, amp=args.amp, batch_size=args.batch_size,
                            workers=args.workers, channels_last=args.channels_last, img_size=args.img_size,
                            data_root=args.data_root, save_maps=args.save_maps, grid=args.grid)
    out = Path(args.out)
    try:
        if args.images is not None:
            model = load(args.checkpoint[0], args, device)
            written = predict_photos(model, args.images, settings, out)
            print(f"wrote {len(written) // 2} maps to {out / 'maps'} and overlays to {out / 'overlays'}")
            return 0
        return run_evaluation(args, settings, out)
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"test.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
