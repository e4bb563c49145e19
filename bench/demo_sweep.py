"""The measured sweep behind the demo's from-scratch stage-1 settings (demo.sh).

    python bench/demo_sweep.py [--size 160] [--train-n 1024] [--test-n 64] [--only NAME ...]

Generates a synthetic training and test set (datasets/synthetic.py, seeds 1 and 2 as the demo), then
for every configuration below trains stage-1 DFFNet from scratch with train_single.py for the same
number of optimiser steps and scores it with test.py (official protocol) on the test set. Each run is
kept under bench/results/demo_sweep/NAME/, so an interrupted sweep continues where it stopped. Prints
MAE / F-beta / IoU, the training time and the final training loss, and writes
bench/results/demo_sweep.json. Run it alone: the times are wall-clock seconds on this machine.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> train_single.py flags varied by the sweep (the rest: BASE_FLAGS).
CONFIGS: dict[str, list[str]] = {
    "resnet18 lr1e-3 edge-mean": ["--backbone", "resnet18", "--lr", "1e-3", "--edge-reduction", "mean"],
    "resnet18 lr1e-3 edge-sum": ["--backbone", "resnet18", "--lr", "1e-3", "--edge-reduction", "sum"],
    "resnet18 lr1e-3 bce": ["--backbone", "resnet18", "--lr", "1e-3", "--loss", "bce"],
    "resnet18 lr3e-3 edge-mean": ["--backbone", "resnet18", "--lr", "3e-3", "--edge-reduction", "mean"],
    "resnet18 lr1e-3 edge-mean 128px": ["--backbone", "resnet18", "--lr", "1e-3", "--edge-reduction", "mean",
                                        "--img-size", "128"],
    "resnest14d lr1e-3 edge-mean": ["--backbone", "resnest14d", "--lr", "1e-3", "--edge-reduction", "mean"],
}
BASE_FLAGS = ["--pretrained", "none", "--batch-size", "8", "--amp", "bf16", "--channels-last", "--workers", "1"]


def run(command: list[str], log: Path) -> None:
    with log.open("w") as handle:
        done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}); see {log}")


def ensure_set(folder: Path, n: int, seed: int, size: int) -> None:
    if (folder / "meta.json").is_file():
        return
    run([sys.executable, "tools/make_synthetic.py", str(folder), "--n", str(n), "--seed", str(seed), "--size",
         str(size), "--workers", "2", "--overwrite"], folder.with_suffix(".log"))


def last_training_loss(log_dir: Path) -> float:
    with (log_dir / "epochs.csv").open() as handle:
        return float(list(csv.DictReader(handle))[-1]["loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=160, help="generated and network resolution")
    parser.add_argument("--train-n", type=int, default=1024)
    parser.add_argument("--test-n", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (steps = epochs x train-n / 8)")
    parser.add_argument("--only", nargs="+", default=None, choices=list(CONFIGS), help="run these configurations")
    parser.add_argument("--out", default="bench/results/demo_sweep")
    args = parser.parse_args()

    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    train, test = out / f"train{args.size}", out / f"test{args.size}"
    ensure_set(train, args.train_n, 1, args.size)
    ensure_set(test, args.test_n, 2, args.size)
    rows = {}
    for name in args.only or CONFIGS:
        folder = out / name.replace(" ", "_")
        result_file = folder / "eval" / "results.json"
        if not result_file.is_file():
            folder.mkdir(exist_ok=True)
            start = time.time()
            run([sys.executable, "train_single.py", "--train-set", f"synthetic:{train}", "--img-size", str(args.size),
                 "--epochs", str(args.epochs), "--schedule-epochs", str(args.epochs), *BASE_FLAGS, *CONFIGS[name],
                 "--save", str(folder / "DFFNet.pth"), "--overwrite", "--log-dir", str(folder / "logs")],
                folder / "train.log")
            seconds = time.time() - start
            img_size = CONFIGS[name][CONFIGS[name].index("--img-size") + 1] if "--img-size" in CONFIGS[name] \
                else str(args.size)
            run([sys.executable, "test.py", "--checkpoint", str(folder / "DFFNet.pth"), "--dataset",
                 f"synthetic:{test}", "--img-size", img_size, "--out", str(folder / "eval"), "--grid", "0"],
                folder / "test.log")
            (folder / "seconds.txt").write_text(f"{seconds:.1f}\n")
        scores = json.loads(result_file.read_text())["results"][0]
        rows[name] = {"mae": scores["mae"], "fbeta": scores["fbeta"], "iou": scores["iou"],
                      "train_seconds": float((folder / "seconds.txt").read_text()),
                      "final_train_loss": last_training_loss(folder / "logs")}
        row = rows[name]
        print(f"{name:<34} MAE {row['mae']:.3f}  F {row['fbeta']:.3f}  IoU {row['iou']:.3f}  "
              f"{row['train_seconds']:6.0f} s  loss {row['final_train_loss']:.3f}", flush=True)
    (ROOT / "bench/results/demo_sweep.json").write_text(json.dumps(
        {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "size": args.size,
         "train_n": args.train_n, "epochs": args.epochs, "base_flags": BASE_FLAGS, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
