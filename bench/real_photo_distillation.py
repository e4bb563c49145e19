"""Does the paper's stage 2 help on real photos? D-DFFNet against its DFFNet teacher and a DFFNet trained as long.

    python bench/real_photo_distillation.py [--data-root data] [--seeds 42 43] [--jobs 2]
    python bench/real_photo_distillation.py --depth-teachers synthetic=A.pth lite2=B.pth --defocus-only
    python bench/real_photo_distillation.py --dry-run        # print the commands only

Per seed, on CUHK-TR-1-FIT (504 photos), with release 3's recipe (tf_efficientnet_lite2 from ImageNet, 224 px,
crops 0.5, batch 8, lr 3e-4, bf16), each run validated on CUHK-TR-1-VAL every 3 epochs:

    teacher         DFFNet, train_single.py, 18 epochs from ImageNet (the stage-1 model)
    D-DFFNet/LABEL  train_kd.py, 18 epochs from ImageNet, distilled from that teacher and the depth teacher LABEL
                    (--depth-teachers LABEL=PATH ...; by default the shipped synthetic-depth MiDaS)
    defocus only    with --defocus-only: train_kd.py --teachers defocus, the paper's ablation without depth
    DFFNet x2       train_single.py, 18 more epochs from the teacher's weights (--init): as many steps in all as
                    teacher + student, the control for "the student only trained longer"

Every model is scored at the end with test.py (official protocol) on CUHK-TR-1-VAL and on --extra-set when
given. Finished runs are kept (a marker beside each), so an interrupted comparison continues and a new variant
reuses the teachers. Prints a table (mean and per seed), writes JSON and a figure of the validation curves
against the steps since ImageNet, one panel per seed.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import machine, run_on_one_thread as run  # noqa: E402
from utils.plots import plot_lines  # noqa: E402

FIT, VAL = "CUHK-TR-1-FIT", "CUHK-TR-1-VAL"
EPOCHS, STEPS_PER_EPOCH = 18, 63
RECIPE = ["--train-set", FIT, "--val-set", VAL, "--val-every", "3", "--backbone", "tf_efficientnet_lite2",
          "--img-size", "224", "--crop-scale", "0.5", "--batch-size", "8", "--lr", "3e-4", "--epochs", str(EPOCHS),
          "--schedule-epochs", str(EPOCHS), "--amp", "bf16", "--channels-last", "--workers", "1", "--overwrite"]
TEACHER, CONTROL, DEFOCUS_ONLY = "teacher", "DFFNet x2", "defocus only"
DEFAULT_DEPTH_TEACHERS = ["synthetic=depth_pretrained/midas_synthetic_cpu.pth"]


def run_name(model: str, seed: int) -> str:
    return f"{model.replace(' ', '').replace('-', '').replace('/', '_').lower()}_seed{seed}"


def parse_depth_teachers(items: list[str]) -> dict[str, str]:
    """{label: path} from LABEL=PATH items; the model each gives is named D-DFFNet/LABEL."""
    teachers = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path or not label.replace("_", "").isalnum():
            raise SystemExit(f"--depth-teachers: expected LABEL=PATH with a letters-and-digits LABEL, got {item!r}")
        teachers[f"D-DFFNet/{label}"] = path
    return teachers


def model_list(depth_teachers: dict[str, str], defocus_only: bool) -> list[str]:
    """The compared models in table order: teacher, the students, the control."""
    return [TEACHER, *depth_teachers, *([DEFOCUS_ONLY] if defocus_only else []), CONTROL]


def command(model: str, seed: int, out: Path, data_root: str, depth_teachers: dict[str, str]) -> list[str]:
    """The training command of one model and seed."""
    save = out / "runs" / f"{run_name(model, seed)}.pth"
    teacher = out / "runs" / f"{run_name(TEACHER, seed)}.pth"
    common = [*RECIPE, "--seed", str(seed), "--data-root", data_root, "--save", str(save),
              "--log-dir", str(out / "logs" / run_name(model, seed))]
    if model == TEACHER:
        return [sys.executable, "train_single.py", *common, "--pretrained", "imagenet"]
    if model == CONTROL:
        return [sys.executable, "train_single.py", *common, "--pretrained", "none", "--init", str(teacher)]
    student = [sys.executable, "train_kd.py", *common, "--pretrained", "imagenet", "--teacher", str(teacher)]
    if model == DEFOCUS_ONLY:
        return [*student, "--teachers", "defocus"]
    return [*student, "--depth-teacher", depth_teachers[model]]


def train(model: str, seed: int, out: Path, data_root: str, depth_teachers: dict[str, str]) -> None:
    """Train one model unless its marker says it is done."""
    marker = out / "runs" / f"{run_name(model, seed)}.done"
    if not marker.exists():
        start = time.time()
        run(command(model, seed, out, data_root, depth_teachers), out / "logs" / f"{run_name(model, seed)}.log")
        marker.write_text(json.dumps({"seconds": time.time() - start}))


def score(model: str, seed: int, out: Path, data_root: str, extra_set: str | None) -> dict:
    """test.py (official protocol) of the model's last epoch: {set: {mae, fbeta, iou}}."""
    result_dir = out / "scores" / run_name(model, seed)
    if not (result_dir / "results.json").exists():
        sets = [VAL] + ([extra_set] if extra_set else [])
        run([sys.executable, "test.py", "--checkpoint", str(out / "runs" / f"{run_name(model, seed)}.pth"),
             "--dataset", *sets, "--data-root", data_root, "--out", str(result_dir), "--workers", "1", "--grid", "0"],
            out / "logs" / f"score_{run_name(model, seed)}.log")
    rows = json.loads((result_dir / "results.json").read_text())["results"]
    return {("VAL" if row["dataset"] == VAL else "extra"): {k: row[k] for k in ("mae", "fbeta", "iou")}
            for row in rows}


