"""The MiDaS-architecture depth teacher shipped in depth_pretrained/: the file itself and that it learnt depth."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from datasets import DepthDataset
from datasets.synthetic import generate_dataset
from engine.depth import evaluate_depth
from models import load_midas
from models.shipped import SHIPPED_DEPTH_TEACHER, SHIPPED_DEPTH_TEACHER_SHA256, sha256
from utils.checkpoint import read_checkpoint

MAX_BYTES = 25_000_000


def test_the_shipped_teacher_is_small_recorded_and_loads_strictly():
    assert SHIPPED_DEPTH_TEACHER.is_file(), f"{SHIPPED_DEPTH_TEACHER} is missing from the repository"
    assert SHIPPED_DEPTH_TEACHER.stat().st_size <= MAX_BYTES
    assert sha256(SHIPPED_DEPTH_TEACHER) == SHIPPED_DEPTH_TEACHER_SHA256
    teacher = load_midas(SHIPPED_DEPTH_TEACHER)  # weights_only=True, strict, finite (models.weights)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in teacher.state_dict().values()
               if p.is_floating_point())
    assert teacher.config["name"] == "midas" and "synthetic" in read_checkpoint(SHIPPED_DEPTH_TEACHER)["description"]


def test_the_shipped_teacher_beats_a_constant_map_on_unseen_scenes(tmp_path):
    """Scenes of a seed no training set used, at the demo's size: the teacher's depth order must be far better
    than a constant map's (the trivial baseline of the same metric)."""
    data = generate_dataset(tmp_path / "held_out", n=16, seed=9001, size=160)
    loader = DataLoader(DepthDataset(data, img_size=160, augment=False), batch_size=8)
    scores = evaluate_depth(load_midas(SHIPPED_DEPTH_TEACHER).eval(), loader, torch.device("cpu"), "off",
                            with_constant=True)
    assert scores["abs_rel"] < 0.75 * scores["constant_abs_rel"], scores
    assert scores["delta1"] > scores["constant_delta1"] + 0.1, scores
