"""Model speed: forward and forward+backward time of a DBD network on this machine.

    python bench/model_speed.py [--model dffnet] [--backbone resnest101e] [--batch-size 6] [--img-size 320]
                                [--repeats 5] [--quick]

Rows: fp32 (NCHW) and bf16 autocast + channels_last (utils.runtime.autocast), each as inference forward
(eval, no_grad) and as a training step's forward+backward (train mode). The reference figures are fixed
numbers from another run, not measured here: the authors' DFFNet timed on another machine (forward,
batch 6, 320x320): 2.97 s fp32, 1.30 s bf16 + channels_last; they apply to dffnet / resnest101e /
batch 6 / 320 only. Prints a table and writes JSON under bench/results/ naming the machine. --quick uses
resnest14d, batch 2, 128x128, 2 repeats.
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
from models import build_model, list_models  # noqa: E402
from utils.runtime import autocast  # noqa: E402

# reference figures from another run (the authors' code on another machine), not measured here
REFERENCE_FORWARD_SECONDS = {"fp32": 2.97, "bf16+channels_last": 1.30}
BASELINE_SETTING = {"model": "dffnet", "backbone": "resnest101e", "batch_size": 6, "img_size": 320}
FULL_DEFAULTS = {"backbone": None, "batch_size": 6, "img_size": 320, "repeats": 5}
QUICK_DEFAULTS = {"backbone": "resnest14d", "batch_size": 2, "img_size": 128, "repeats": 2}
PRECISIONS = {"fp32": ("off", False), "bf16+channels_last": ("bf16", True)}


def timed(step, repeats: int) -> list[float]:
    """Seconds per call of `step`, after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def measure(model: torch.nn.Module, images: torch.Tensor, precision: str, repeats: int) -> dict:
    amp, channels_last = PRECISIONS[precision]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    images = images.contiguous(memory_format=memory_format)
    device = images.device

    def forward() -> None:
        with torch.no_grad(), autocast(device, amp):
            model(images)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        with autocast(device, amp):
            out = model(images)
            loss = out.logits.float().mean() + sum(side.float().mean() for side in out.sides)
        loss.backward()

    model.eval()
    forward_times = timed(forward, repeats)
    model.train()
    train_times = timed(forward_backward, repeats)
    return {"forward_s": statistics.median(forward_times), "forward_min_s": min(forward_times),
            "forward_backward_s": statistics.median(train_times), "forward_backward_min_s": min(train_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dffnet", choices=list_models())
    parser.add_argument("--backbone", default=None, help="timm backbone (default: the model's, resnest101e)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 6 (quick: 2)")
    parser.add_argument("--img-size", type=int, default=None, help="default 320 (quick: 128)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls after a warm-up (default 5, quick: 2)")
    parser.add_argument("--quick", action="store_true",
                        help="small check: resnest14d, batch 2, 128x128, 2 repeats (explicit flags still win)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/model_speed[_quick].json)")
    args = parser.parse_args()
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    out_path = Path(args.out or ROOT / "bench" / "results" / f"model_speed{'_quick' if args.quick else ''}.json")

    torch.manual_seed(0)
    model = build_model(args.model, args.backbone)
    setting = {"model": args.model, "backbone": model.config["backbone"], "batch_size": args.batch_size,
               "img_size": args.img_size}
    baseline_applies = setting == BASELINE_SETTING
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    info = machine()
    print(f"{args.model} / {setting['backbone']}: {sum(p.numel() for p in model.parameters()):,} parameters; "
          f"batch {args.batch_size} x {args.img_size}x{args.img_size}, {args.repeats} repeats (median)")
    print(f"machine: {info['cpu']}, {info['cpu_count']} CPUs, {info['torch_threads']} torch threads, "
          f"torch {info['torch']}")

    rows = {}
    for precision in PRECISIONS:
        rows[precision] = measure(model, images, precision, args.repeats)
        rows[precision]["reference_forward_s"] = REFERENCE_FORWARD_SECONDS[precision] if baseline_applies else None

    header = f"{'precision':<20} {'forward s':>10} {'reference fwd s':>15} {'speed-up':>9} {'fwd+bwd s':>10}"
    print(header)
    print("-" * len(header))
    for precision, row in rows.items():
        reference = row["reference_forward_s"]
        reference_text = f"{reference:.2f}" if reference else "n/a"
        speedup = f"{reference / row['forward_s']:.2f}x" if reference else "n/a"
        print(f"{precision:<20} {row['forward_s']:>10.3f} {reference_text:>15} {speedup:>9} "
              f"{row['forward_backward_s']:>10.3f}")
    print("reference: fixed figures from another run (the authors' code measured on another machine), "
          "not a measurement on this one")
    if not baseline_applies:
        print(f"(the reference figures are for {BASELINE_SETTING}; not comparable here)")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"machine": info, "setting": setting, "repeats": args.repeats,
                                    "quick": args.quick, "baseline_setting": BASELINE_SETTING,
                                    "results": rows}, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
