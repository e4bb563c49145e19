"""The README's main command (demo.sh) end to end at a tiny size, and the trivial baselines it reports."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from models import build_model, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MEASURED_ROW = re.compile(r"^\| (?P<model>.+) \(measured, official\) \| (?P<cells>.+) \|$")


def test_demo_pipeline_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHON": sys.executable, "DEMO_OUT": str(out), "DEMO_TRAIN_N": "8", "DEMO_TEST_N": "4",
           "DEMO_IMG_SIZE": "64", "DEMO_EPOCHS": "1", "DEMO_BATCH": "4",
           "DEMO_WORKERS": "1", "OMP_NUM_THREADS": "2"}
    run = subprocess.run(["bash", str(ROOT / "demo.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "This takes about" in run.stdout and f"{out}/qualitative.png" in run.stdout
    assert "midas_v21-f6b98070.pt is absent; using depth_pretrained/midas_synthetic_cpu.pth" in run.stdout
    assert "look inverted" not in run.stderr  # the trivial baselines are scored without the polarity warning
    check_table((out / "table.md").read_text(), out / "data" / "test" / "gt")
    check_checkpoints(out)
    assert len(list((out / "photos").glob("*.png"))) == 4 and "CC0" in (out / "photos" / "LICENCES.md").read_text()
    for figure in (out / "eval" / "pr_curves.png", out / "qualitative.png", out / "real_photos.png"):
        with Image.open(figure) as image:
            assert image.format == "PNG" and 300 <= image.width <= 3000 and 300 <= image.height <= 3000, figure
            image.load()  # decodes every chunk: a truncated or corrupt file fails here
            assert np.asarray(image).std() > 0, f"{figure} is blank"


def check_table(table: str, test_masks: Path) -> None:
    """One measured row per model and baseline, MAE / F-beta / IoU in [0, 1]; the all-in-focus baseline's
    MAE is the test set's blurred share (its map is 1 everywhere) and its IoU of the blurred class 0."""
    rows = {m["model"]: m["cells"] for m in map(MEASURED_ROW.match, table.splitlines()) if m}
    assert set(rows) == {"DFFNet", "D-DFFNet", "all-in-focus", "prior"}, table
    scores = {model: [float(s) for s in cells.split(" / ")] for model, cells in rows.items()}
    assert all(len(s) == 3 and all(0 <= v <= 1 for v in s) for s in scores.values()), table
    blurred = np.mean([np.mean(np.asarray(Image.open(p).convert("L")) < 128) for p in sorted(test_masks.iterdir())])
    assert abs(scores["all-in-focus"][0] - blurred) <= 0.0005 + 1e-9, (table, blurred)
    assert scores["all-in-focus"][2] == 0


def check_checkpoints(out: Path) -> None:
    """Each checkpoint loads into the network it should hold and keeps the settings of the demo's run."""
    checkpoints = out / "checkpoints"
    shared = {"epochs": 1, "img_size": 64, "batch_size": 4}
    dffnet = build_model("dffnet", "resnet18")
    expected = {
        "DFFNet.pth": (dffnet, {**shared, "backbone": "resnet18", "train_set": f"synthetic:{out}/data/train"}),
        "D-DFFNet.pth": (dffnet, {**shared, "backbone": "resnet18", "train_set": f"synthetic:{out}/data/train",
                                  "distill": "feature", "teacher": str(checkpoints / "DFFNet.pth"),
                                  "depth_teacher": "depth_pretrained/midas_synthetic_cpu.pth"}),
    }
    for name, (model, settings) in expected.items():
        metadata = load_checkpoint(model, checkpoints / name)
        assert metadata["epoch"] == 1, name
        assert {key: metadata["config"].get(key) for key in settings} == settings, name


def test_baseline_maps(tmp_path):
    from datasets.synthetic import generate_dataset
    from engine.baselines import write_baseline_maps

    train = generate_dataset(tmp_path / "train", n=4, seed=0, size=64)
    test = generate_dataset(tmp_path / "test", n=2, seed=1, size=64)
    sharp = write_baseline_maps("all-in-focus", f"synthetic:{test}", tmp_path / "sharp")
    prior = write_baseline_maps("prior", f"synthetic:{test}", tmp_path / "prior", train_set=f"synthetic:{train}",
                                img_size=64)
    masks = np.stack([np.asarray(Image.open(p)) > 127 for p in sorted((train / "gt").iterdir())])
    for name in ("00000", "00001"):
        assert (np.asarray(Image.open(sharp / f"{name}.png")) == 255).all()
        expected = np.rint(masks.mean(0) * 255)
        assert np.abs(np.asarray(Image.open(prior / f"{name}.png")).astype(float) - expected).max() <= 1
