"""bench/depth_effect.py: the --quick pipeline end to end (train, score, summarise, resume), and the
summary's statistics against values computed by hand."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import depth_effect

ROOT = Path(__file__).resolve().parents[1]


def run_quick(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "depth_effect.py"), "--quick", "--seeds", "1",
                           "--out", str(out), *extra], cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_quick_run_trains_scores_and_resumes(tmp_path: Path):
    out = tmp_path / "effect"
    first = run_quick(out)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads((out / "depth_effect.json").read_text())
    table = result["table"]
    assert list(table) == list(depth_effect.METHODS)
    for method, regions in table.items():
        assert list(regions) == ["all", "homogeneous", "textured"]
        for region, metrics in regions.items():
            for metric in ("mae", "fbeta", "iou"):
                cell = metrics[metric]
                assert 0.0 <= cell["mean"] <= 1.0 and len(cell["values"]) == 1
                if method == "DFFNet":
                    assert cell["minus_dffnet"]["mean"] == 0.0
    # the homogeneous / textured split comes from the generator's homogeneous/ masks via test.py
    scores = json.loads((out / "scores" / "D-DFFNet_seed1" / "results.json").read_text())["results"][0]
    assert scores["regions"]["homogeneous"]["pixels"] > 0 and scores["regions"]["textured"]["pixels"] > 0
    assert table["D-DFFNet"]["homogeneous"]["mae"]["mean"] == scores["regions"]["homogeneous"]["mae"]
    assert "| D-DFFNet depth | homogeneous |" in first.stdout and "wall clock" in first.stdout
    with Image.open(out / "depth_effect.png") as chart:
        chart.load()
        assert chart.size[0] > 800 and len(np.unique(np.asarray(chart.convert("L")))) > 10
    assert 0 < result["depth_teacher"]["abs_rel"] and 0 < result["depth_teacher"]["constant_abs_rel"]
    assert "depth teacher (depth_pretrained/midas_synthetic_cpu.pth) on the test images: AbsRel" in first.stdout
    logs = {p: p.stat().st_mtime_ns for p in (out / "logs").glob("*.log")}
    assert len(logs) == 2 + 1 + 5 + 5  # data x 2, the shipped teacher's score, 5 trainings, 5 scores

    again = run_quick(out)  # everything is done: nothing runs again, the summary is the same
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "logs").glob("*.log")} == logs
    assert json.loads((out / "depth_effect.json").read_text())["table"] == table

    changed = run_quick(out, "--epochs", "2")
    assert changed.returncode != 0 and "holds a run with other settings" in changed.stderr


def test_summary_is_mean_std_and_the_paired_difference(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Two seeds; DFFNet MAE 0.30 / 0.20, D-DFFNet 0.25 / 0.19 (homogeneous): D-DFFNet's mean 0.22, sample
    std 0.0424264, minus DFFNet -0.05 / -0.01: mean -0.03, std 0.0282843."""
    mae = {("DFFNet", 1): 0.30, ("DFFNet", 2): 0.20, ("D-DFFNet", 1): 0.25, ("D-DFFNet", 2): 0.19}

    def scores(self, method: str, seed: int) -> dict:
        value = mae.get((method, seed), 0.5)
        return {region: {"mae": value, "fbeta": 0.5, "iou": 0.5} for region in depth_effect.REGIONS}

    monkeypatch.setattr(depth_effect.Benchmark, "scores", scores)
    bench = depth_effect.Benchmark(tmp_path, depth_effect.QUICK, [1, 2], "off", 0)
    cell = depth_effect.summarise(bench)["D-DFFNet"]["homogeneous"]["mae"]
    assert cell["mean"] == pytest.approx(0.22) and cell["std"] == pytest.approx(0.0424264, abs=1e-7)
    assert cell["minus_dffnet"]["mean"] == pytest.approx(-0.03)
    assert cell["minus_dffnet"]["std"] == pytest.approx(0.0282843, abs=1e-7)


def test_a_given_teacher_file_replaces_the_short_one(tmp_path: Path):
    """With `short` the benchmark trains the short teacher first and every stage-2 run waits for it; with a
    file (the default: the shipped teacher), nothing trains a depth teacher and the stage-2 runs and the
    teacher's score read that file."""
    def teacher_of(steps: list) -> set[str]:
        return {step.command[step.command.index("--depth-teacher") + 1] for step in steps
                if "--depth-teacher" in step.command}

    short = depth_effect.Benchmark(tmp_path, depth_effect.QUICK, [1, 2], "off", 0, "short").plan()
    assert teacher_of(short) == {str(tmp_path / "checkpoints" / "midas_small.pth")}
    assert [step.name for step in short if step.command[1] == "train_depth.py"] == ["depth_teacher"]
    assert all("depth_teacher" in step.needs for step in short if "--depth-teacher" in step.command)
    given = tmp_path / "midas.pth"
    planned = depth_effect.Benchmark(tmp_path, depth_effect.QUICK, [1, 2], "off", 0, str(given)).plan()
    assert teacher_of(planned) == {str(given)}
    assert not any(step.command[1] == "train_depth.py" for step in planned)
    score = next(step for step in planned if step.name == "score_depth_teacher")
    assert score.command[2] == str(given)
