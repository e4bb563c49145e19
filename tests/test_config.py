"""The typed configuration and the one training loop (issue 28): checkpoints written before the refactor resume to
the same weights, the depth teacher resumes exactly and runs under torchrun, and the library below the scripts
takes configs, raises typed errors and keeps its modules short."""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_depth
import train_single
from datasets.synthetic import generate_dataset
from engine.config import ConfigError, DepthConfig, DistillConfig, LoopConfig, TrainConfig, resolve
from engine.options import config_from_flags
from tests.test_training import read_csv
from utils.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "checkpoints"
LIBRARY = ("models", "losses", "datasets", "utils", "engine", "metrics")
MAX_MODULE_LINES = 400


# ---- the config


def test_resolve_fills_the_derived_values_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = resolve(DistillConfig(model="dffnet_no_side", device="auto", batch_size=4, accumulate=2))
    assert (config.device, config.world_size, config.micro_batch_size, config.final_weight) == ("cpu", 2, 1, 1.0)
    assert resolve(DistillConfig(batch_size=4)).final_weight == 1.1           # side outputs: the authors' 1.1
    assert resolve(DistillConfig(final_weight=1.3)).final_weight == 1.3
    assert resolve(DepthConfig(data="d", epochs=7)).schedule_epochs == 7        # the teacher's poly runs over its epochs
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("config, message", [
    (TrainConfig(batch_size=0), r"^--batch-size must be >= 1, got 0$"),
    (TrainConfig(img_size=100), r"^--img-size 100 must be a positive multiple of 32$"),
    (TrainConfig(epochs=80), r"^--epochs 80: the poly schedule reaches 0 at --schedule-epochs \+ 5 = 80"),
    (TrainConfig(batch_size=6, accumulate=4), r"^--batch-size 6 must be divisible by processes x --accumulate"),
    (DistillConfig(teacher=None), r"^--teachers both needs --teacher"),
    (DepthConfig(data="d", warmup_steps=-1), r"^--warmup-steps must be >= 0, got -1$"),
    (TrainConfig(pretrained="no/such/file.pth"), r"^--pretrained no/such/file\.pth: no such file"),
    (TrainConfig(encoder_lr_scale=0.0), r"^--encoder-lr-scale must be a finite number > 0, got 0.0$"),
])
def test_a_setting_that_cannot_run_is_a_config_error_naming_its_flag(config: LoopConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(config)


def test_the_checkpoint_stores_the_resolved_config_as_a_plain_dict(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "syn", n=4, seed=3, size=64)
    train_depth.main(depth_args(data, tmp_path / "run", "--epochs", "1"))
    stored = read_checkpoint(tmp_path / "run" / "midas.pth")["config"]
    flags = vars(train_depth.parse_args(depth_args(data, tmp_path / "run", "--epochs", "1")))
    assert stored == dataclasses.asdict(config_from_flags(flags, DepthConfig))
    assert stored["schedule_epochs"] == 1 and stored["clip"] is None and stored["device"] == "cpu"


# ---- checkpoints written before the refactor


def test_a_checkpoint_written_by_main_before_the_refactor_resumes_to_the_same_weights(
        shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/fixtures/checkpoints: epoch 1 of stage 1 (pdnet / test_efficientnet, 64 px, on the DUT sample) as
    train_single.py at commit 0fa2bf8 saved it, and the sums of every weight after that code resumed it to
    epoch 2. Today's code resumes the same file to the same weights (up to the rounding of another thread count)."""
    save = tmp_path / "stage1.pth"
    shutil.copy(FIXTURES / "stage1_main_0fa2bf8.pth", save)
    monkeypatch.chdir(shared_data)  # the run's --train-set names the sample relative to the data folder
    train_single.main(["--model", "pdnet", "--backbone", "test_efficientnet", "--pretrained", "none",
                       "--train-set", "folder:DUT-sample:white=in-focus", "--img-size", "64", "--batch-size", "2",
                       "--schedule-epochs", "5", "--workers", "0", "--device", "cpu", "--log-dir",
                       str(tmp_path / "log"), "--save", str(save), "--epochs", "2", "--resume"])
    resumed = read_checkpoint(save)
    expected = json.loads((FIXTURES / "stage1_main_0fa2bf8_epoch2.json").read_text())
    assert resumed["epoch"] == expected["epoch"] == 2
    assert set(expected["tensors"]) == {k for k, v in resumed["model"].items() if v.is_floating_point()}
    for name, (total, absolute) in expected["tensors"].items():
        tensor = resumed["model"][name].double()
        assert tensor.sum().item() == pytest.approx(total, abs=1e-5), name
        assert tensor.abs().sum().item() == pytest.approx(absolute, abs=1e-5), name
    with pytest.raises(SystemExit, match=r"--resume .*stage1\.pth: --lr 0\.001 differs from the checkpoint's 0\.0001$"):
        train_single.main(["--model", "pdnet", "--backbone", "test_efficientnet", "--pretrained", "none",
                           "--train-set", "folder:DUT-sample:white=in-focus", "--img-size", "64", "--batch-size",
                           "2", "--schedule-epochs", "5", "--workers", "0", "--device", "cpu", "--log-dir",
                           str(tmp_path / "log"), "--save", str(save), "--epochs", "3", "--resume", "--lr", "1e-3"])


# ---- the depth teacher through the one loop: --resume and torchrun


def depth_args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--val-data", str(data), "--img-size", "64", "--batch-size", "2", "--features", "16",
            "--workers", "0", "--device", "cpu", "--lr", "1e-3", "--warmup-steps", "2", "--save",
            str(run / "midas.pth"), "--log-dir", str(run / "log"), *extra]


def test_train_depth_resume_continues_a_stopped_run_bit_exactly(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "syn", n=4, seed=3, size=64)
    whole, split = tmp_path / "whole", tmp_path / "split"
    train_depth.main(depth_args(data, whole, "--epochs", "3", "--schedule-epochs", "3"))
    train_depth.main(depth_args(data, split, "--epochs", "1", "--schedule-epochs", "3"))
    train_depth.main(depth_args(data, split, "--epochs", "3", "--schedule-epochs", "3", "--resume"))
    a, b = read_checkpoint(whole / "midas.pth"), read_checkpoint(split / "midas.pth")
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])
    assert [row["loss"] for row in read_csv(whole / "log" / "steps.csv")] == \
        [row["loss"] for row in read_csv(split / "log" / "steps.csv")]
    assert [row["abs_rel"] for row in read_csv(split / "log" / "epochs.csv")] != ["", "", ""]


