"""Training speed of the shipped depth teachers' recipes on this machine: seconds per step in fp32 and in bf16,
and what the recipe's steps take at that pace.

    python bench/depth_teacher_speed.py [--steps 20] [--warmup 3] [--recipes resnet18 lite2]

Times engine.train.train_step on the depth teacher's stage exactly as train_depth.py builds it
(engine.depth.build_depth_stage: MiDaS v2.1, 64-channel decoder, the ordinal loss with gradient matching, Adam),
batch 8 at 160 px, on random images and depth maps with random weights (speed depends on neither), in fp32 and in
bf16 autocast (the recipes use bf16), with the threads torch has (set OMP_NUM_THREADS to choose). The recipes
(tools/train_depth_teacher.sh): resnet18, 14,336 steps from scratch (midas_synthetic_cpu.pth), and lite2,
3,072 steps of tf_efficientnet_lite2 (midas_lite2_synthetic_cpu.pth). Reported: the median s/step of --steps
steps after --warmup untimed ones, the bf16 speed-up, and steps x s/step as the recipe's training time; loading,
validation and generating the scenes are not included. bf16 speed depends most on whether the CPU has AMX, which
the output says. Writes bench/results/depth_teacher_speed.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, time_steps  # noqa: E402
from engine.config import DepthConfig, resolve  # noqa: E402
from engine.depth import build_depth_stage  # noqa: E402
from utils.distributed import DistributedContext  # noqa: E402

BATCH, SIZE = 8, 160
# recipe -> (encoder, training steps of tools/train_depth_teacher.sh)
RECIPES = {"resnet18": ("resnet18", 14_336), "lite2": ("tf_efficientnet_lite2", 3_072)}


def random_depth_batches(count: int) -> list[dict[str, torch.Tensor]]:
    """`count` batches of random images and depth maps (metres, 1-10), as the depth loader yields them."""
    generator = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(BATCH, 3, SIZE, SIZE, generator=generator),
             "depth": 1 + 9 * torch.rand(BATCH, 1, SIZE, SIZE, generator=generator)} for _ in range(count)]


def measure(recipe: str, amp: str, steps: int, warmup: int) -> dict[str, Any]:
    """Median seconds per training step of `recipe` in `amp` ("off" or "bf16")."""
    encoder, recipe_steps = RECIPES[recipe]
    config = resolve(DepthConfig(data="unused", encoder=encoder, features=64, img_size=SIZE, batch_size=BATCH,
                                 loss="ordinal", anchor_weight=0.0, amp=amp, device="cpu"))
    ctx = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    torch.manual_seed(0)
    stage = build_depth_stage(config, ctx)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    seconds = time_steps(stage, random_depth_batches(warmup + steps), config, ctx, scaler)[warmup:]
    per_step = statistics.median(seconds)
    return {"recipe": recipe, "encoder": encoder, "precision": "bf16" if amp == "bf16" else "fp32",
            "seconds_per_step": per_step, "step_seconds": seconds, "recipe_steps": recipe_steps,
            "recipe_minutes": recipe_steps * per_step / 60}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "depth_teacher_speed.json"))
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    on = machine(torch.device("cpu"))
    rows = [measure(recipe, amp, args.steps, args.warmup) for recipe in args.recipes for amp in ("off", "bf16")]
    print(f"{'recipe':<10} {'precision':<9} {'s/step':>7} {'recipe steps':>13} {'minutes':>8}")
    for row in rows:
        print(f"{row['recipe']:<10} {row['precision']:<9} {row['seconds_per_step']:>7.3f} "
              f"{row['recipe_steps']:>13,} {row['recipe_minutes']:>8.1f}")
    for recipe in args.recipes:
        fp32, bf16 = (next(r for r in rows if r["recipe"] == recipe and r["precision"] == p) for p in ("fp32", "bf16"))
        print(f"{recipe}: bf16 is {fp32['seconds_per_step'] / bf16['seconds_per_step']:.2f}x the speed of fp32")
    print(f"measured on: {on['cpu']}, AMX {'yes' if on['amx'] else 'no'}, AVX512-BF16 "
          f"{'yes' if on['avx512_bf16'] else 'no'}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
          "minutes = recipe steps x s/step (loading, validation and scene generation not included)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": on, "threads": torch.get_num_threads(), "batch": BATCH,
                                          "img_size": SIZE, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
