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
import dataclasses
import difflib
import io
import re
import sys
import time
from pathlib import Path

import torch

from datasets import DatasetError, dataset_names
from datasets.files import UnusableFilesError, format_names
from datasets.polarity import STATED_POLARITIES, MaskPolarity
from engine.evaluate import EvalSettings, evaluate_model, load_detector, set_label
from engine.options import check_img_size, check_writable
from engine.photos import predict_photos
from engine.saved_maps import evaluate_saved_maps
from metrics.paper_results import PAPER_SETS, TABLES
from metrics.protocol import PROTOCOLS, get_protocol
from metrics.report import (markdown_table, paper_set_order, pr_figure, read_results, region_table, summary_line,
                            write_results)
from models.inference import DEFAULT_IMG_SIZE, input_spec
from models.shipped import default_detector
from utils.checkpoint import CheckpointError
from utils.log import printable
from utils.runlock import RunLockError, acquire, release
from utils.runtime import AMP_DTYPES, check_amp, select_device, use_device

INTERRUPTED_EXIT = 130  # the shell's status for a process ended by SIGINT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("what to evaluate")
    source.add_argument("--checkpoint", nargs="+", default=None,
                        help="checkpoint files (ours or the authors'); default: the authors' checkpoint/D-DFFNet.pth "
                             "when present, else the model this repository ships (checkpoint/release/)")
    source.add_argument("--pred-dir", help="folder of another method's saved maps, <image stem>.<ext>")
    source.add_argument("--pred-polarity", choices=[p.label for p in STATED_POLARITIES],
                        default=MaskPolarity.WHITE_IN_FOCUS.label,
                        help="what white means in the --pred-dir and --baseline maps")
    source.add_argument("--label", help="name of the --pred-dir method in the results (default: folder name)")
    source.add_argument("--baseline", nargs="+", action="extend", default=[], metavar="LABEL=DIR",
                        help="other methods' saved maps (as --pred-polarity), evaluated on every --dataset and "
                             "added to the results as LABEL; DIR/<set name>/ is used when it exists, else DIR")
    source.add_argument("--images", nargs="+", help="photos or folders without GT: write maps and overlays")
    source.add_argument("--dataset", nargs="+", default=list(PAPER_SETS),
                        help="test sets: registry names, folder:PATH[:white=...], synthetic:PATH "
                             f"(default: {' '.join(PAPER_SETS)})")
    source.add_argument("--model", help="network of bare state_dicts (default: as the keys say)")
    source.add_argument("--backbone", help="backbone of bare state_dicts")
    run = parser.add_argument_group("how")
    run.add_argument("--protocol", choices=list(PROTOCOLS), default="official")
    run.add_argument("--raw-maps", action="store_true",
                     help="--protocol standard: score each map as it is, without the per-map min-max normalisation "
                          "of the salient-object toolkits (pysodmetrics, PySODEvalToolkit)")
    run.add_argument("--data-root", default="data")
    run.add_argument("--split-file", default=None, metavar="PATH",
                     help="split list of the CUHK / EBD-1305 test sets (one image name per line), when it is not in "
                          "the data folder (data/README.md)")
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
    run.add_argument("--img-size", type=int, default=None,
                     help=f"network input size (default: each checkpoint's training size when it records one, "
                          f"else {DEFAULT_IMG_SIZE})")
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
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise SystemExit(f"--workers must be >= 0, got {args.workers}")
    if args.raw_maps and args.protocol != "standard":
        raise SystemExit(f"--raw-maps applies to --protocol standard (--protocol {args.protocol} never normalises)")
    check_set_names(args.dataset)
    if args.img_size is not None:
        check_img_size(args.img_size)
    for flag, pairs, form in (("--paper-row", args.paper_row, "LABEL=METHOD"),
                              ("--baseline", args.baseline, "LABEL=DIR")):
        for pair in pairs:
            if "=" not in pair:
                parser.error(f"{flag} takes {form}, got {pair!r}")
    if not args.checkpoint and not args.pred_dir:
        path, note = default_detector()
        print(f"test.py: no --checkpoint: {note}", flush=True)
        args.checkpoint = [str(path)]
    args.checkpoint = args.checkpoint or []
    if args.images is not None and (len(args.checkpoint) != 1 or args.baseline):
        parser.error("--images runs one checkpoint (no --baseline)")
    labels = checkpoint_labels(args.checkpoint) + [pair.split("=", 1)[0] for pair in args.baseline]
    if len(set(labels)) < len(labels):
        parser.error(f"two sources share a label: {', '.join(labels)}")
    return args


