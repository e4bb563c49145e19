"""The README's main command (demo.sh) end to end at a tiny size, and the trivial baselines it reports."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_demo_pipeline_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHON": sys.executable, "DEMO_OUT": str(out), "DEMO_TRAIN_N": "8", "DEMO_TEST_N": "4",
           "DEMO_IMG_SIZE": "64", "DEMO_EPOCHS": "1", "DEMO_DEPTH_EPOCHS": "1", "DEMO_BATCH": "4",
           "DEMO_WORKERS": "1", "OMP_NUM_THREADS": "2"}
    run = subprocess.run(["bash", str(ROOT / "demo.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "This takes about" in run.stdout and f"{out}/qualitative.png" in run.stdout
    table = (out / "table.md").read_text()
    for row in ("DFFNet", "D-DFFNet", "all-in-focus", "prior"):
        assert f"| {row} " in table, table
    for figure in (out / "eval" / "pr_curves.png", out / "qualitative.png"):
        assert Image.open(figure).size[0] > 200
    for checkpoint in ("DFFNet.pth", "D-DFFNet.pth", "midas_small.pth"):
        assert (out / "checkpoints" / checkpoint).stat().st_size > 0


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
