"""Evaluation speed: metric computation per map (both protocols, one thread) against the authors' approach,
and end-to-end test.py throughput with a resnest14d DFFNet on the CPU.

  python bench/eval_speed.py [--quick]      -> table on stdout, bench/results/eval_speed.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from datasets.synthetic import generate_dataset  # noqa: E402
from engine.evaluate import EvalSettings, evaluate_model  # noqa: E402
from metrics.protocol import PROTOCOLS, OfficialMetrics, StandardMetrics  # noqa: E402
from models import build_model  # noqa: E402

SIZES = {"CUHK 640x427": (427, 640), "EBD 1600x1024": (1024, 1600)}


def sample_pair(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth prediction and a blob-shaped GT, like a real map pair."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, h // 32 + 1, w // 32 + 1, generator=gen)
    field = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    gt = (field > 0.5).float()
    pred = (field + 0.15 * torch.randn(h, w, generator=gen)).clamp(0, 1)
    return pred, gt


def authors_approach(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """The authors' loops, minimally: F_score1's 255-threshold sweep per image and IoU by np.concatenate."""
    all_gt, all_mask = np.array([0]), np.array([0])
    for pred, gt in pairs:
        (pred - gt).abs().mean().item()
        y_pred, y = 1 - (pred >= 0.5).float(), 1 - gt
        for threshold in torch.linspace(0, 1, 255):
            y_temp = (y_pred >= threshold).float()
            tp = (y_temp * y).sum()
            p, r = tp / (y_temp.sum() + 1e-20), tp / (y.sum() + 1e-20)
            (1.3 * p * r / (0.3 * p + r + 1e-10)).item()
        all_gt = np.concatenate((all_gt, (1 - (gt > 0.5).float()).numpy().reshape(-1)), 0)
        all_mask = np.concatenate((all_mask, (1 - (pred > 0.5).float()).numpy().reshape(-1)), 0)
    inter = ((all_mask[1:] == 1) & (all_gt[1:] == 1)).sum()
    float(inter) / float((all_mask[1:] == 1).sum() + (all_gt[1:] == 1).sum() - inter)


def time_per_image(run, pairs, repeats: int) -> float:
    """Median seconds per image over `repeats` passes over the pairs."""
    run(pairs[:1])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(pairs)
        times.append((time.perf_counter() - start) / len(pairs))
    return statistics.median(times)


def accumulate(factory):
    def run(pairs):
        metrics = factory()
        for i, (pred, gt) in enumerate(pairs):
            metrics.update(pred, gt, str(i))
        metrics.summary()
    return run


def end_to_end(n: int, workers: int) -> dict:
    """test.py's engine on a synthetic 320x320 set with an untrained resnest14d DFFNet, CPU, all cores."""
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp) / "syn", n=n, seed=0, size=320, workers=workers)
        model = build_model("dffnet", backbone="resnest14d").eval()
        settings = EvalSettings(protocol=PROTOCOLS["official"], batch_size=8, workers=workers, grid=0)
        evaluate_model(model, "warmup", "-", f"synthetic:{tmp}/syn", settings, Path(tmp) / "out")
        start = time.perf_counter()
        evaluate_model(model, "bench", "-", f"synthetic:{tmp}/syn", settings, Path(tmp) / "out")
        seconds = time.perf_counter() - start
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds, "threads": torch.get_num_threads(),
            "workers": workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few images and repeats (a check, not a measurement)")
    parser.add_argument("--out", default=str(ROOT / "bench/results/eval_speed.json"))
    args = parser.parse_args()
    n_maps, repeats, n_e2e = (3, 2, 8) if args.quick else (10, 5, 48)
    torch.set_num_threads(1)
    rows = []
    for label, (h, w) in SIZES.items():
        pairs = [sample_pair(h, w, seed) for seed in range(n_maps)]
        for method, run in (("official (ours)", accumulate(OfficialMetrics)),
                            ("official EBD rule (ours)", accumulate(lambda: OfficialMetrics((320, 320)))),
                            ("standard incl. S/E-measure (ours)", accumulate(StandardMetrics)),
                            ("authors' loops (baseline)", authors_approach)):
            seconds = time_per_image(run, pairs, repeats if "authors" not in method else 1)
            rows.append({"maps": label, "method": method, "ms_per_image": seconds * 1000,
                         "images_per_s": 1 / seconds})
    e2e = end_to_end(n_e2e, workers=min(2, os.cpu_count() or 1))
    result = {"machine": machine(), "metric_threads": 1, "quick": args.quick, "maps_per_measurement": n_maps,
              "metrics": rows, "end_to_end": e2e, "target": "official metrics for a 1600x1024 map < 20 ms, one core"}
    print(f"machine: {result['machine']['cpu']} ({result['machine']['cpu_count']} cores), metrics on 1 thread")
    print("| maps | method | ms / image | images / s |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['maps']} | {row['method']} | {row['ms_per_image']:.1f} | {row['images_per_s']:.1f} |")
    print(f"\nend to end (test.py engine, resnest14d DFFNet, 320x320 synthetic, CPU, {e2e['threads']} threads, "
          f"{e2e['workers']} workers): {e2e['images_per_s']:.1f} images/s over {e2e['images']} images")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
