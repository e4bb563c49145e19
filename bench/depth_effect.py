"""Does depth distillation help where defocus cues vanish? A controlled, multi-seed test of the paper's claim.

    python bench/depth_effect.py [--seeds 1 2 3] [--epochs 4] [--depth-teacher PATH|short]
                                 [--out bench/results/depth_effect] [--quick]

On the synthetic defocus data (datasets/synthetic.py, which also writes which pixels show a nearly
textureless surface: homogeneous/), at the demo's scale and with the demo's depth teacher (by default the
shipped depth_pretrained/midas_synthetic_cpu.pth; `short` trains the earlier demo's 256-step MiDaS / resnet18
teacher on the benchmark's data; a path takes any MiDaS file), it scores the depth teacher (AbsRel,
delta < 1.25, tools/score_depth.py) and trains for every seed:

    DFFNet          stage 1 (train_single.py); also the defocus teacher of that seed's stage 2
    D-DFFNet        stage 2, feature distillation from both teachers (the paper's method)
    D-DFFNet depth  stage 2 from the depth teacher only   (the paper's teacher ablation)
    D-DFFNet DOF    stage 2 from the defocus teacher only
    R-DFFNet        stage 2, response distillation (depth heads regress the teacher's depth map)

every run with the same data, epochs, learning-rate schedule and seed; then scores each with test.py
(official protocol) on the whole image, the homogeneous and the textured pixels, and prints and writes
mean +/- std over the seeds of MAE / F-beta / IoU, and of each method minus DFFNet (paired by seed), as
JSON and a bar chart. Every run and score is kept under --out, so an interrupted run continues where it
stopped (--overwrite starts afresh). The runs are the scripts a user runs, called as subprocesses; each
one's output is in --out/logs/. --quick runs the whole pipeline tiny (CI).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.shipped import SHIPPED_DEPTH_TEACHER  # noqa: E402
from utils.log import console, progress  # noqa: E402

METHODS = ("DFFNet", "D-DFFNet", "D-DFFNet depth", "D-DFFNet DOF", "R-DFFNet")
STAGE2_FLAGS = {"D-DFFNet": ["--teachers", "both"], "D-DFFNet depth": ["--teachers", "depth"],
                "D-DFFNet DOF": ["--teachers", "defocus"], "R-DFFNet": ["--distill", "response"]}
REGIONS = ("all", "homogeneous", "textured")
METRICS = ("mae", "fbeta", "iou")


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark run."""
    train_n: int
    test_n: int
    img_size: int
    epochs: int
    depth_epochs: int
    batch: int


FULL = Scale(train_n=1024, test_n=256, img_size=160, epochs=4, depth_epochs=2, batch=8)
QUICK = Scale(train_n=8, test_n=6, img_size=64, epochs=1, depth_epochs=1, batch=4)


@dataclass(frozen=True)
class Step:
    """One command of the benchmark and the steps that must be done before it."""
    name: str
    command: list[str]
    needs: tuple[str, ...] = ()


