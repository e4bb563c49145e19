"""Distributed training: the sampler's split, and torchrun (2 CPU processes, gloo) == one process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import build_midas, build_model
from tests.test_training import common_args, read_csv, write_tiny_set
from utils.checkpoint import model_checkpoint, read_checkpoint, save_checkpoint
from utils.distributed import EpochShuffleSampler

ROOT = Path(__file__).resolve().parents[1]


def test_sampler_splits_each_global_batch_into_contiguous_blocks():
    single = list(EpochShuffleSampler(10, 4, seed=1))
    ranks = [list(EpochShuffleSampler(10, 4, rank=r, world_size=2, seed=1)) for r in (0, 1)]
    assert len(single) == 8 and sorted(single) == sorted(set(single))  # 2 full batches, the last 2 dropped
    for step in range(2):
        assert single[4 * step : 4 * step + 2] == ranks[0][2 * step : 2 * step + 2]
        assert single[4 * step + 2 : 4 * step + 4] == ranks[1][2 * step : 2 * step + 2]


def test_sampler_order_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(50, 5, seed=7), EpochShuffleSampler(50, 5, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    with pytest.raises(ValueError, match="not divisible by 4 processes"):
        EpochShuffleSampler(50, 6, world_size=4)


def run_two_processes_and_one(script: str, data: Path, settings: list[str], tmp_path: Path) -> tuple[list, list]:
    """`script` under torchrun with 2 gloo processes (run dir tmp_path/ddp) and as one process with --accumulate 2
    (tmp_path/single), global batch 4; the steps.csv rows of each. Per-process BatchNorm on the CPU makes 2
    processes equal to 2 micro-batches. Every process runs on one thread, so that sums go in the same order
    (with other thread counts Adam magnifies rounding differences in near-zero gradients)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                script, *common_args(data, tmp_path / "ddp", batch=4), *settings]
    single = [sys.executable, script, *common_args(data, tmp_path / "single", batch=4), *settings, "--accumulate", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for command in (torchrun, single):
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    return tuple(read_csv(tmp_path / run / "log" / "steps.csv") for run in ("ddp", "single"))


def test_torchrun_two_processes_match_one_process(tmp_path: Path):
    data = write_tiny_set(tmp_path / "data", 8)
    settings = ["--epochs", "2", "--no-augment", "--lr", "1e-3"]
    ddp_rows, single_rows = run_two_processes_and_one("train_single.py", data, settings, tmp_path)
    assert len(ddp_rows) == len(single_rows) == 4
    for a, b in zip(ddp_rows, single_rows):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4)
    ddp = read_checkpoint(tmp_path / "ddp" / "model.pth")["model"]
    one = read_checkpoint(tmp_path / "single" / "model.pth")["model"]
    parameters = [name for name, _ in build_model("dffnet", backbone="resnest14d").named_parameters()]
    difference = torch.cat([(ddp[k] - one[k]).flatten() for k in parameters]).abs()
    assert difference.max() < 1e-6  # 4 Adam steps of lr 1e-3 moved the weights by up to 4e-3


def test_torchrun_stage2_two_processes_match_one_process(tmp_path: Path):
    """Stage 2 (both teachers with batch statistics, the projectors' own Adam) under torchrun: on the CPU each
    process's teachers normalise its share of the batch, as one process's do for each micro-batch."""
    data = write_tiny_set(tmp_path / "data", 8)
    torch.manual_seed(0)
    teacher = build_model("dffnet", backbone="resnest14d")
    midas = build_midas(encoder="resnet18", features=16)
    for network, path in ((teacher, tmp_path / "teacher.pth"), (midas, tmp_path / "midas.pth")):
        save_checkpoint(model_checkpoint(network, {}, 0), path)
    settings = ["--epochs", "2", "--no-augment", "--lr", "1e-3", "--teacher", str(tmp_path / "teacher.pth"),
                "--depth-teacher", str(tmp_path / "midas.pth")]
    ddp_rows, single_rows = run_two_processes_and_one("train_kd.py", data, settings, tmp_path)
    assert len(ddp_rows) == len(single_rows) == 4
    for a, b in zip(ddp_rows, single_rows):
        for term in ("loss", "seg", "defocus_distill", "depth_distill"):
            assert float(a[term]) == pytest.approx(float(b[term]), rel=1e-4), term
    ddp, one = (read_checkpoint(tmp_path / run / "model.pth") for run in ("ddp", "single"))
    for states in ((ddp["model"], one["model"]),
                   *((ddp["extra_modules"][name], one["extra_modules"][name]) for name in ("to_defocus", "to_depth"))):
        keys = [k for k, v in states[0].items() if v.is_floating_point() and "running" not in k]
        difference = torch.cat([(states[0][k] - states[1][k]).flatten() for k in keys]).abs()
        assert difference.max() < 1e-5
