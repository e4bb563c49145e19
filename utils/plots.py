"""Figures: precision-recall curves and line plots such as training curves (matplotlib, Agg), qualitative grids
and blur overlays (numpy / PIL)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

BLUR_TINT = np.array([255, 40, 40], dtype=np.float32)


def drawn_pr_points(recall: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """The points of a PR curve worth drawing: those of non-zero recall (precision is undefined at
    zero), and whether they form a curve (more than two distinct operating points) or, for a constant
    or binary map, isolated points."""
    keep = recall > 0
    distinct = np.unique(np.stack([recall[keep], precision[keep]], axis=1), axis=0)
    if len(distinct) <= 2:
        return distinct[:, 0], distinct[:, 1], False
    return recall[keep], precision[keep], True


def plot_pr_curves(curves: dict[str, dict[str, dict]], path: str | Path, title: str = "") -> Path:
    """One panel per data set, one line per method: curves[set][method] = {"precision", "recall"}.

    The blurred class is positive; the 0.5 operating point (threshold index 128) is marked. Points of
    zero recall (precision undefined) are left out, and a method with at most two operating points (a
    constant or binary map) is drawn as markers, not as a line that no threshold produces.
    """
    if not curves:
        raise ValueError("no PR curve to plot")
    path = Path(path)
    columns = min(3, len(curves))
    rows = math.ceil(len(curves) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.8 * rows), squeeze=False)
    for ax, (set_name, methods) in zip(axes.flat, curves.items()):
        for method, curve in methods.items():
            recall, precision = np.asarray(curve["recall"]), np.asarray(curve["precision"])
            shown_recall, shown_precision, is_curve = drawn_pr_points(recall, precision)
            if not is_curve:
                ax.plot(shown_recall, shown_precision, "s", label=method, markersize=5)
                continue
            (line,) = ax.plot(shown_recall, shown_precision, label=method, linewidth=1.5)
            middle = len(recall) // 2
            ax.plot(recall[middle], precision[middle], "o", color=line.get_color(), markersize=4)
        ax.set(title=set_name, xlabel="recall (blur)", ylabel="precision (blur)", xlim=(0, 1.01), ylim=(0, 1.01))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def blur_overlay(image: np.ndarray, in_focus: np.ndarray, strength: float = 0.55) -> np.ndarray:
    """uint8 RGB image with predicted blurred regions tinted red: in_focus is P(in-focus) in [0, 1], same H, W."""
    if image.shape[:2] != in_focus.shape:
        raise ValueError(f"overlay: image {image.shape[:2]} and map {in_focus.shape} differ in size")
    weight = (strength * (1.0 - in_focus.astype(np.float32)))[..., None]
    return (image.astype(np.float32) * (1 - weight) + BLUR_TINT * weight).round().astype(np.uint8)


def _tile(picture: np.ndarray, height: int) -> np.ndarray:
    """RGB uint8 tile of the given height (aspect kept) from an RGB image or a [0, 1] / uint8 grey map."""
    if picture.ndim == 2:
        grey = picture if picture.dtype == np.uint8 else (np.clip(picture, 0, 1) * 255).round().astype(np.uint8)
        picture = np.repeat(grey[..., None], 3, axis=2)
    width = max(1, round(picture.shape[1] * height / picture.shape[0]))
    return np.asarray(Image.fromarray(picture).resize((width, height), Image.Resampling.BILINEAR))


def labelled_grid(rows: list[list[np.ndarray]], labels: list[str] | None, path: str | Path, height: int = 160,
                  gap: int = 4) -> Path:
    """Save a grid: one row per sample, pictures (RGB images, [0, 1] or uint8 grey maps) side by side at a
    common height, with an optional column title above each column of the first row. Each column is as wide as
    its widest picture, and narrower pictures (a portrait among landscapes) are centred in it, so the columns line
    up under their titles."""
    if not rows:
        raise ValueError("qualitative grid: no sample")
    tiled = [[_tile(p, height) for p in row] for row in rows]
    header = 18 if labels else 0
    columns = max(len(row) for row in tiled)
    column_widths = [max(row[c].shape[1] for row in tiled if c < len(row)) for c in range(columns)]
    column_starts = [sum(column_widths[:c]) + gap * c for c in range(columns)]
    width = column_starts[-1] + column_widths[-1]
    canvas = np.full((header + len(tiled) * (height + gap) - gap, width, 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiled):
        y = header + r * (height + gap)
        for c, tile in enumerate(row):
            x = column_starts[c] + (column_widths[c] - tile.shape[1]) // 2
            canvas[y:y + height, x:x + tile.shape[1]] = tile
    picture = Image.fromarray(canvas)
    if labels:
        draw = ImageDraw.Draw(picture)
        for label, x in zip(labels, column_starts):
            draw.text((x + 2, 3), label, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


Line = tuple[Sequence[float], Sequence[float]]
SCORE_NAMES = {"val_mae": "MAE", "val_fbeta": "F-beta", "abs_rel": "AbsRel", "delta1": "δ<1.25"}


def plot_lines(panels: Mapping[str, Mapping[str, Line]], path: str | Path, *, xlabel: str, ylabel: str = "",
               styles: Mapping[str, dict[str, Any]] | None = None, vline: float | None = None,
               sharey: bool = False) -> Path:
    """One panel per entry of `panels` (its title), one line with markers per label: panels[title][label] =
    (xs, ys); a legend where a panel has more than one line. A label keeps its colour in every panel;
    `styles[label]` overrides its matplotlib keywords; `vline` marks one x in every panel. Written atomically."""
    if not panels:
        raise ValueError("no curve to plot")
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), sharey=sharey, squeeze=False)
    for ax, (panel, lines) in zip(axes[0], panels.items()):
        for label, (xs, ys) in lines.items():
            style = {"marker": "o", "ms": 4, "color": f"C{labels.index(label) % 10}", **(styles or {}).get(label, {})}
            ax.plot(xs, ys, label=label, **style)
        if vline is not None:
            ax.axvline(vline, color="black", lw=0.8, ls=":")
        ax.set(title=panel, xlabel=xlabel)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    axes[0][0].set_ylabel(ylabel)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def save_figure(fig: plt.Figure, path: Path, dpi: int = 120) -> Path:
    """Write `fig` to `path` through a temporary file (a reader never sees half a PNG) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    fig.savefig(partial, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    partial.replace(path)
    return path


def plot_training_curves(steps: list[dict[str, Any]], epochs: list[dict[str, Any]], path: str | Path,
                         scores: Sequence[str] = ()) -> Path:
    """A run's curves from its steps.csv and epochs.csv rows: the training loss (each step and each epoch's
    mean) and each validation column of `scores` that holds a value in a panel of its own, against the epoch."""
    per_epoch: dict[int, int] = {}
    for row in steps:
        per_epoch[int(row["epoch"])] = max(per_epoch.get(int(row["epoch"]), 0), int(row["step"]))
    step_x = [int(r["epoch"]) - 1 + int(r["step"]) / per_epoch[int(r["epoch"])] for r in steps]
    epoch_x = [int(r["epoch"]) for r in epochs]
    panels: dict[str, dict[str, Line]] = {"training loss": {
        "each step": (step_x, [float(r["loss"]) for r in steps]),
        "epoch mean": (epoch_x, [float(r["loss"]) for r in epochs])}}
    for column in scores:
        points = [(int(r["epoch"]), float(r[column])) for r in epochs if r.get(column)]
        name = SCORE_NAMES.get(column, column)
        if points:
            panels[f"validation {name}"] = {name: ([x for x, _ in points], [y for _, y in points])}
    return plot_lines(panels, path, xlabel="epoch", styles={"each step": {"marker": "", "lw": 0.6, "alpha": 0.4}})
