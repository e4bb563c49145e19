"""Training speed: seconds per optimiser step and images/s of stage 1 and stage 2 (D-DFFNet).

    python bench/train_speed.py [--quick] [--device auto] [--steps 5] [--warmup 3]

Times `engine.train.train_step`, the exact step of train_single.py / train_kd.py (forward, loss,
backward, element-wise clamp, Adam; stage 2 adds the frozen teachers under inference mode, MiDaS
encoder only, and the projectors), on random 320x320 batches: stage 1 at batch 6, stage 2 at batch 2,
resnest101e student / teacher and MiDaS ResNeXt-101-32x8d (random weights: speed does not depend on
them). Each stage runs in fp32 and in bf16 autocast + channels_last, on the CPU and, when present,
on CUDA. Reported: the median s/step of `--steps` steps after `--warmup` untimed ones, images/s,
peak memory (CPU: peak RSS from /proc, reset per row; CUDA: max_memory_allocated), the step's FLOPs
(torch.utils.flop_counter) and the share of this machine's matmul peak (a large fp32 / bf16 matmul
measured in the same run) that the step achieves.

Against the authors' step, in this run: `--versus-authors` (on by default; `--only-versus-authors` runs
nothing else) times our step and the authors' step (bench/authors_step.py, their train_single.py /
train_kd.py step re-written on torch and timm alone) in this process, fp32, batch 2, 320 px, on the CPU,
alternating the two step by step for `--ratio-rounds` rounds after 2 untimed ones, and reports per stage
the ratio our s/step / their s/step: the median of the per-round ratios, their spread (min-max) and the
ratio of the two medians. Load from other jobs slows both alike, so the ratio compares across commits and
machines where absolute seconds do not.

Reference figures, fixed numbers from another run and not measured here: the authors' code timed on
another machine (stage-1 step at batch 6 = 9.4 s fp32; stage-2 step at batch 2 = 7.25 s, of which
MiDaS's full forward 2.0 s and the DFFNet teacher 0.96 s).
Targets: stage 1 <= 9.4 s fp32 and <= 4.7 s bf16; stage 2 <= 5.4 s fp32 and <= 2.9 s bf16.
`--quick` (resnest14d, MiDaS resnet18, 128x128, 1 timed step) only checks that the script works; its
numbers are not comparable with the reference figures. Writes bench/results/train_speed.json
(train_speed_quick.json with --quick).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.authors_step import build_authors_step  # noqa: E402
from bench.common import (build_stage, machine, peak_memory_gb, random_batches, reset_peak_memory,  # noqa: E402
                          stage_config, synchronise, time_steps)
from engine.train import train_step  # noqa: E402
from utils.distributed import DistributedContext  # noqa: E402
from utils.runtime import configure_backends, select_device  # noqa: E402

# reference figures from another run (the authors' code on another machine), not measured here
REFERENCE_SECONDS = {"stage 1": 9.4, "stage 2": 7.25}
TARGET_SECONDS = {("stage 1", "fp32"): 9.4, ("stage 1", "bf16+cl"): 4.7,
                  ("stage 2", "fp32"): 5.4, ("stage 2", "bf16+cl"): 2.9}
PRECISIONS = {"fp32": ("off", False), "bf16+cl": ("bf16", True)}


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """Measured throughput of an n x n x n matmul, TFLOP/s (best of `repeats`)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronise(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


def measure(stage_name: str, precision: str, cfg: argparse.Namespace, device: torch.device,
            matmul_peak: dict[str, float]) -> dict[str, Any]:
    """Build the stage, warm up, time `cfg.steps` steps, count one step's FLOPs."""
    amp, channels_last = PRECISIONS[precision]
    batch = 6 if stage_name == "stage 1" else 2
    config = stage_config(cfg, stage_name, batch, amp, channels_last, device)
    ctx = DistributedContext(rank=0, local_rank=0, world_size=1, device=device)
    reset_peak_memory(device)
    torch.manual_seed(0)
    stage = build_stage(stage_name, config, cfg, ctx)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    batches = random_batches(batch, cfg.img_size, cfg.warmup + cfg.steps + 1)
    step_seconds = time_steps(stage, batches[:-1], config, ctx, scaler)[cfg.warmup:]
    seconds = statistics.median(step_seconds)
    memory = peak_memory_gb(device)
    with FlopCounterMode(display=False) as counter:
        train_step(stage, iter(batches[-1:]), 1, config, ctx, scaler)
    flops = counter.get_total_flops()
    peak = matmul_peak["bf16" if amp == "bf16" else "fp32"]
    target = TARGET_SECONDS[(stage_name, precision)] if cfg.full else None
    return {"stage": stage_name, "precision": precision, "device": str(device), "batch": batch,
            "img_size": cfg.img_size, "seconds_per_step": seconds, "step_seconds": step_seconds,
            "images_per_second": batch / seconds,
            "peak_memory_gb": memory, "step_tflop": flops / 1e12, "achieved_tflops": flops / seconds / 1e12,
            "share_of_matmul_peak": flops / seconds / 1e12 / peak,
            "reference_seconds": REFERENCE_SECONDS[stage_name] if cfg.full else None,
            "target_seconds": target, "meets_target": (seconds <= target) if target is not None else None}


def versus_authors(stage_name: str, cfg: argparse.Namespace, rounds: int) -> dict[str, Any]:
    """Our train_step and the authors' step of `stage_name`, fp32, batch 2, on the CPU, alternated in this process
    (the order swapped every round); seconds of both and the per-round ratios ours / theirs."""
    device, batch = torch.device("cpu"), 2
    ctx = DistributedContext(rank=0, local_rank=0, world_size=1, device=device)
    torch.manual_seed(0)
    config = stage_config(cfg, stage_name, batch, "off", False, device)
    stage = build_stage(stage_name, config, cfg, ctx)
    stage.network.train()
    torch.manual_seed(0)
    authors = build_authors_step(stage_name, cfg.backbone, cfg.midas_encoder, cfg.midas_features)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    data = random_batches(batch, cfg.img_size, 1)[0]
    runs = {"ours": lambda: train_step(stage, iter([data]), 1, config, ctx, scaler),
            "authors": lambda: authors.step(data["image"], data["mask"])}
    seconds: dict[str, list[float]] = {"ours": [], "authors": []}
    for i in range(2 + rounds):
        for who in (("ours", "authors") if i % 2 == 0 else ("authors", "ours")):
            start = time.perf_counter()
            runs[who]()
            if i >= 2:
                seconds[who].append(time.perf_counter() - start)
    ratios = [o / a for o, a in zip(seconds["ours"], seconds["authors"], strict=True)]
    return {"stage": stage_name, "precision": "fp32", "device": "cpu", "batch": batch, "img_size": cfg.img_size,
            "rounds": rounds, "ours_seconds": seconds["ours"], "authors_seconds": seconds["authors"],
            "ratios": ratios, "median_ratio": statistics.median(ratios), "min_ratio": min(ratios),
            "max_ratio": max(ratios),
            "ratio_of_medians": statistics.median(seconds["ours"]) / statistics.median(seconds["authors"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small networks and images: a smoke run only")
    parser.add_argument("--device", default="auto", help="auto (CPU, and CUDA when present) | cpu | cuda")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps first: on the CPU the allocator takes about three steps to settle")
    parser.add_argument("--versus-authors", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the authors' step in this process (fp32, batch 2, CPU) and report the ratios")
    parser.add_argument("--only-versus-authors", action="store_true",
                        help="only the ratios to the authors' step (skips the table of our steps)")
    parser.add_argument("--ratio-rounds", type=int, default=5, help="timed rounds (ours + theirs) per stage")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/train_speed[_quick].json)")
    cfg = parser.parse_args()
    cfg.full = not cfg.quick
    cfg.backbone, cfg.midas_encoder, cfg.midas_features, cfg.img_size = (
        ("resnest14d", "resnet18", 64, 128) if cfg.quick else ("resnest101e", "resnext101_32x8d", 256, 320))
    if cfg.quick:
        cfg.steps, cfg.warmup, cfg.ratio_rounds = 1, 1, min(cfg.ratio_rounds, 2)
    devices = [torch.device("cpu")]
    if cfg.device == "auto" and torch.cuda.is_available():
        devices.append(select_device("cuda"))
    elif cfg.device != "auto":
        devices = [select_device(cfg.device)]

    rows, machines, versus = [], [], []
    if cfg.versus_authors or cfg.only_versus_authors:
        configure_backends(torch.device("cpu"))
        for stage_name in ("stage 1", "stage 2"):
            v = versus_authors(stage_name, cfg, cfg.ratio_rounds)
            versus.append(v)
            print(f"{stage_name} fp32 batch 2 {cfg.img_size} px, ours / authors' step: median {v['median_ratio']:.3f} "
                  f"(rounds {v['min_ratio']:.3f}-{v['max_ratio']:.3f}; ratio of medians {v['ratio_of_medians']:.3f}: "
                  f"{statistics.median(v['ours_seconds']):.2f} s / {statistics.median(v['authors_seconds']):.2f} s)",
                  flush=True)
    if cfg.only_versus_authors:
        devices = []
    for device in devices:
        configure_backends(device)
        size, repeats = (1024, 3) if cfg.quick else ((8192 if device.type == "cuda" else 2048), 5)
        matmul_peak = {"fp32": matmul_peak_tflops(device, torch.float32, size, repeats),
                       "bf16": matmul_peak_tflops(device, torch.bfloat16, size, repeats)}
        machines.append({**machine(device), "matmul_peak_tflops": matmul_peak})
        print(f"{device}: matmul peak fp32 {matmul_peak['fp32']:.3f} TFLOP/s, bf16 {matmul_peak['bf16']:.3f} TFLOP/s")
        for stage_name in ("stage 1", "stage 2"):
            for precision in PRECISIONS:
                row = measure(stage_name, precision, cfg, device, matmul_peak)
                rows.append(row)
                print(f"  {stage_name} {precision}: {row['seconds_per_step']:.3f} s/step", flush=True)

    if not machines:
        machines.append(machine(torch.device("cpu")))
    print(f"\nmachine: {machines[0]['cpu']}, {machines[0]['cpu_count']} cores, torch {torch.__version__} "
          f"with {torch.get_num_threads()} threads"
          + ("" if cfg.full else "   (--quick: resnest14d / MiDaS resnet18 at 128x128, NOT comparable with the reference figures)"))
    header = f"{'stage':8} {'precision':9} {'device':6} {'batch':>5} {'s/step':>8} {'img/s':>7} {'peak GB':>8} " \
             f"{'TFLOP/step':>10} {'% matmul peak':>13} {'ref s':>9} {'target s':>8}"
    if rows:
        print(header)
        print("-" * len(header))
    for r in rows:
        reference = f"{r['reference_seconds']:.2f}" if r["reference_seconds"] else "-"
        target = f"{r['target_seconds']:.2f}" + (" ok" if r["meets_target"] else " MISS") if r["target_seconds"] else "-"
        print(f"{r['stage']:8} {r['precision']:9} {r['device'][:6]:6} {r['batch']:>5} {r['seconds_per_step']:>8.3f} "
              f"{r['images_per_second']:>7.2f} {r['peak_memory_gb']:>8.2f} {r['step_tflop']:>10.3f} "
              f"{100 * r['share_of_matmul_peak']:>12.1f}% {reference:>9} {target:>8}")
    for v in versus:
        print(f"ours / authors' step, {v['stage']} fp32 batch 2 (this run, this machine): "
              f"median {v['median_ratio']:.3f}, rounds {v['min_ratio']:.3f}-{v['max_ratio']:.3f}")
    print("ref s: fixed figures from another run (the authors' code measured on another machine, not on this "
          "one): stage 1 batch 6 = 9.4 s/step fp32; stage 2 batch 2 = "
          "7.25 s/step (MiDaS full forward 2.0 s, DFFNet teacher 0.96 s)")

    out = Path(cfg.out) if cfg.out else ROOT / "bench" / "results" / ("train_speed_quick.json" if cfg.quick else "train_speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": cfg.quick, "machines": machines, "rows": rows,
                               "versus_authors": {"what": "our train_step / the authors' step (bench/authors_step.py), "
                                                          "timed alternately in this process, fp32, batch 2, CPU",
                                                  "machine": machine(torch.device("cpu")), "stages": versus},
                               "reference": {"source": "fixed figures from another run: the authors' code "
                                                       "measured on another machine, not in this run",
                                             "seconds_per_step": REFERENCE_SECONDS},
                               "targets": {f"{s} {p}": t for (s, p), t in TARGET_SECONDS.items()}}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