def run(command: list[str], log: Path, env: dict[str, str]) -> dict[str, float]:
    """Run a command from the repository root with its output in `log`; its start and end times."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with log.open("w") as handle:
        done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}); see {log}:\n{tail}")
    return {"start": start, "end": time.time()}


def run_name(method: str, seed: int) -> str:
    return f"{method.replace(' ', '_')}_seed{seed}"


class Benchmark:
    """The runs of one benchmark under `out`: each is done when its marker file exists."""

    def __init__(self, out: Path, scale: Scale, seeds: list[int], amp: str, workers: int,
                 depth_teacher: str = str(SHIPPED_DEPTH_TEACHER)) -> None:
        self.out, self.scale, self.seeds, self.depth_teacher = out, scale, seeds, depth_teacher
        self.data, self.checkpoints, self.logs = out / "data", out / "checkpoints", out / "logs"
        self.common = ["--backbone", "resnet18", "--pretrained", "none", "--img-size", str(scale.img_size),
                       "--batch-size", str(scale.batch), "--lr", "1e-3", "--epochs", str(scale.epochs),
                       "--schedule-epochs", str(scale.epochs), "--workers", str(workers), "--amp", amp,
                       "--overwrite"]
        if amp == "bf16":
            self.common.append("--channels-last")
        self.amp, self.workers = amp, workers
        self.times: dict[str, dict[str, float]] = {}

    def plan(self) -> list[Step]:
        """Every step with the steps it needs: data, the depth teacher (trained with `short`) and its score,
        per seed DFFNet and the four stage-2 variants (after that seed's DFFNet and the depth teacher), then
        the scores."""
        py, s = sys.executable, self.scale
        steps = [Step(f"data_{part}", [py, "tools/make_synthetic.py", str(self.data / part), "--n", str(n), "--seed",
                                       str(seed), "--size", str(s.img_size), "--workers", "2", "--overwrite"])
                 for part, n, seed in (("train", s.train_n, 1), ("test", s.test_n, 2))]
        teacher_steps: tuple[str, ...] = ()
        if self.depth_teacher == "short":
            midas = self.checkpoints / "midas_small.pth"
            teacher_steps = ("depth_teacher",)
            steps.append(Step("depth_teacher", [
                py, "train_depth.py", "--data", str(self.data / "train"), "--val-data", str(self.data / "test"),
                "--encoder", "resnet18", "--features", "64", "--img-size", str(s.img_size), "--epochs",
                str(s.depth_epochs), "--batch-size", str(s.batch), "--lr", "5e-4", "--workers", str(self.workers),
                "--amp", self.amp, "--save", str(midas), "--log-dir", str(self.logs / "depth_teacher"),
                "--overwrite"], needs=("data_train", "data_test")))
        else:
            midas = Path(self.depth_teacher)
        steps.append(Step("score_depth_teacher", [
            py, "tools/score_depth.py", str(midas), str(self.data / "test"), "--img-size", str(s.img_size),
            "--json", str(self.out / "scores" / "depth_teacher.json")], needs=("data_test", *teacher_steps)))
        train_set = ["--train-set", f"synthetic:{self.data / 'train'}"]
        for seed in self.seeds:
            teacher = run_name("DFFNet", seed)
            for method in METHODS:
                name = run_name(method, seed)
                if method == "DFFNet":
                    script, extra, needs = "train_single.py", [], ("data_train",)
                else:
                    script, needs = "train_kd.py", (*teacher_steps, teacher)
                    extra = [*STAGE2_FLAGS[method], "--teacher", str(self.checkpoints / f"{teacher}.pth"),
                             "--depth-teacher", str(midas), "--teacher-bn", "batch"]
                steps.append(Step(name, [py, script, *train_set, *self.common, "--seed", str(seed), *extra,
                                         "--save", str(self.checkpoints / f"{name}.pth"),
                                         "--log-dir", str(self.logs / name)], needs=needs))
        for seed in self.seeds:
            for method in METHODS:
                name = run_name(method, seed)
                steps.append(Step(f"score_{name}", [
                    py, "test.py", "--checkpoint", str(self.checkpoints / f"{name}.pth"), "--dataset",
                    f"synthetic:{self.data / 'test'}", "--img-size", str(s.img_size), "--grid", "0", "--workers", "0",
                    "--out", str(self.out / "scores" / name)], needs=(name, "data_test")))
        return steps

    def run_all(self, jobs: int) -> None:
        """Run every step not yet done, up to `jobs` at once, each as soon as the steps it needs are done
        (those that unblock most first; each with cores / jobs threads)."""
        steps = {step.name: step for step in self.plan()}
        done = {name for name in steps if self.is_done(name)}
        for name in done:
            self.times[name] = json.loads(self.marker(name).read_text())
        dependants = {name: sum(name in step.needs for step in steps.values()) for name in steps}
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        running: dict[Future, str] = {}
        with ThreadPoolExecutor(jobs) as pool, progress(total=len(steps), initial=len(done), desc="depth effect",
                                                         unit="step") as bar:
            while len(done) < len(steps):
                ready = sorted((s for s in steps.values() if s.name not in done and s.name not in running.values()
                                and all(n in done for n in s.needs)), key=lambda s: -dependants[s.name])
                for step in ready[:jobs - len(running)]:
                    running[pool.submit(run, step.command, self.logs / f"{step.name}.log", env)] = step.name
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    name = running.pop(future)
                    self.times[name] = future.result()
                    self.marker(name).parent.mkdir(parents=True, exist_ok=True)
                    self.marker(name).write_text(json.dumps(self.times[name]))
                    done.add(name)
                    bar.update()
                    seconds = self.times[name]["end"] - self.times[name]["start"]
                    console(f"{name:<28} {seconds:6.0f} s")

    def marker(self, name: str) -> Path:
        return self.out / "done" / f"{name}.json"

    def is_done(self, name: str) -> bool:
        return self.marker(name).is_file()

    def scores(self, method: str, seed: int) -> dict[str, dict[str, float]]:
        """{region: {metric: value}} of one trained run, from its results.json."""
        entry = json.loads((self.out / "scores" / run_name(method, seed) / "results.json").read_text())["results"][0]
        regions = entry.get("regions")
        if not regions:
            raise SystemExit(f"{self.out / 'scores'}: no homogeneous / textured split in the results (the test "
                             "set has no homogeneous/ folder?)")
        out = {"all": {m: entry[m] for m in METRICS}}
        out.update({region: {m: regions[region][m] for m in METRICS} for region in REGIONS[1:]})
        return out


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summarise(bench: Benchmark) -> dict:
    """Per method, region and metric: mean / std over seeds, and of the paired difference to DFFNet."""
    per_seed = {method: {seed: bench.scores(method, seed) for seed in bench.seeds} for method in METHODS}
    table: dict = {}
    for method in METHODS:
        table[method] = {}
        for region in REGIONS:
            table[method][region] = {}
            for metric in METRICS:
                values = [per_seed[method][seed][region][metric] for seed in bench.seeds]
                base = [per_seed["DFFNet"][seed][region][metric] for seed in bench.seeds]
                table[method][region][metric] = {**mean_std(values),
                                                 "minus_dffnet": mean_std([v - b for v, b in zip(values, base)])}
    return table


def print_table(table: dict) -> list[str]:
    """The printed (and docs/depth_effect.md) table: mean +/- std over seeds, and the paired difference to DFFNet."""
    lines = ["| method | region | MAE | F-beta | IoU | MAE - DFFNet | F-beta - DFFNet | IoU - DFFNet |",
             "|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        for region in REGIONS:
            cells = table[method][region]
            scores = [f"{cells[m]['mean']:.3f} ± {cells[m]['std']:.3f}" for m in METRICS]
            deltas = ["" if method == "DFFNet" else
                      f"{cells[m]['minus_dffnet']['mean']:+.3f} ± {cells[m]['minus_dffnet']['std']:.3f}"
                      for m in METRICS]
            lines.append(f"| {method} | {region} | " + " | ".join(scores + deltas) + " |")
    return lines


def bar_chart(table: dict, seeds: list[int], path: Path, teacher: dict) -> None:
    """Top row: MAE / F-beta / IoU per region, one bar per method (mean over seeds, std as error bar,
    single seeds as dots). Bottom row: each method minus DFFNet, paired by seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(14, 7.5), sharex=True)
    for row, (key, methods) in enumerate(((None, METHODS), ("minus_dffnet", METHODS[1:]))):
        width = 0.8 / len(methods)
        for axis, metric, label in zip(axes[row], METRICS, ("MAE (lower is better)", "F-beta", "IoU")):
            for i, method in enumerate(methods):
                xs = [r + (i - (len(methods) - 1) / 2) * width for r in range(len(REGIONS))]
                cells = [table[method][region][metric] for region in REGIONS]
                cells = [cell[key] for cell in cells] if key else cells
                axis.bar(xs, [c["mean"] for c in cells], width, yerr=[c["std"] for c in cells], capsize=2,
                         label=method if row == 0 else None, color=f"C{METHODS.index(method)}")
                for x, cell in zip(xs, cells):
                    axis.plot([x] * len(cell["values"]), cell["values"], ".", color="black", markersize=3)
            axis.set_title(label if row == 0 else f"{label.split(' ')[0]}: method minus DFFNet (same seed)")
            axis.grid(axis="y", alpha=0.3)
            if row == 1:
                axis.axhline(0, color="black", linewidth=0.8)
                axis.set_xticks(range(len(REGIONS)), ["whole image", "homogeneous", "textured"])
    figure.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", ncol=len(METHODS),
                  bbox_to_anchor=(0.5, 0.955), fontsize=9)
    figure.suptitle(f"Depth distillation on synthetic defocus data: mean ± std over {len(seeds)} seed(s), "
                    f"dots = single seeds; depth teacher AbsRel {teacher['abs_rel']:.3f}, "
                    f"δ<1.25 {teacher['delta1']:.3f}", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.91))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs of every run (default {FULL.epochs})")
    parser.add_argument("--out", default=None, help="default bench/results/depth_effect[_quick]")
    parser.add_argument("--amp", choices=["auto", "off", "bf16"], default="auto",
                        help="auto: bf16 + channels-last where the CPU / GPU runs bf16 fast (as the demo)")
    parser.add_argument("--workers", type=int, default=1, help="data-loading processes of each training run")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs at once, each with cores / jobs threads (a step waits only for the runs it "
                             "needs: with 2, two seeds' DFFNets train side by side)")
    parser.add_argument("--depth-teacher", default=str(SHIPPED_DEPTH_TEACHER.relative_to(ROOT)),
                        help="the path of a MiDaS file (default: the shipped synthetic-depth teacher; "
                             "depth_pretrained/midas_v21-f6b98070.pt for the real one), or short: train the earlier "
                             "demo's 256-step teacher on the benchmark's data (the weak-teacher row)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to test the pipeline")
    parser.add_argument("--overwrite", action="store_true", help="delete --out and start afresh")
    args = parser.parse_args(argv)
    scale = QUICK if args.quick else FULL
    if args.epochs is not None:
        if args.epochs < 1:
            raise SystemExit(f"--epochs must be >= 1, got {args.epochs}")
        scale = Scale(**{**scale.__dict__, "epochs": args.epochs})
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds must be distinct, got {args.seeds}")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    out = Path(args.out or ROOT / "bench" / "results" / f"depth_effect{'_quick' if args.quick else ''}")
    if args.overwrite and out.exists():
        shutil.rmtree(out)
    if args.depth_teacher != "short" and not Path(args.depth_teacher).is_file():
        raise SystemExit(f"--depth-teacher {args.depth_teacher}: no such file (or use short)")
    out.mkdir(parents=True, exist_ok=True)
    amp = args.amp
    if amp == "auto":
        import utils.runtime as runtime
        amp = "bf16" if runtime.bf16_is_fast(runtime.select_device("auto")) else "off"
    config = {"scale": scale.__dict__, "seeds": args.seeds, "amp": amp, "workers": args.workers,
              "depth_teacher": args.depth_teacher}
    config_file = out / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()) != config:
        raise SystemExit(f"{out} holds a run with other settings ({config_file}); pass --overwrite or another --out")
    config_file.write_text(json.dumps(config, indent=1))

    bench = Benchmark(out, scale, args.seeds, amp, args.workers, args.depth_teacher)
    start = time.time()
    bench.run_all(args.jobs)
    table = summarise(bench)
    lines = print_table(table)
    teacher = json.loads((out / "scores" / "depth_teacher.json").read_text())["rows"][0]
    from bench.common import machine
    import torch
    seconds = {name: t["end"] - t["start"] for name, t in bench.times.items()}
    wall = max(t["end"] for t in bench.times.values()) - min(t["start"] for t in bench.times.values())
    result = {"config": config, "jobs": args.jobs, "machine": machine(torch.device("cpu")),
              "wall_clock_seconds": wall, "step_seconds_sum": sum(seconds.values()), "step_seconds": seconds,
              "seconds_this_invocation": time.time() - start, "depth_teacher": teacher, "table": table}
    (out / "depth_effect.json").write_text(json.dumps(result, indent=1))
    bar_chart(table, args.seeds, out / "depth_effect.png", teacher)
    print(f"depth teacher ({args.depth_teacher}) on the test images: AbsRel {teacher['abs_rel']:.3f}, "
          f"delta<1.25 {teacher['delta1']:.3f} (constant map {teacher['constant_abs_rel']:.3f} / "
          f"{teacher['constant_delta1']:.3f})")
    print("\n".join(lines))
    print(f"\nwall clock {wall / 60:.1f} min from the first step's start to the last step's end ({args.jobs} jobs at "
          f"once; {sum(seconds.values()) / 60:.1f} min summed over the steps; includes any pause between "
          "interrupted and resumed invocations)")
    print(f"wrote {out / 'depth_effect.json'} and {out / 'depth_effect.png'}")


if __name__ == "__main__":
    main()
