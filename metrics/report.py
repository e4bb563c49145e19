"""Reporting evaluation results: results.json, per-image CSVs, the paper's table beside the paper's numbers
(metrics.paper_results) and the PR-curve figure."""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from metrics.paper_results import PAPER_SETS, TABLE_TITLES, paper_row
from utils.checkpoint import current_umask
from utils.log import printable
from utils.plots import plot_pr_curves

SUMMARY_KEYS = ("mae", "fbeta", "iou")


def write_results(entries: list[dict], path: Path, run: dict) -> Path:
    """Atomically write results.json, with the permissions of a new file under the umask (0644 under 022): the
    run description and one entry per (model, data set). Refuses an entry with a NaN or infinite metric
    (ValueError naming it) rather than write it; a failed write (OSError) leaves the previous file."""
    not_finite = [f"{e['model']} on {e['dataset']}: {key}" for e in entries for key, value in e.items()
                  if isinstance(value, float) and not math.isfinite(value)]
    if not_finite:
        raise ValueError(f"{path}: not written, metrics that are not finite numbers: {', '.join(not_finite)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".results.", suffix=".json", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w") as f:
            json.dump(_printable_strings({"run": run, "results": entries}), f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _printable_strings(value: Any) -> Any:
    """`value` with every string in it (keys too) printable (utils.log): file names that are not UTF-8 as \\xNN."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_printable_strings(k): _printable_strings(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable_strings(v) for v in value]
    return value


def read_results(path: str | Path) -> list[dict]:
    """The entries of a results.json written by test.py."""
    try:
        return json.loads(Path(path).read_text())["results"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a results.json written by test.py ({exc})") from None


def write_per_image_csv(rows: list[dict], path: Path) -> None:
    """One row per image (floats with 6 decimals, None as an empty cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else "" if v is None
                                 else printable(v) if isinstance(v, str) else v) for k, v in row.items()})


def summary_line(entry: dict) -> str:
    """One console line of a results.json entry: MAE, F-beta, IoU and the images scored."""
    excluded = len(entry["excluded"])
    return (f"{entry['model']} on {entry['dataset']} ({entry['protocol']}): MAE {entry['mae']:.4f}  "
            f"F-beta {entry['fbeta']:.4f}  IoU {entry['iou']:.4f}  ({entry['n_images']} images"
            + (f", {excluded} excluded: size mismatch)" if excluded else ")"))


def pr_figure(entries: list[dict], path: Path, title: str = "") -> Path:
    """PR curves of all entries: one panel per data set, one line per model."""
    curves: dict[str, dict[str, dict]] = {}
    for entry in entries:
        curves.setdefault(entry["dataset"], {})[entry["model"]] = entry["pr_curve"]
    return plot_pr_curves(curves, path, title)


def _cell(scores: tuple[float | None, ...] | None) -> str:
    if scores is None:
        return "-"
    return " / ".join("-" if s is None else f"{s:.3f}".replace("0.", ".", 1) for s in scores)


def _difference(ours: tuple[float, ...], paper: tuple[float, ...] | None) -> str:
    if paper is None:
        return "-"
    return " / ".join(f"{o - p:+.3f}".replace("0.", ".", 1) for o, p in zip(ours, paper))


def markdown_table(entries: list[dict], sets: list[str], table: str = "I",
                   paper_rows: dict[str, str] | None = None, extra_paper_methods: list[str] = ()) -> str:
    """The paper's layout: MAE / F-beta / IoU per set, each model's paper row and the difference below it.

    paper_rows maps a model label to its method name in the paper (default: the label itself). A paper row
    is shown only when the paper reports at least one of `sets`.
    """
    paper_rows = paper_rows or {}
    header = "| model | " + " | ".join(f"{s} MAE / Fβ / IoU" for s in sets) + " |"
    lines = [header, "|" + "---|" * (len(sets) + 1)]
    models = list(dict.fromkeys(e["model"] for e in entries))
    for model in models:
        ours = {e["dataset"]: tuple(e[k] for k in SUMMARY_KEYS) for e in entries if e["model"] == model}
        protocol = next(e["protocol"] for e in entries if e["model"] == model)
        lines.append(f"| {model} (measured, {protocol}) | " + " | ".join(_cell(ours.get(s)) for s in sets) + " |")
        method = paper_rows.get(model, model)
        paper = paper_row(method, table)
        if paper is not None and any(s in paper for s in sets):
            lines.append(f"| {method} (paper, {TABLE_TITLES[table]}) | "
                         + " | ".join(_cell(paper.get(s)) for s in sets) + " |")
            lines.append("| difference (ours - paper) | " + " | ".join(
                _difference(ours[s], paper.get(s)) if s in ours else "-" for s in sets) + " |")
    for method in extra_paper_methods:
        paper = paper_row(method, table)
        if paper is None:
            raise ValueError(f"{method!r} is not a method of {TABLE_TITLES[table]}")
        lines.append(f"| {method} (paper) | " + " | ".join(_cell(paper.get(s)) for s in sets) + " |")
    return "\n".join(lines)


def region_table(entries: list[dict]) -> str | None:
    """MAE / F-beta / IoU on the whole image, the homogeneous and the textured pixels (metrics.regions),
    one row per model and set that has region masks; None when no entry has them."""
    split = [e for e in entries if e.get("regions")]
    if not split:
        return None
    lines = ["| model | set | whole image MAE / Fβ / IoU | homogeneous MAE / Fβ / IoU (share of pixels) | "
             "textured MAE / Fβ / IoU |", "|---|---|---|---|---|"]
    for e in split:
        homogeneous, textured = e["regions"]["homogeneous"], e["regions"]["textured"]
        lines.append(f"| {e['model']} | {e['dataset']} | {_cell(tuple(e[k] for k in SUMMARY_KEYS))} | "
                     f"{_cell(tuple(homogeneous[k] for k in SUMMARY_KEYS))} ({homogeneous['share']:.1%}) | "
                     f"{_cell(tuple(textured[k] for k in SUMMARY_KEYS))} |")
    return "\n".join(lines)


def paper_set_order(names: list[str]) -> list[str]:
    """Data-set labels with the paper's sets first, in the paper's order."""
    known = [s for s in PAPER_SETS if s in names]
    return known + [n for n in names if n not in known]
