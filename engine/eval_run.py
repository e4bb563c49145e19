"""What test.py runs: every checkpoint or saved-map source on every test set, then results.json, the PR figure and
the paper's table; or maps for photos. Each returns the script's exit status."""
from __future__ import annotations

import dataclasses
import re
import sys
import time
from pathlib import Path

import torch

from datasets import DatasetError
from datasets.errors import UnusableFilesError, format_names
from datasets.polarity import MaskPolarity
from engine.eval_options import EvalOptions, checkpoint_labels
from engine.evaluate import EvalSettings, evaluate_model, load_detector, set_label
from engine.photos import predict_photos
from engine.saved_maps import evaluate_saved_maps
from metrics.report import (markdown_table, paper_set_order, pr_figure, read_results, region_table, summary_line,
                            write_results)
from models.inference import input_spec
from utils.log import printable


def run_test(options: EvalOptions, settings: EvalSettings, out: Path) -> int:
    """test.py's run into `out`: maps for --images, else the evaluation."""
    if options.images is not None:
        return run_photos(options, settings, out)
    return run_evaluation(options, settings, out)


def run_photos(options: EvalOptions, settings: EvalSettings, out: Path) -> int:
    """Maps and overlays of the --images photos from the one checkpoint, with a line on what was written,
    renamed and skipped; 1 when a write failed or a photo could not be read."""
    model = load_detector(options.checkpoint[0], settings, options.model, options.backbone, options.compile)
    report = predict_photos(model, options.images, model_settings(settings, model, options.img_size), out)
    print(f"wrote {len(report.written) // 2} maps to {out / 'maps'} and overlays to {out / 'overlays'}")
    if report.renamed:
        print(f"renamed to keep output names distinct: {format_names(report.renamed)}")
    if report.skipped:
        print(f"skipped {len(report.skipped)} files: {format_names(report.skipped)}")
    if report.write_error:
        print(f"test.py: error: disk write failed, no more maps written: {report.write_error}", file=sys.stderr)
        return 1
    if report.unreadable:
        print(f"test.py: error: {len(report.unreadable)} photos could not be read (nothing written for "
              f"them): {format_names(report.unreadable)}", file=sys.stderr)
        return 1
    return 0


def baseline_maps(folder: str, dataset_expr: str) -> str:
    """A --baseline's maps for one test set: DIR/<set name> when that folder exists, else DIR."""
    per_set = Path(folder) / set_label(dataset_expr)
    return str(per_set) if per_set.is_dir() else folder


def model_settings(settings: EvalSettings, model: torch.nn.Module, img_size: int | None) -> EvalSettings:
    """The settings for one network: --img-size, else its own input size (models.inference.input_spec)."""
    return dataclasses.replace(settings, img_size=input_spec(model, img_size).img_size)


def run_evaluation(options: EvalOptions, settings: EvalSettings, out: Path) -> int:
    """Evaluate every source on every test set, write results.json, print the paper's table."""
    entries, missing, failed = [], [], []
    labels = checkpoint_labels(options.checkpoint)
    jobs = ([(None, options.label, options.pred_dir, False)] if options.pred_dir
            else [(path, label, path, False) for path, label in zip(options.checkpoint, labels)])
    jobs += [(None, *pair.split("=", 1), True) for pair in options.baseline]
    polarity = MaskPolarity.parse(options.pred_polarity)
    for checkpoint, label, source, is_baseline in jobs:
        label = printable(label) if label else label
        model = (load_detector(checkpoint, settings, options.model, options.backbone, options.compile)
                 if checkpoint else None)
        for expr in options.dataset:
            try:
                if model is not None:
                    entry = evaluate_model(model, label, checkpoint, expr,
                                           model_settings(settings, model, options.img_size), out)
                else:
                    maps = baseline_maps(source, expr) if is_baseline else source
                    entry = evaluate_saved_maps(maps, polarity, expr, settings, out, label)
            except DatasetError as exc:
                if not options.skip_missing or isinstance(exc, UnusableFilesError):
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
        print(f"test.py: error: nothing evaluated: none of {', '.join(options.dataset)} was found under "
              f"{options.data_root}{kept}", file=sys.stderr)
        return 1
    run = {"protocol": options.protocol, "device": str(settings.device), "amp": options.amp,
           "img_size": options.img_size or "each network's own (its result's img_size)",
           "flip_average": options.flip_average,
           "data_root": options.data_root, "command": sys.argv, "torch": torch.__version__,
           "time": time.strftime("%Y-%m-%d %H:%M:%S"), "missing": missing}
    for entry in entries:
        for warning in entry.get("warnings", []):
            print(f"test.py: warning: {warning}", file=sys.stderr, flush=True)
        if entry.get("write_error"):
            failed.append(f"{entry['model']} on {entry['dataset']}: {entry['write_error']}")
    shown = entries + [e for path in options.extra_results for e in read_results(path)]
    try:
        write_results(entries, out / "results.json", run)
    except OSError as exc:
        failed.append(f"{out / 'results.json'}: not written ({exc.strerror or exc}); the metrics are printed here")
    else:
        try:
            pr_figure(shown, out / "pr_curves.png", f"PR curves, blurred class positive ({options.protocol} protocol)")
        except OSError as exc:
            (out / "pr_curves.png").unlink(missing_ok=True)
            failed.append(f"{out / 'pr_curves.png'}: not written ({exc.strerror or exc})")
    sets = paper_set_order(list(dict.fromkeys([set_label(d) for d in options.dataset] + [e["dataset"] for e in shown])))
    paper_rows = dict(pair.split("=", 1) for pair in options.paper_row)
    print()
    print(markdown_table(shown, sets, options.paper_table, paper_rows, options.paper_methods))
    regions = region_table(shown)
    if regions:
        print("\nBy region (homogeneous = nearly textureless surface; docs/REPRODUCTION.md, split metrics):")
        print(regions)
    if failed:
        print(f"test.py: error: these failed (see above): {'; '.join(failed)}", file=sys.stderr)
        return 1
    print(f"\nwrote {out / 'results.json'}, {out / 'pr_curves.png'} and per-image CSVs under {out}/")
    return 0