def validation_curve(model: str, seed: int, out: Path) -> list[dict]:
    """(steps since ImageNet initialisation, validation MAE) of a run, from its epochs.csv."""
    with open(out / "logs" / run_name(model, seed) / "epochs.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("val_mae")]
    offset = EPOCHS if model == CONTROL else 0  # the control continues the teacher
    return [{"steps": (offset + int(row["epoch"])) * STEPS_PER_EPOCH, "val_mae": float(row["val_mae"])}
            for row in rows]


def curves_figure(curves: dict, models: list[str], seeds: list[int], path: Path) -> None:
    """Validation MAE against the steps since ImageNet: one panel per seed, one colour per model."""
    plot_lines({f"seed {seed}": {model: ([p["steps"] for p in curves[model, seed]],
                                         [p["val_mae"] for p in curves[model, seed]]) for model in models}
                for seed in seeds}, path, xlabel="training steps since ImageNet (DFFNet x2 continues the teacher)",
               ylabel="validation MAE (CUHK-TR-1-VAL, 100 photos)", vline=EPOCHS * STEPS_PER_EPOCH, sharey=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="data", help="holds CUHK/ with its split list (data/README.md)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "real_photo_distillation"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--depth-teachers", nargs="+", default=DEFAULT_DEPTH_TEACHERS, metavar="LABEL=PATH",
                        help="one distilled student per depth teacher, named D-DFFNet/LABEL")
    parser.add_argument("--defocus-only", action="store_true",
                        help="add a student distilled from the defocus teacher alone (the paper's ablation)")
    parser.add_argument("--extra-set", default=None,
                        help="another test set scored at the end, e.g. folder:PATH:white=in-focus (DUT photos)")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once (one thread each)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and stop")
    args = parser.parse_args(argv)
    out = Path(args.out)
    depth_teachers = parse_depth_teachers(args.depth_teachers)
    models = model_list(depth_teachers, args.defocus_only)
    if args.dry_run:
        for seed in args.seeds:
            for model in models:
                print(" ".join(command(model, seed, out, args.data_root, depth_teachers)))
        return
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda s: train(TEACHER, s, out, args.data_root, depth_teachers), args.seeds))
        list(pool.map(lambda job: train(*job, out, args.data_root, depth_teachers),
                      [(m, s) for s in args.seeds for m in models[1:]]))
    scores = {(m, s): score(m, s, out, args.data_root, args.extra_set) for s in args.seeds for m in models}
    curves = {(m, s): validation_curve(m, s, out) for s in args.seeds for m in models}
    sets = ["VAL"] + (["extra"] if args.extra_set else [])
    print(f"{'model':<18} {'seed':>5}  " + "  ".join(f"{name + ' MAE / Fβ / IoU':>24}" for name in sets))
    summary = {}
    for model in models:
        for seed in args.seeds:
            print(f"{model:<18} {seed:>5}  " + "  ".join(
                f"{'{mae:.3f} / {fbeta:.3f} / {iou:.3f}'.format(**scores[model, seed][name]):>24}" for name in sets))
        summary[model] = {name: {k: statistics.mean(scores[model, s][name][k] for s in args.seeds)
                                 for k in ("mae", "fbeta", "iou")} for name in sets}
        print(f"{model:<18} {'mean':>5}  " + "  ".join(
            f"{'{mae:.3f} / {fbeta:.3f} / {iou:.3f}'.format(**summary[model][name]):>24}" for name in sets))
    on = machine(torch.device("cpu"))
    print(f"measured on: {on['cpu']}, {on['cpu_count']} cores, one thread per run, {args.jobs} run(s) at once")
    (out / "real_photo_distillation.json").write_text(json.dumps(
        {"machine": on, "seeds": args.seeds, "depth_teachers": depth_teachers, "extra_set": args.extra_set,
         "scores": {f"{m} seed {s}": v for (m, s), v in scores.items()}, "mean": summary,
         "curves": {f"{m} seed {s}": v for (m, s), v in curves.items()}}, indent=2) + "\n")
    curves_figure(curves, models, args.seeds, out / "real_photo_distillation.png")
    print(f"wrote {out / 'real_photo_distillation.json'} and {out / 'real_photo_distillation.png'}")


if __name__ == "__main__":
    main()
