"""How decidable are the labels? Sharpness statistics of a real DBD set next to the synthetic generator.

    python bench/defocus_calibration.py [--real CUHK-TR-1 --data-root data --split-file LIST]
                                        [--sizes 128 160 320] [--n 150] [--img-size 320]

For every image, at the resolution the network sees (real photos resized to --img-size square, as
in training; synthetic images at their generated size), with E = |Laplacian| of the grey image:
- log-ratio: ln(mean E inside the in-focus mask / mean E inside the blurred mask), both masks eroded
  by 1 % of the width so that edges between the regions do not count. Large = the in-focus region is
  visibly sharper than the blurred one.
- pixel AUC: how well the local sharpness (E averaged over a 5x5 window) alone ranks in-focus above
  blurred pixels; 0.5 = not at all, 1 = perfectly.
Images with less than 2 % of either class are left out (all-in-focus images have no ratio).
For the synthetic sets, which know every pixel's circle of confusion, it also reports the share of
pixels whose CoC radius lies between 0.5x and 2x the label threshold (labels that hinge on a blur
difference of a pixel or less) and the median of each image's largest CoC radius / width.
Prints the medians and quartiles, writes bench/results/defocus_calibration.json and a figure of the
distributions (docs/figures/defocus_calibration.png).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import build_dataset  # noqa: E402
from datasets.polarity import high_frequency_energy  # noqa: E402
from datasets.synthetic import generate_dataset  # noqa: E402
from datasets.transforms import denormalise  # noqa: E402

MIN_SHARE = 0.02


def image_statistics(grey: np.ndarray, in_focus: np.ndarray) -> tuple[float, float] | None:
    """(log-ratio, pixel AUC) of one grey image in [0,1] and its mask (1 = in-focus), or None."""
    energy = high_frequency_energy(grey)
    erode = max(1, round(0.01 * grey.shape[1]))
    kernel = np.ones((2 * erode + 1, 2 * erode + 1), np.uint8)
    inside = cv2.erode(in_focus.astype(np.uint8), kernel).astype(bool)
    outside = cv2.erode(1 - in_focus.astype(np.uint8), kernel).astype(bool)
    if min(inside.mean(), outside.mean()) < MIN_SHARE:
        return None
    ratio = float(np.log((energy[inside].mean() + 1e-6) / (energy[outside].mean() + 1e-6)))
    local = cv2.blur(energy, (5, 5))
    ranks = rankdata(np.concatenate([local[inside], local[outside]]))
    n_in, n_out = int(inside.sum()), int(outside.sum())
    auc = float((ranks[:n_in].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))
    return ratio, auc


def dataset_statistics(dataset) -> dict:
    """Statistics of every usable image of a training-split data set (masks 1 = in-focus)."""
    ratios, aucs = [], []
    for index in range(len(dataset)):
        item = dataset[index]
        rgb = np.ascontiguousarray(denormalise(item["image"]).permute(1, 2, 0).numpy())
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        stats = image_statistics(grey, item["mask"][0].numpy())
        if stats is not None:
            ratios.append(stats[0])
            aucs.append(stats[1])
    return {"images": len(dataset), "used": len(ratios), "log_ratio": ratios, "pixel_auc": aucs}


def blur_statistics(folder: Path) -> dict:
    """Share of pixels within a factor 2 of the label threshold, and each image's largest CoC / width."""
    meta = json.loads((folder / "meta.json").read_text())
    threshold, near, largest = meta["coc_threshold_px"], [], []
    for record in meta["images"]:
        camera = record["camera"]
        depth = cv2.imread(str(folder / "depth" / (Path(record["name"]).stem + ".png")), cv2.IMREAD_UNCHANGED)
        radius = camera["coc_scale_px"] * np.abs(1000.0 / depth - 1.0 / camera["focus_distance_m"])
        near.append(float(((radius > 0.5 * threshold) & (radius < 2 * threshold)).mean()))
        largest.append(float(radius.max()) / camera["width_px"])
    return {"near_threshold_share": round(float(np.mean(near)), 4),
            "median_largest_coc_per_width": round(float(np.median(largest)), 4)}


def summary(values: list[float]) -> dict:
    q1, median, q3 = np.percentile(values, [25, 50, 75]) if values else (np.nan,) * 3
    return {"median": round(float(median), 3), "q1": round(float(q1), 3), "q3": round(float(q3), 3)}


def draw(results: dict[str, dict], path: Path) -> None:
    """Two panels: the cumulative distributions of the log-ratio and of the pixel AUC."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, res in results.items():
        style = dict(lw=2.5, color="black") if not name.startswith("synthetic") else dict(lw=1.6)
        for ax, key in zip(axes, ("log_ratio", "pixel_auc")):
            values = np.sort(res[key])
            ax.plot(values, np.linspace(0, 1, len(values)), label=f"{name} (median {np.median(values):.2f})",
                    **style)
    axes[0].set_xlabel("ln(HF energy in-focus / HF energy blurred), per image")
    axes[1].set_xlabel("pixel AUC of local sharpness for the mask, per image")
    for ax in axes:
        ax.set_ylabel("share of images")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("How visibly sharper the in-focus region is: real photos vs the synthetic generator")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", default="CUHK-TR-1", help="real training set (registry name or folder:PATH)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--split-file", default=None, help="CUHK-TE-1 name list (CUHK-TR-1 = the rest)")
    parser.add_argument("--img-size", type=int, default=320, help="resolution the real photos are measured at")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 320], help="synthetic sizes")
    parser.add_argument("--n", type=int, default=150, help="synthetic images per size")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--figure", default="docs/figures/defocus_calibration.png")
    parser.add_argument("--out", default="bench/results/defocus_calibration.json")
    args = parser.parse_args()

    start = time.time()
    results: dict[str, dict] = {}
    real = build_dataset(args.real, "train", root=args.data_root, img_size=args.img_size, augment=False,
                         split_file=args.split_file)
    results[f"{args.real} at {args.img_size}px"] = dataset_statistics(real)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            folder = generate_dataset(Path(tmp) / str(size), args.n, seed=args.seed, size=size,
                                      workers=args.workers)
            synthetic = build_dataset(f"synthetic:{folder}", "train", img_size=size, augment=False)
            results[f"synthetic at {size}px"] = {**dataset_statistics(synthetic), **blur_statistics(folder)}

    print(f"{'set':<28} {'images':>7} {'used':>5}   log-ratio median [q1, q3]   pixel AUC median [q1, q3]")
    table = {}
    for name, res in results.items():
        ratio, auc = summary(res["log_ratio"]), summary(res["pixel_auc"])
        table[name] = {"images": res["images"], "used": res["used"], "log_ratio": ratio, "pixel_auc": auc,
                       **{key: res[key] for key in ("near_threshold_share", "median_largest_coc_per_width")
                          if key in res}}
        print(f"{name:<28} {res['images']:>7} {res['used']:>5}   {ratio['median']:6.2f} "
              f"[{ratio['q1']:.2f}, {ratio['q3']:.2f}]         {auc['median']:.3f} [{auc['q1']:.3f}, {auc['q3']:.3f}]")
    for name, res in results.items():
        if "near_threshold_share" in res:
            print(f"{name}: {100 * res['near_threshold_share']:.1f} % of pixels within 0.5-2x the label threshold; "
                  f"median largest CoC = {100 * res['median_largest_coc_per_width']:.2f} % of the width")
    draw(results, Path(args.figure))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": table, "per_image": results, "seconds": round(time.time() - start, 1),
                               "args": vars(args)}, indent=1))
    print(f"figure {args.figure}, data {out} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
