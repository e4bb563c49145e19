"""Inference speed of the shipped CPU model beside the paper's network, measured in the same run.

    python bench/shipped_speed.py [--repeats 10] [--batch-size 1] [--quick]

Rows: the shipped DFFNet (checkpoint/release/, its backbone at its training input size, its own weights) and
the authors' architecture, dffnet / resnest101e at 320 px (random weights: speed does not depend on them),
each in fp32 and, where the CPU runs bf16 in hardware, bf16 autocast + channels_last. Reported: the median
seconds per batch of `--repeats` timed forwards after two untimed ones, and images per second; the speed-up
of the shipped model over the paper's network at the same precision. Preprocessing (decoding, resizing) is not
included. Writes bench/results/shipped_speed.json naming the machine. --quick: 2 repeats, resnest14d instead of
resnest101e (only checks that the script runs).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from models import build_model, load_model  # noqa: E402
from models.inference import input_spec  # noqa: E402
from models.shipped import SHIPPED_CHECKPOINT  # noqa: E402
from utils.runtime import autocast, bf16_is_fast  # noqa: E402

PAPER_SIZE = 320


def seconds_per_batch(model: torch.nn.Module, batch: torch.Tensor, amp: str, repeats: int) -> float:
    """Median seconds of one inference forward after two untimed ones."""
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            start = time.perf_counter()
            with autocast(batch.device, amp):
                model(batch)
            if i >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/shipped_speed[_quick].json)")
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    device = torch.device("cpu")
    torch.manual_seed(0)
    shipped = load_model(args.checkpoint).eval()
    shipped_size = input_spec(shipped).img_size
    paper_backbone = "resnest14d" if args.quick else "resnest101e"
    networks = {f"shipped: dffnet / {shipped.config['backbone']} at {shipped_size} px": (shipped, shipped_size),
                f"paper: dffnet / {paper_backbone} at {PAPER_SIZE} px": (build_model("dffnet", paper_backbone).eval(),
                                                                        PAPER_SIZE)}
    precisions = {"fp32": ("off", False)}
    if bf16_is_fast(device):
        precisions["bf16+channels_last"] = ("bf16", True)
    info = machine(device)
    print(f"machine: {info['cpu']}, {info['cpu_count']} CPUs, {info['torch_threads']} torch threads, "
          f"torch {info['torch']}; batch {args.batch_size}, median of {repeats}")
    rows = []
    for precision, (amp, channels_last) in precisions.items():
        for label, (model, size) in networks.items():
            memory_format = torch.channels_last if channels_last else torch.contiguous_format
            model = model.to(memory_format=memory_format)
            batch = torch.randn(args.batch_size, 3, size, size).contiguous(memory_format=memory_format)
            seconds = seconds_per_batch(model, batch, amp, repeats)
            rows.append({"network": label, "precision": precision, "img_size": size, "seconds_per_batch": seconds,
                         "images_per_second": args.batch_size / seconds})
    header = f"{'network':<44} {'precision':<20} {'s / batch':>10} {'images / s':>11} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        paper = next(r for r in rows if r["precision"] == row["precision"] and r["network"].startswith("paper"))
        speedup = paper["seconds_per_batch"] / row["seconds_per_batch"]
        row["speedup_over_paper_network"] = speedup
        print(f"{row['network']:<44} {row['precision']:<20} {row['seconds_per_batch']:>10.3f} "
              f"{row['images_per_second']:>11.2f} {speedup:>8.1f}x")
    out = Path(args.out or ROOT / "bench" / "results" / f"shipped_speed{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "batch_size": args.batch_size, "repeats": repeats, "rows": rows},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