def test_train_depth_resume_refuses_another_kind_of_run_or_setting(tmp_path: Path) -> None:
    data = generate_dataset(tmp_path / "syn", n=4, seed=3, size=64)
    train_depth.main(depth_args(data, tmp_path, "--epochs", "1", "--schedule-epochs", "3"))
    with pytest.raises(SystemExit, match=r"^--resume .*midas\.pth: --grad-weight 0\.2 differs from the checkpoint's "
                                         r"0\.5$"):
        train_depth.main(depth_args(data, tmp_path, "--epochs", "2", "--schedule-epochs", "3", "--resume",
                                    "--grad-weight", "0.2"))
    with pytest.raises(SystemExit, match=r"^--resume .*midas\.pth: is a depth-teacher checkpoint"):
        train_single.main(["--train-set", f"synthetic:{data}", "--backbone", "resnet18", "--pretrained", "none",
                           "--img-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu",
                           "--save", str(tmp_path / "midas.pth"), "--log-dir", str(tmp_path / "log"), "--resume"])


def test_train_depth_under_torchrun_matches_one_process_with_accumulation(tmp_path: Path) -> None:
    """2 gloo processes of one image each == one process with --accumulate 2 (per-process BatchNorm on the CPU
    sees the same micro-batches), step by step."""
    data = generate_dataset(tmp_path / "syn", n=4, seed=3, size=64)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    settings = ["--epochs", "2", "--no-augment"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "train_depth.py", *depth_args(data, tmp_path / "ddp"), *settings]
    single = [sys.executable, "train_depth.py", *depth_args(data, tmp_path / "single"), *settings, "--accumulate", "2"]
    for command in (torchrun, single):
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    ddp, one = (read_csv(tmp_path / run / "log" / "steps.csv") for run in ("ddp", "single"))
    assert len(ddp) == len(one) == 4
    for a, b in zip(ddp, one):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4, abs=1e-6)
    final = [read_checkpoint(tmp_path / run / "midas.pth")["model"] for run in ("ddp", "single")]
    weights = [key for key, value in final[0].items() if value.is_floating_point() and "running" not in key]
    assert len(weights) > 60  # BatchNorm running statistics: DDP keeps rank 0's, one process both micro-batches'
    for key in weights:
        torch.testing.assert_close(final[0][key], final[1][key], rtol=1e-3, atol=1e-5)


