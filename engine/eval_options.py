"""Command-line flags of test.py, the options they make (EvalOptions) and their checks.

A check raises UsageError for flags that cannot go together (the script answers with its usage line) and
OptionError for a value that cannot run (one line).
"""
from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass
from pathlib import Path

import torch

from datasets import dataset_names
from datasets.polarity import STATED_POLARITIES, MaskPolarity
from engine.evaluate import EvalSettings, set_label
from metrics.paper_results import PAPER_SETS, TABLES
from metrics.protocol import PROTOCOLS, get_protocol
from models.inference import DEFAULT_IMG_SIZE
from models.shipped import default_detector
from utils.log import printable
from utils.runtime import AMP_DTYPES


class UsageError(ValueError):
    """test.py flags that cannot go together."""


class OptionError(ValueError):
    """A test.py flag value that cannot run."""


def add_test_arguments(parser: argparse.ArgumentParser) -> None:
    """test.py's flags, in their help groups."""
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
                     help=f"network input size (default: the size an exported file says to run it at, else "
                          f"its training size, else {DEFAULT_IMG_SIZE})")
    run.add_argument("--flip-average", action="store_true",
                     help="average each map with the map of the mirrored photo (two forwards; not the paper's "
                          "protocol, which runs the network once: checkpoint/release/MODEL_CARD.md measures it)")
    table = parser.add_argument_group("table")
    table.add_argument("--paper-table", choices=list(TABLES), default="I",
                       help="paper table to compare with (I: CUHK-TR-1, II: CUHK-TR-1 & DUT-TR)")
    table.add_argument("--paper-row", nargs="+", default=[], metavar="LABEL=METHOD",
                       help="compare model LABEL with the paper's METHOD row (default: same name)")
    table.add_argument("--paper-methods", nargs="+", default=[], help="extra paper rows, e.g. DD IS2CNet")
    table.add_argument("--extra-results", nargs="+", default=[], metavar="RESULTS_JSON",
                       help="add the entries of earlier results.json files (e.g. baselines) to the table and figure")


@dataclass
class EvalOptions:
    """test.py's command line as values: what to evaluate, how, and the table to print."""
    checkpoint: list[str] | None
    pred_dir: str | None
    pred_polarity: str
    label: str | None
    baseline: list[str]
    images: list[str] | None
    dataset: list[str]
    model: str | None
    backbone: str | None
    protocol: str
    raw_maps: bool
    data_root: str
    split_file: str | None
    out: str
    save_maps: bool
    grid: int
    skip_missing: bool
    device: str
    amp: str
    channels_last: bool
    compile: bool
    workers: int
    batch_size: int
    img_size: int | None
    flip_average: bool
    paper_table: str
    paper_row: list[str]
    paper_methods: list[str]
    extra_results: list[str]


def check_test_options(options: EvalOptions) -> None:
    """The run's modes, numbers and set names (--img-size is checked by engine.options.check_img_size)."""
    if options.pred_dir is not None and options.images is not None:
        raise UsageError("--pred-dir and --images cannot be combined")
    if options.pred_dir is not None and options.checkpoint:
        raise UsageError("--pred-dir evaluates saved maps: drop --checkpoint")
    if options.pred_dir is not None and options.flip_average:
        raise UsageError("--flip-average runs a network twice per photo: it does not apply to --pred-dir's saved maps")
    if options.pred_dir is not None and len(options.dataset) != 1:
        raise UsageError("--pred-dir needs exactly one --dataset (the set the maps belong to)")
    if options.batch_size < 1:
        raise OptionError(f"--batch-size must be >= 1, got {options.batch_size}")
    if options.workers < 0:
        raise OptionError(f"--workers must be >= 0, got {options.workers}")
    if options.raw_maps and options.protocol != "standard":
        raise OptionError(f"--raw-maps applies to --protocol standard (--protocol {options.protocol} never "
                          "normalises)")
    check_set_names(options.dataset)


def check_set_names(exprs: list[str]) -> None:
    """OptionError when a --dataset name is not a registered set (suggesting the closest) or two sets would share
    a results name (one table column, one OUT/<model>/<set>/ folder)."""
    known = dataset_names()
    for expr in exprs:
        if expr.startswith(("folder:", "synthetic:")) or expr in known:
            continue
        close = difflib.get_close_matches(expr, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(known) + ", folder:PATH, synthetic:PATH"
        raise OptionError(f"--dataset {expr}: not a data set name; {hint}")
    names = [set_label(expr) for expr in exprs]
    for name in dict.fromkeys(names):
        sharing = [expr for expr, other in zip(exprs, names) if other == name]
        if len(sharing) > 1:
            raise OptionError(f"--dataset: {' and '.join(sharing)} would both be reported as {name!r} and "
                              "overwrite each other's results; rename one folder or evaluate it in another run "
                              "with a different --out")


def choose_checkpoints(options: EvalOptions) -> list[str]:
    """The checkpoints to run: --checkpoint, else (without --pred-dir) the default detector, announced in one line.
    UsageError for a malformed LABEL=... pair, --images with other than one checkpoint, or two sources sharing a
    label; utils.checkpoint.CheckpointError when the default detector is damaged."""
    for flag, pairs, form in (("--paper-row", options.paper_row, "LABEL=METHOD"),
                              ("--baseline", options.baseline, "LABEL=DIR")):
        for pair in pairs:
            if "=" not in pair:
                raise UsageError(f"{flag} takes {form}, got {pair!r}")
    checkpoints = options.checkpoint
    if not checkpoints and not options.pred_dir:
        path, note = default_detector()
        print(f"test.py: no --checkpoint: {note}", flush=True)
        checkpoints = [str(path)]
    checkpoints = checkpoints or []
    if options.images is not None and (len(checkpoints) != 1 or options.baseline):
        raise UsageError("--images runs one checkpoint (no --baseline)")
    labels = checkpoint_labels(checkpoints) + [pair.split("=", 1)[0] for pair in options.baseline]
    if len(set(labels)) < len(labels):
        raise UsageError(f"two sources share a label: {', '.join(labels)}")
    return checkpoints


def checkpoint_labels(paths: list[str]) -> list[str]:
    """File stems, prefixed with the parent folder when two stems collide (printable: bytes that are not UTF-8 as
    \\xNN, for the table, the figure and the output folders)."""
    stems = [Path(p).stem for p in paths]
    return [printable(f"{Path(p).parent.name}-{s}" if stems.count(s) > 1 else s) for p, s in zip(paths, stems)]


def eval_settings(options: EvalOptions, device: torch.device) -> EvalSettings:
    """The evaluation settings the options ask for, on `device`."""
    return EvalSettings(protocol=get_protocol(options.protocol, options.raw_maps), device=device, amp=options.amp,
                        batch_size=options.batch_size, workers=options.workers, channels_last=options.channels_last,
                        img_size=options.img_size or DEFAULT_IMG_SIZE, data_root=options.data_root,
                        save_maps=options.save_maps, grid=options.grid, split_file=options.split_file,
                        flip_average=options.flip_average)

