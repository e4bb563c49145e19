"""The MiDaS-architecture depth teachers shipped in depth_pretrained/: the files themselves and that they learnt
depth."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from datasets import DepthDataset
from datasets.synthetic import generate_dataset
from engine.depth import evaluate_depth
from models import load_midas
from models.shipped import SHIPPED_DEPTH_TEACHER, SHIPPED_LITE2_DEPTH_TEACHER, shipped_files, sha256
from tests.test_shipped_model import command_flags
from utils.checkpoint import read_checkpoint

MAX_BYTES = 25_000_000


TEACHERS = [SHIPPED_DEPTH_TEACHER, SHIPPED_LITE2_DEPTH_TEACHER]


@pytest.fixture(scope="module")
def unseen_scenes(tmp_path_factory):
    """Scenes of a seed no training set used, at the teachers' training size."""
    data = generate_dataset(tmp_path_factory.mktemp("held_out"), n=32, seed=9001, size=160)
    return DataLoader(DepthDataset(data, img_size=160, augment=False), batch_size=8)


@pytest.mark.parametrize("path", TEACHERS, ids=lambda p: p.name)
def test_the_shipped_teacher_is_small_recorded_and_loads_strictly(path):
    assert path.is_file(), f"{path} is missing from the repository"
    assert path.stat().st_size <= MAX_BYTES
    assert sha256(path) == shipped_files()[path]
    teacher = load_midas(path)  # weights_only=True, strict, finite (models.weights)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in teacher.state_dict().values()
               if p.is_floating_point())
    assert teacher.config["name"] == "midas" and "synthetic" in read_checkpoint(path)["description"]


@pytest.mark.parametrize("path", TEACHERS, ids=lambda p: p.name)
def test_the_shipped_teacher_beats_a_constant_map_on_unseen_scenes(path, unseen_scenes):
    """The teacher's depth order must be far better than a constant map's (the trivial baseline of the same
    metric)."""
    scores = evaluate_depth(load_midas(path).eval(), unseen_scenes, torch.device("cpu"), "off", with_constant=True)
    assert scores["abs_rel"] < 0.75 * scores["constant_abs_rel"], scores
    assert scores["delta1"] > scores["constant_delta1"] + 0.1, scores


def test_the_lite2_teacher_reaches_the_depth_target_on_unseen_scenes(unseen_scenes):
    """The target the resnet18 teacher missed (AbsRel <= .20, delta < 1.25 >= .70), on 32 fresh scenes."""
    scores = evaluate_depth(load_midas(SHIPPED_LITE2_DEPTH_TEACHER).eval(), unseen_scenes, torch.device("cpu"), "off")
    assert scores["abs_rel"] <= 0.20 and scores["delta1"] >= 0.70, scores


def test_the_lite2_recipe_script_trains_what_the_shipped_file_records(tmp_path):
    """RECIPE=lite2 bash tools/train_depth_teacher.sh must run train_depth.py with the settings stored in the
    shipped file (a stand-in interpreter records the commands; the scene folders exist, so nothing is made)."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    data = tmp_path / "out" / "data"
    for folder in ("seed100", "seed102", "held_out_128", "held_out_160", "held_out_320"):
        for sub in ("image", "depth"):
            (data / folder / sub).mkdir(parents=True)
            (data / folder / sub / "00000.png").write_bytes(b"")
        (data / folder / "meta.json").write_text("{}")
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n')
    stub.chmod(0o755)
    env = {**os.environ, "RECIPE": "lite2", "PYTHON": str(stub), "OUT": str(tmp_path / "out")}
    run = subprocess.run(["bash", str(root / "tools/train_depth_teacher.sh")], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    train = next(line.split() for line in calls.read_text().splitlines() if line.startswith("train_depth.py"))
    flags = command_flags(train[1:])
    recorded = read_checkpoint(SHIPPED_LITE2_DEPTH_TEACHER)["config"]
    for name in ("encoder", "pretrained", "features", "img_size", "batch_size", "amp", "loss", "anchor_weight", "lr",
                 "warmup_steps", "epochs"):
        value = flags[f"--{name.replace('_', '-')}"]
        assert type(recorded[name])(value) == recorded[name], (name, value, recorded[name])
    assert "seed" not in flags and recorded["seed"] == 42  # the default seed
    bad = subprocess.run(["bash", str(root / "tools/train_depth_teacher.sh")], capture_output=True, text=True,
                         env={**env, "RECIPE": "vit"})
    assert bad.returncode == 2 and "RECIPE must be resnet18 or lite2, got 'vit'" in bad.stderr