def checkpoint_labels(paths: list[str]) -> list[str]:
    """File stems, prefixed with the parent folder when two stems collide (printable: bytes that are not UTF-8 as
    \\xNN, for the table, the figure and the output folders)."""
    stems = [Path(p).stem for p in paths]
    return [printable(f"{Path(p).parent.name}-{s}" if stems.count(s) > 1 else s) for p, s in zip(paths, stems)]


def check_set_names(exprs: list[str]) -> None:
    """Exit in one line when a --dataset name is not a registered set (suggesting the closest) or two sets
    would share a results name (one table column, one OUT/<model>/<set>/ folder)."""
    known = dataset_names()
    for expr in exprs:
        if expr.startswith(("folder:", "synthetic:")) or expr in known:
            continue
        close = difflib.get_close_matches(expr, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(known) + ", folder:PATH, synthetic:PATH"
        raise SystemExit(f"--dataset {expr}: not a data set name; {hint}")
    names = [set_label(expr) for expr in exprs]
    for name in dict.fromkeys(names):
        sharing = [expr for expr, other in zip(exprs, names) if other == name]
        if len(sharing) > 1:
            raise SystemExit(f"--dataset: {' and '.join(sharing)} would both be reported as {name!r} and "
                             "overwrite each other's results; rename one folder or evaluate it in another run "
                             "with a different --out")


def baseline_maps(folder: str, dataset_expr: str) -> str:
    """A --baseline's maps for one test set: DIR/<set name> when that folder exists, else DIR."""
    per_set = Path(folder) / set_label(dataset_expr)
    return str(per_set) if per_set.is_dir() else folder


def model_settings(settings: EvalSettings, model: torch.nn.Module, img_size: int | None) -> EvalSettings:
    """The settings for one network: --img-size, else its own input size (models.inference.input_spec)."""
    return dataclasses.replace(settings, img_size=input_spec(model, img_size).img_size)


def run_evaluation(args: argparse.Namespace, settings: EvalSettings, out: Path) -> int:
    """Evaluate every source on every test set, write results.json, print the paper's table."""
    entries, missing, failed = [], [], []
    labels = checkpoint_labels(args.checkpoint)
    jobs = ([(None, args.label, args.pred_dir, False)] if args.pred_dir
            else [(path, label, path, False) for path, label in zip(args.checkpoint, labels)])
    jobs += [(None, *pair.split("=", 1), True) for pair in args.baseline]
    polarity = MaskPolarity.parse(args.pred_polarity)
    for checkpoint, label, source, is_baseline in jobs:
        label = printable(label) if label else label
        model = load_detector(checkpoint, settings, args.model, args.backbone, args.compile) if checkpoint else None
        for expr in args.dataset:
            try:
                if model is not None:
                    entry = evaluate_model(model, label, checkpoint, expr, model_settings(settings, model, args.img_size),
                                           out)
                else:
                    maps = baseline_maps(source, expr) if is_baseline else source
                    entry = evaluate_saved_maps(maps, polarity, expr, settings, out, label)
            except DatasetError as exc:
                if not args.skip_missing or isinstance(exc, UnusableFilesError):
                    raise
                if expr not in [m["dataset_expr"] for m in missing]:
                    message = re.sub(r"(looked for [^,]+), .*?(\(see [^)]*\))", r"\1, ... \2",
                                     " ".join(str(exc).split()))
                    missing.append({"dataset_expr": expr, "reason": message})
                    print(f"missing {expr}: {message}", flush=True)
                continue
            except (FileNotFoundError, ValueError) as exc:
                if not is_baseline:
                    raise
                print(f"test.py: error: --baseline {label}: {exc}", file=sys.stderr, flush=True)
                failed.append(f"{label} on {expr}")
                continue
            entries.append(entry)
            print(summary_line(entry), flush=True)
    if not entries:
        kept = f"; {out / 'results.json'} is left as it was" if (out / "results.json").exists() else ""
        print(f"test.py: error: nothing evaluated: none of {', '.join(args.dataset)} was found under "
              f"{args.data_root}{kept}", file=sys.stderr)
        return 1
    run = {"protocol": args.protocol, "device": str(settings.device), "amp": args.amp,
           "img_size": args.img_size or "each checkpoint's training size (320 when it records none)",
           "data_root": args.data_root, "command": sys.argv, "torch": torch.__version__,
           "time": time.strftime("%Y-%m-%d %H:%M:%S"), "missing": missing}
    for entry in entries:
        for warning in entry.get("warnings", []):
            print(f"test.py: warning: {warning}", file=sys.stderr, flush=True)
        if entry.get("write_error"):
            failed.append(f"{entry['model']} on {entry['dataset']}: {entry['write_error']}")
    shown = entries + [e for path in args.extra_results for e in read_results(path)]
    try:
        write_results(entries, out / "results.json", run)
    except OSError as exc:
        failed.append(f"{out / 'results.json'}: not written ({exc.strerror or exc}); the metrics are printed here")
    else:
        try:
            pr_figure(shown, out / "pr_curves.png", f"PR curves, blurred class positive ({args.protocol} protocol)")
        except OSError as exc:
            (out / "pr_curves.png").unlink(missing_ok=True)
            failed.append(f"{out / 'pr_curves.png'}: not written ({exc.strerror or exc})")
    sets = paper_set_order(list(dict.fromkeys([set_label(d) for d in args.dataset] + [e["dataset"] for e in shown])))
    paper_rows = dict(pair.split("=", 1) for pair in args.paper_row)
    print()
    print(markdown_table(shown, sets, args.paper_table, paper_rows, args.paper_methods))
    regions = region_table(shown)
    if regions:
        print("\nBy region (homogeneous = nearly textureless surface; docs/REPRODUCTION.md, split metrics):")
        print(regions)
    if failed:
        print(f"test.py: error: these failed (see above): {'; '.join(failed)}", file=sys.stderr)
        return 1
    print(f"\nwrote {out / 'results.json'}, {out / 'pr_curves.png'} and per-image CSVs under {out}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except CheckpointError as exc:  # the default detector is damaged
        print(f"test.py: error: {exc}", file=sys.stderr)
        return 2
    device = select_device(args.device)
    check_amp(args.amp, device)
    use_device(device)
    check_writable(args.out, "--out", folder=True)
    settings = EvalSettings(protocol=get_protocol(args.protocol, args.raw_maps), device=device, amp=args.amp,
                            batch_size=args.batch_size, workers=args.workers, channels_last=args.channels_last,
                            img_size=args.img_size or DEFAULT_IMG_SIZE, data_root=args.data_root,
                            save_maps=args.save_maps, grid=args.grid, split_file=args.split_file)
    out = Path(args.out)
    try:
        acquire(out, "--out", folder=True)
    except RunLockError as exc:
        print(f"test.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.images is not None:
            model = load_detector(args.checkpoint[0], settings, args.model, args.backbone, args.compile)
            report = predict_photos(model, args.images, model_settings(settings, model, args.img_size), out)
            print(f"wrote {len(report.written) // 2} maps to {out / 'maps'} and overlays to {out / 'overlays'}")
            if report.renamed:
                print(f"renamed to keep output names distinct: {format_names(report.renamed)}")
            if report.skipped:
                print(f"skipped {len(report.skipped)} files: {format_names(report.skipped)}")
            if report.write_error:
                print(f"test.py: error: disk write failed, no more maps written: {report.write_error}",
                      file=sys.stderr)
                return 1
            if report.unreadable:
                print(f"test.py: error: {len(report.unreadable)} photos could not be read (nothing written for "
                      f"them): {format_names(report.unreadable)}", file=sys.stderr)
                return 1
            return 0
        return run_evaluation(args, settings, out)
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"test.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        results = "" if args.images is not None else " (results.json is written only at the end of a run)"
        print(f"test.py: interrupted (Ctrl-C); the files finished so far stay in {out}{results}", file=sys.stderr)
        return INTERRUPTED_EXIT
    finally:
        release(out, folder=True)


if __name__ == "__main__":
    for stream in (sys.stdout, sys.stderr):  # a checkpoint or photo name that is not UTF-8 cannot stop it
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    sys.exit(main())
