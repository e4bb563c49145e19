"""What a depth teacher must know to reach a given AbsRel / delta < 1.25 on the synthetic scenes.

Renders held-out synthetic scenes (datasets.scenes, the same generator as tools/make_synthetic.py) and scores
maps built from what the generator knows, with the metric train_depth.py reports (per-image least-squares scale
>= 0 and shift on inverse depth, metrics.depth):
  - constant: one value everywhere (the trivial baseline);
  - true order: the per-image rank of the true inverse depth (nothing but the depth order of the pixels);
  - true depth x layer noise: every surface's inverse depth off by a random factor exp(N(0, sigma));
  - figure / ground: objects 1, backdrop 0, ground plane growing linearly below the horizon (no depth values,
    only which surface a pixel belongs to);
  - defocus magnitude: |1/z - 1/z_focus|, what a perfect blur estimator measures (it cannot tell in front of the
    focal plane from behind it).
Scenes with a ground plane and without one are also scored apart.

    python bench/depth_oracles.py [--n 128 --seed 101 --size 160] [--json bench/results/depth_oracles.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402
from datasets.optics import Rendering  # noqa: E402
from datasets.scenes import generate_image  # noqa: E402
from datasets.synthetic import is_wide_dof  # noqa: E402
from metrics.depth import relative_depth_errors  # noqa: E402
from utils.log import progress  # noqa: E402

NOISE_SIGMAS = (0.1, 0.25, 0.5)


def figure_ground_map(rendering: Rendering, meta: dict) -> np.ndarray:
    """Objects 1, backdrop 0, ground (row - horizon) / (2 x height): the surfaces, not their depths."""
    height = rendering.depth_m.shape[0]
    rows = np.broadcast_to(np.arange(height, dtype=np.float64)[:, None] + 0.5, rendering.depth_m.shape)
    out = np.zeros(rendering.depth_m.shape)
    for index, layer in enumerate(meta["layers"]):
        here = rendering.front_layer == index
        if layer["kind"] == "object":
            out[here] = 1.0
        elif layer["kind"] == "ground":
            out[here] = np.clip((rows[here] - layer["horizon_row"]) / (2 * height), 0.005, None)
    return out


def oracle_maps(rendering: Rendering, meta: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The maps scored for one scene, by name."""
    inverse = 1.0 / rendering.depth_m.astype(np.float64)
    focus = 1.0 / meta["camera"]["focus_distance_m"]
    maps = {"constant": np.ones_like(inverse),
            "true order (per-image rank)": np.unique(inverse, return_inverse=True)[1].reshape(inverse.shape) + 1.0}
    for sigma in NOISE_SIGMAS:
        factor = np.exp(rng.normal(0.0, sigma, rendering.front_layer.max() + 1))
        maps[f"true depth x layer noise, sigma {sigma}"] = inverse * factor[rendering.front_layer]
    maps["figure / ground (objects near, backdrop far)"] = figure_ground_map(rendering, meta)
    maps["defocus magnitude, abs(1/z - 1/z_focus)"] = np.abs(inverse - focus)
    return maps


def score_oracles(n: int, seed: int, size: int, wide_dof: float = 0.1) -> dict[str, dict[str, float]]:
    """Mean AbsRel / delta1 of every oracle map over scenes 0..n-1 of `seed`, on all scenes and on those with and
    without a ground plane."""
    rng = np.random.default_rng(0)
    rows: dict[str, list[tuple[float, float, bool]]] = {}
    for index in progress(range(n), desc="scenes"):
        rendering, meta = generate_image(seed, index, size, is_wide_dof(index, wide_dof))
        has_ground = any(layer["kind"] == "ground" for layer in meta["layers"])
        target = torch.from_numpy(1.0 / rendering.depth_m.astype(np.float32))[None, None]
        for name, prediction in oracle_maps(rendering, meta, rng).items():
            errors = relative_depth_errors(torch.from_numpy(prediction.astype(np.float32))[None, None], target)
            rows.setdefault(name, []).append((errors["abs_rel"].item(), errors["delta1"].item(), has_ground))
    table = {}
    for name, values in rows.items():
        scores = np.array(values)
        ground = scores[:, 2] > 0
        table[name] = {"abs_rel": scores[:, 0].mean(), "delta1": scores[:, 1].mean(),
                       "ground_abs_rel": scores[ground, 0].mean(), "ground_delta1": scores[ground, 1].mean(),
                       "no_ground_abs_rel": scores[~ground, 0].mean(), "no_ground_delta1": scores[~ground, 1].mean(),
                       "scenes_with_ground": int(ground.sum())}
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--seed", type=int, default=101, help="101: the held-out set the depth teachers are scored on")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--json", default="bench/results/depth_oracles.json")
    args = parser.parse_args(argv)
    table = score_oracles(args.n, args.seed, args.size)
    first = next(iter(table.values()))
    print(f"{args.n} synthetic scenes (seed {args.seed}, {args.size} px), {first['scenes_with_ground']} with a ground "
          "plane; AbsRel / delta<1.25 after per-image scale (>= 0) and shift on inverse depth")
    print("| map | all scenes | with ground | without ground |\n|---|---|---|---|")
    for name, s in table.items():
        print(f"| {name} | {s['abs_rel']:.3f} / {s['delta1']:.3f} | {s['ground_abs_rel']:.3f} / "
              f"{s['ground_delta1']:.3f} | {s['no_ground_abs_rel']:.3f} / {s['no_ground_delta1']:.3f} |")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "machine": machine(), "oracles": table}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
