"""Every output location (--save, --log-dir, test.py's and the tools' --out) is probed when a script starts,
so that an unwritable one is named in one line before any training or evaluation."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

import train_depth
import train_kd
import train_single
from datasets.synthetic import generate_dataset
from models import build_model
from utils.checkpoint import model_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("syn") / "set", n=4, seed=0, size=64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model("dffnet", "resnet18")
    return save_checkpoint(model_checkpoint(model, {}, 1), tmp_path_factory.mktemp("ckpt") / "model.pth")


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    """A regular file: nothing can be written 'inside' it."""
    path = tmp_path / "notes.txt"
    path.write_text("a file, not a folder\n")
    return path


def train_args(data: Path, save: str | Path, log: str | Path) -> list[str]:
    return ["--backbone", "resnet18", "--pretrained", "none", "--train-set", f"synthetic:{data}", "--img-size", "64",
            "--batch-size", "2", "--epochs", "1", "--workers", "0", "--device", "cpu", "--save", str(save),
            "--log-dir", str(log)]


def test_an_unwritable_save_stops_training_before_the_first_epoch(data: Path, tmp_path: Path):
    """`--save /proc/x.pth` used to train a whole epoch, then die with a traceback."""
    with pytest.raises(SystemExit, match=r"^--save /proc/x\.pth: cannot write in /proc \(No such file or directory\)$"):
        train_single.main(train_args(data, "/proc/x.pth", tmp_path / "log"))
    assert not (tmp_path / "log").exists()
    with pytest.raises(SystemExit, match=r"^--save /proc/x\.pth: cannot write in /proc"):
        train_depth.main(["--data", str(data), "--img-size", "64", "--epochs", "1", "--batch-size", "2",
                          "--features", "16", "--workers", "0", "--device", "cpu", "--save", "/proc/x.pth",
                          "--log-dir", str(tmp_path / "log")])
    assert not (tmp_path / "log").exists()


def test_an_unwritable_log_dir_or_a_folder_as_save_is_named(data: Path, tmp_path: Path, a_file: Path):
    log = a_file / "log"
    for main in (train_single.main, train_kd.main):
        with pytest.raises(SystemExit, match=rf"^--log-dir {re.escape(str(log))}: cannot create the folder "
                                             rf"{re.escape(str(log))} \(Not a directory\)$"):
            main(train_args(data, tmp_path / "model.pth", log))
    with pytest.raises(SystemExit, match=rf"^--log-dir {re.escape(str(a_file))}: is a file, expected a folder$"):
        train_single.main(train_args(data, tmp_path / "model.pth", a_file))
    with pytest.raises(SystemExit, match=rf"^--save {re.escape(str(tmp_path))}: is a folder, expected a file path$"):
        train_single.main(train_args(data, tmp_path, tmp_path / "log"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_test_py_checks_its_out_folder_before_evaluating(data: Path, checkpoint: Path, a_file: Path):
    """test.py used to compute every metric, then fail to write results.json."""
    test_script = load_script(ROOT / "test.py")
    out = a_file / "results"
    with pytest.raises(SystemExit, match=rf"^--out {re.escape(str(out))}: cannot create the folder "
                                         rf"{re.escape(str(out))} \(Not a directory\)$"):
        test_script.main(["--checkpoint", str(checkpoint), "--dataset", f"synthetic:{data}", "--out", str(out),
                          "--img-size", "64", "--workers", "0", "--device", "cpu"])


def test_the_tools_check_their_out_before_the_work(data: Path, checkpoint: Path, a_file: Path):
    figures = load_script(ROOT / "tools" / "figures.py")
    out = a_file / "grid.png"
    with pytest.raises(SystemExit, match=rf"^--out {re.escape(str(out))}: cannot write in "
                                         rf"{re.escape(str(a_file))} \(Not a directory\)$"):
        figures.main(["--dataset", f"synthetic:{data}", "--checkpoint", f"A={checkpoint}", "--out", str(out),
                      "--img-size", "64", "--device", "cpu"])
    baselines = load_script(ROOT / "tools" / "baselines.py")
    with pytest.raises(SystemExit, match=rf"^--out {re.escape(str(a_file))}: is a file, expected a folder$"):
        baselines.main(["all-in-focus", "--test-set", f"synthetic:{data}", "--out", str(a_file)])


def test_the_probe_leaves_nothing_behind(tmp_path: Path):
    """Folders made for the probe are removed again: a later failing check must not leave empty folders."""
    from engine.options import check_writable

    check_writable(tmp_path / "a" / "b" / "model.pth", "--save")
    check_writable(tmp_path / "runs" / "x", "--log-dir", folder=True)
    assert not list(tmp_path.iterdir())
    torch.save({}, tmp_path / "kept.pth")
    check_writable(tmp_path / "kept.pth", "--save")
    assert [p.name for p in tmp_path.iterdir()] == ["kept.pth"]