# ---- the library below the scripts


def library_modules() -> list[Path]:
    return [path for package in LIBRARY if (ROOT / package).is_dir() for path in sorted((ROOT / package).glob("*.py"))]


def test_the_library_takes_no_namespace_and_raises_no_system_exit() -> None:
    """argparse results stay in the scripts (engine.options only defines their flags); below them every function
    takes a config and raises a typed error that the scripts turn into their one-line message."""
    found = []
    for path in library_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if name in ("SystemExit", "Namespace"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert found == []


def test_no_module_of_the_library_scripts_or_tools_is_over_400_lines() -> None:
    modules = library_modules() + sorted(ROOT.glob("*.py")) + sorted((ROOT / "bench").glob("*.py")) + \
        sorted((ROOT / "tools").glob("*.py"))
    long = {str(path.relative_to(ROOT)): n for path in modules if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_every_recipe_of_the_recipe_study_is_a_valid_train_single_command(tmp_path: Path) -> None:
    """bench/release_recipes.py's rows resolve to the settings their names promise (a typo there shows only after
    minutes of training otherwise)."""
    from bench import release_recipes as study

    configs = {}
    for name in study.RECIPES:
        for save, command in study.recipe_commands(name, tmp_path, "data"):
            assert command[1] == "train_single.py"
            configs[name] = config_from_flags(vars(train_single.parse_args(command[2:])), TrainConfig)
            save.parent.mkdir(exist_ok=True)
            save.touch()  # the next stage's --init
    imagenet = {name: configs[name] for name, recipe in study.RECIPES.items() if recipe.group == "imagenet"}
    assert {(c.backbone, c.epochs * 63, c.crop_scale) for c in imagenet.values()} == {("tf_efficientnet_lite0", 504,
                                                                                       0.5)}
    assert (configs["imagenet 224"].pretrained, configs["random init 224"].pretrained) == ("imagenet", "none")
    assert configs["imagenet 320"].img_size == 320
    assert (configs["encoder lr x0.1"].lr * configs["encoder lr x0.1"].encoder_lr_scale,
            configs["encoder lr x0.1"].lr) == (pytest.approx(3e-5), 3e-4)
    assert (configs["lr 1e-3, enc x0.3"].lr * configs["lr 1e-3, enc x0.3"].encoder_lr_scale,
            configs["lr 1e-3, enc x0.3"].lr) == (pytest.approx(3e-4), 1e-3)
    assert all(c.pretrained == "none" and c.lr == 5e-4 for name, c in configs.items() if name not in imagenet)
    assert {c.seed for c in configs.values()} == {42}
    (_, command), = study.recipe_commands("imagenet 320", tmp_path, "data", seed=43)
    assert config_from_flags(vars(train_single.parse_args(command[2:])), TrainConfig).seed == 43
