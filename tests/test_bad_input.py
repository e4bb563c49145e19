"""Bad input a careless or unlucky user gives (issue 21, B1-B9 and P1-P15): each gets a one-line message
naming the file and what to do, loses nothing, and gives no silent wrong number. Tiny images and models."""
from __future__ import annotations

import contextlib
import errno
import importlib.util
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import engine.stages
import engine.train
import train_kd
import train_single
from datasets import DatasetError, PhotoDataset, build_dataset
from datasets.decoding import load_rgb
from engine.baselines import write_baseline_maps
from engine.config import TrainConfig
from engine.evaluate import EvalSettings
from engine.options import config_from_flags, log_dir
from engine.photos import photo_output_stems, predict_photos
from metrics.report import write_results
from models import build_midas, build_model
from utils.checkpoint import model_checkpoint, read_checkpoint, save_checkpoint
from utils.distributed import DistributedContext

ROOT = Path(__file__).resolve().parents[1]
CPU = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
FAST = ["--img-size", "64", "--workers", "0", "--batch-size", "2", "--device", "cpu"]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


test_script = load_script("test_script_bad_input", ROOT / "test.py")
check_script = load_script("check_dataset_bad_input", ROOT / "tools" / "check_dataset.py")


def run_test_py(args: list[str]) -> subprocess.CompletedProcess:
    """test.py's main in this process, with its stdout and stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = test_script.main(args)
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def write_set(root: Path, n: int = 2, size: int = 64, seed: int = 0) -> Path:
    """n noisy photos whose left half is in focus (white in the masks), in image/ + gt/."""
    rng = np.random.default_rng(seed)
    (root / "image").mkdir(parents=True)
    (root / "gt").mkdir()
    mask = np.zeros((size, size), np.uint8)
    mask[:, : size // 2] = 255
    for i in range(n):
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "image" / f"{i}.png")
        Image.fromarray(mask).save(root / "gt" / f"{i}.png")
    return root


def train_args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["--backbone", "resnest14d", "--pretrained", "none", "--train-set", f"folder:{data}:white=in-focus",
            "--epochs", "1", *FAST, "--save", str(run / "model.pth"), "--log-dir", str(run / "log"), *extra]


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained resnest14d DFFNet in our checkpoint format."""
    torch.manual_seed(0)
    model = build_model("dffnet", backbone="resnest14d")
    path = tmp_path_factory.mktemp("detector") / "dffnet.pth"
    save_checkpoint(model_checkpoint(model, {}, 0), path)
    return path


@pytest.fixture(scope="module")
def midas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MiDaS (depth model) in our checkpoint format."""
    torch.manual_seed(0)
    model = build_midas(encoder="resnet18", features=16)
    path = tmp_path_factory.mktemp("midas") / "midas_small.pt"
    save_checkpoint(model_checkpoint(model, {}, 0), path)
    return path


# ---- B1: 16-bit grey photos


@pytest.mark.parametrize("dtype, suffix", [(np.uint16, ".png"), (np.int32, ".tif")])  # PIL modes I;16 and I
def test_a_16_bit_grey_photo_is_scaled_to_8_bits(tmp_path: Path, dtype, suffix: str) -> None:
    """Left half 106 x 256, right half 200 x 256: 8-bit grey 106 and 200, mean 153 (not almost white)."""
    values = np.full((8, 8), 106 * 256, dtype)
    values[:, 4:] = 200 * 256
    Image.fromarray(values).save(tmp_path / f"grey16{suffix}")
    rgb = np.asarray(load_rgb(tmp_path / f"grey16{suffix}"))
    assert rgb.shape == (8, 8, 3)
    assert rgb[:, :4].max() == rgb[:, :4].min() == 106 and rgb[:, 4:].max() == 200
    assert rgb.mean() == pytest.approx(153.0)


# ---- B2: a colour mask


def test_a_colour_mask_is_refused_by_name(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    red = np.zeros((64, 64, 3), np.uint8)
    red[:, :32, 0] = 255
    Image.fromarray(red).save(data / "gt" / "1.png")
    for split in ("train", "test"):
        with pytest.raises(DatasetError, match=r"colour masks whose red, green and blue differ: gt/1\.png\. Masks "
                                               r"must be grey"):
            build_dataset(f"folder:{data}:white=in-focus", split, img_size=64)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert check_script.main([str(data)]) == 1
    assert "colour mask: gt/1.png (masks must be grey)" in stdout.getvalue()
    (tmp_path / "maps").mkdir()
    result = run_test_py(["--pred-dir", str(tmp_path / "maps"), "--dataset", f"folder:{data}:white=in-focus",
                          "--skip-missing", "--out", str(tmp_path / "out"), *FAST])
    assert result.returncode == 2 and "colour masks whose red, green and blue differ: gt/1.png" in result.stderr


def test_a_grey_mask_stored_as_rgb_jpeg_is_still_read(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    grey = np.asarray(Image.open(data / "gt" / "1.png").convert("RGB"))
    (data / "gt" / "1.png").unlink()
    Image.fromarray(grey).save(data / "gt" / "1.jpg", quality=75)
    assert len(build_dataset(f"folder:{data}:white=in-focus", "train", img_size=64)) == 2


# ---- B3: tiny images


def test_a_one_pixel_image_is_left_out_with_a_message(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    Image.new("RGB", (1, 1), (90, 90, 90)).save(data / "image" / "tiny.png")
    Image.new("L", (1, 1), 255).save(data / "gt" / "tiny.png")
    with pytest.warns(UserWarning, match=r"left out of the test set: images smaller than 2x2 pixels: tiny\.png \(1x1\)"):
        test = build_dataset(f"folder:{data}:white=in-focus", "test")
    assert [p.name for p in test.pairs] == ["0.png", "1.png"]
    with pytest.raises(DatasetError, match=r"cannot be used for training: images smaller than 2x2 pixels: tiny\.png"):
        build_dataset(f"folder:{data}:white=in-focus", "train", img_size=64)


# ---- B4 / P4: a depth checkpoint where a blur detector is expected


def test_a_depth_checkpoint_as_teacher_is_refused_at_start(tmp_path: Path, midas: Path) -> None:
    data = write_set(tmp_path / "set")
    with pytest.raises(SystemExit, match=rf"^--teacher: {midas}: is a depth model \(MiDaS\), not a blur detector"):
        train_kd.main(train_args(data, tmp_path) + ["--teacher", str(midas), "--depth-teacher", str(midas)])
    assert not (tmp_path / "model.pth").exists()


def test_a_depth_checkpoint_given_to_test_py_is_named(tmp_path: Path, midas: Path) -> None:
    data = write_set(tmp_path / "set")
    result = run_test_py(["--checkpoint", str(midas), "--dataset", f"folder:{data}:white=in-focus",
                          "--out", str(tmp_path / "out"), *FAST])
    assert result.returncode == 2
    assert f"test.py: error: {midas}: is a depth model (MiDaS), not a blur detector" in result.stderr


# ---- B5: two runs with one --save


def test_a_second_run_on_the_same_save_stops_naming_the_first(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    save = tmp_path / "model.pth"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from utils.runlock import acquire; "
         "acquire(sys.argv[2]); print('locked', flush=True); sys.stdin.read()", str(ROOT), str(save)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(SystemExit, match=rf"^--save {save}: another run \(pid {holder.pid}\) is writing it; wait"):
            train_single.main(train_args(data, tmp_path))
    finally:
        holder.stdin.close()
        holder.wait()
    assert not save.exists()


# ---- B6 / P9: saved maps of another size than the GT


def write_maps(folder: Path, data: Path, scale: float = 1.0, invert: bool = False) -> Path:
    """Maps equal to the GT (white = in-focus), or inverted, resized by `scale`."""
    folder.mkdir()
    for mask in sorted((data / "gt").iterdir()):
        grey = np.asarray(Image.open(mask))
        grey = 255 - grey if invert else grey
        size = (round(grey.shape[1] * scale), round(grey.shape[0] * scale))
        Image.fromarray(grey).resize(size, Image.Resampling.NEAREST).save(folder / mask.name)
    return folder


def test_half_size_maps_are_named_and_scored_at_the_gt_size(tmp_path: Path) -> None:
    """Homogeneous region: the top quarter of every image, so its share of the pixels is 25 %."""
    data = write_set(tmp_path / "set")
    (data / "homogeneous").mkdir()
    region = np.zeros((64, 64), np.uint8)
    region[:16] = 255
    for name in ("0.png", "1.png"):
        Image.fromarray(region).save(data / "homogeneous" / name)
    maps = write_maps(tmp_path / "maps", data, scale=0.5)
    out = tmp_path / "out"
    result = run_test_py(["--pred-dir", str(maps), "--dataset", f"folder:{data}:white=in-focus",
                          "--protocol", "standard", "--out", str(out), *FAST])
    assert result.returncode == 0, result.stderr
    assert (f"test.py: warning: {maps}: 2 of 2 maps differ in size from their GT mask, the maps' size is wrong "
            "(0.png 32x32, GT 64x64, 1.png 32x32, GT 64x64); resized to the GT size") in result.stderr
    entry = json.loads((out / "results.json").read_text())["results"][0]
    assert entry["regions"]["homogeneous"]["share"] == pytest.approx(0.25)
    result = run_test_py(["--pred-dir", str(maps), "--dataset", f"folder:{data}:white=in-focus",
                          "--out", str(tmp_path / "official"), *FAST])
    assert result.returncode == 2
    assert (f"test.py: error: {maps}: every map's size differs from its GT mask (0.png 32x32, GT 64x64, 1.png "
            "32x32, GT 64x64): the maps were saved at another size") in result.stderr


# ---- B7: inverted maps


def test_inverted_maps_suggest_the_other_polarity(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    maps = write_maps(tmp_path / "maps", data, invert=True)
    result = run_test_py(["--pred-dir", str(maps), "--dataset", f"folder:{data}:white=in-focus",
                          "--out", str(tmp_path / "out"), *FAST])
    assert result.returncode == 0
    assert (f"test.py: warning: {maps}: MAE above 0.5 on 2 of 2 maps (a constant grey map scores 0.5): the maps "
            "look inverted. If white means blurred in them, pass --pred-polarity white=blurred") in result.stderr
    right = run_test_py(["--pred-dir", str(maps), "--dataset", f"folder:{data}:white=in-focus",
                         "--pred-polarity", "white=blurred", "--out", str(tmp_path / "out2"), *FAST])
    assert right.returncode == 0 and "warning" not in right.stderr


def test_a_constant_baseline_is_scored_without_the_inverted_warning(tmp_path: Path) -> None:
    """The all-in-focus baseline on a set that is mostly blurred scores MAE 0.75: a fact about the set, not a
    polarity mistake (the demo's own baseline used to get the warning)."""
    data = write_set(tmp_path / "set")
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :16] = 255  # a quarter in focus
    for name in ("0.png", "1.png"):
        Image.fromarray(mask).save(data / "gt" / name)
    maps = write_baseline_maps("all-in-focus", f"folder:{data}:white=in-focus", tmp_path / "all-in-focus")
    result = run_test_py(["--pred-dir", str(maps), "--dataset", f"folder:{data}:white=in-focus",
                          "--out", str(tmp_path / "out"), *FAST])
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out/results.json").read_text())["results"][0]["mae"] == pytest.approx(0.75)
    assert "warning" not in result.stderr
    inverted = write_maps(tmp_path / "maps", data, invert=True)  # maps with contrast still get it
    result = run_test_py(["--pred-dir", str(inverted), "--dataset", f"folder:{data}:white=in-focus",
                          "--out", str(tmp_path / "out2"), *FAST])
    assert "the maps look inverted" in result.stderr


# ---- B8: a re-run that finds no set keeps the results


def test_a_run_that_finds_no_set_keeps_the_previous_results_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"run": {}, "results": ["the previous run"]}')
    (tmp_path / "maps").mkdir()
    result = run_test_py(["--pred-dir", str(tmp_path / "maps"), "--dataset", "CUHK-TE-1", "--data-root",
                          str(tmp_path / "empty"), "--skip-missing", "--out", str(out), *FAST])
    assert result.returncode == 1
    assert f"{out / 'results.json'} is left as it was" in result.stderr
    assert (out / "results.json").read_text() == '{"run": {}, "results": ["the previous run"]}'


# ---- B9: default log folders of two saves


def test_two_saves_with_one_file_name_log_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_set(tmp_path / "set")
    monkeypatch.chdir(tmp_path)
    for run in ("e1", "e2"):
        args = [a for a in train_args(data, tmp_path) if a not in ("--log-dir", str(tmp_path / "log"))]
        args[args.index("--save") + 1] = f"{run}/model.pth"
        train_single.main(args)
    first, second = (tmp_path / "runs" / run / "model" / "epochs.csv" for run in ("e1", "e2"))
    assert first.is_file() and second.is_file()
    assert log_dir(TrainConfig(save="checkpoint/DFFNet.pth")) == Path("runs/checkpoint/DFFNet")


# ---- P1: hidden files


def test_hidden_and_macos_resource_files_are_ignored_with_one_note(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    for folder in ("image", "gt"):
        (data / folder / "._0.png").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    (data / "image" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    with pytest.warns(UserWarning, match=r"ignoring 3 hidden files \(names starting with '\.', e\.g\. the '\._' "
                                         r"files macOS writes\): image/\._0\.png, image/\.DS_Store, gt/\._0\.png"):
        assert len(build_dataset(f"folder:{data}:white=in-focus", "train", img_size=64)) == 2
    photos = PhotoDataset(data / "image")
    assert [p.name for p in photos.paths] == ["0.png", "1.png"]


# ---- P2: long names


def test_long_photo_names_stay_under_255_bytes(tmp_path: Path) -> None:
    name = "x" * 250 + ".jpg"
    stems = photo_output_stems([tmp_path / "a" / name, tmp_path / "b" / name, tmp_path / ("é" * 120 + ".jpg")])
    assert len({s.casefold() for s in stems}) == 3
    for stem in stems:
        assert len(f"{stem}.png".encode()) <= 255
        (tmp_path / f"{stem}.png").write_bytes(b"")


# ---- P3 / P13 / P8: photos


def test_photos_glob_into_their_own_out_skips_the_output_folders(tmp_path: Path, detector: Path) -> None:
    from engine.evaluate import load_detector

    settings = EvalSettings(img_size=64, workers=0, batch_size=2)
    model = load_detector(str(detector), settings)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 30), (120, 80, 60)).save(photos / "a.jpg")
    predict_photos(model, [str(photos / "a.jpg")], settings, photos)
    report = predict_photos(model, sorted(str(p) for p in photos.iterdir()), settings, photos)
    assert sorted(p.relative_to(photos).as_posix() for p in report.written) == ["maps/a.png", "overlays/a.jpg"]
    assert report.skipped == [f"{photos / 'maps'} (this run's output folder)",
                              f"{photos / 'overlays'} (this run's output folder)"]


def test_a_decompression_bomb_is_reported_and_the_other_photos_mapped(tmp_path: Path, detector: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.evaluate import load_detector

    settings = EvalSettings(img_size=64, workers=0, batch_size=2)
    model = load_detector(str(detector), settings)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "panorama.png")
    Image.new("RGB", (16, 16), (90, 60, 30)).save(tmp_path / "normal.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: Pillow refuses to decode it
    report = predict_photos(model, [str(tmp_path / "panorama.png"), str(tmp_path / "normal.png")], settings,
                            tmp_path / "out")
    assert len(report.unreadable) == 1 and report.unreadable[0].startswith(f"{tmp_path / 'panorama.png'}: cannot decode")
    assert sorted(p.name for p in report.written) == ["normal.jpg", "normal.png"]


def disk_full_for(folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes of files under a `folder` path part create the file and fail with ENOSPC."""
    real = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        if folder in self.parts:
            self.touch()
            raise ENOSPC
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_disk_full_while_saving_maps_keeps_the_metrics(tmp_path: Path, detector: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_set(tmp_path / "set", n=3)
    out = tmp_path / "out"
    disk_full_for("maps", monkeypatch)
    result = run_test_py(["--checkpoint", str(detector), "--dataset", f"folder:{data}:white=in-focus",
                          "--save-maps", "--out", str(out), *FAST])
    assert result.returncode == 1
    assert "dffnet on set (official): MAE" in result.stdout
    assert "No space left on device" in result.stderr and str(out / "dffnet" / "set" / "maps") in result.stderr
    assert json.loads((out / "results.json").read_text())["results"][0]["n_images"] == 3
    assert [p for p in (out / "dffnet" / "set" / "maps").iterdir() if p.stat().st_size == 0] == []


def test_disk_full_while_writing_photo_maps_is_one_line(tmp_path: Path, detector: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (20, 20), (90, 60, 30)).save(tmp_path / "a.png")
    disk_full_for("maps", monkeypatch)
    result = run_test_py(["--checkpoint", str(detector), "--images", str(tmp_path / "a.png"),
                          "--out", str(tmp_path / "out"), *FAST])
    assert result.returncode == 1
    assert f"test.py: error: disk write failed, no more maps written: {tmp_path / 'out' / 'maps' / 'a.png'}: No " \
           "space left on device" in result.stderr
    assert list((tmp_path / "out" / "maps").iterdir()) == []


# ---- P5 / P7 / P15: training


def test_ctrl_c_during_training_exits_130_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    data = write_set(tmp_path / "set")
    real_step = engine.train.train_step

    def interrupted_in_epoch_2(stage, micro_batches, epoch, *args):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_step(stage, micro_batches, epoch, *args)

    monkeypatch.setattr(engine.train, "train_step", interrupted_in_epoch_2)
    with pytest.raises(SystemExit) as stop:
        try:
            train_single.main(train_args(data, tmp_path) + ["--epochs", "2"])
        except KeyboardInterrupt:
            pytest.fail("Ctrl-C ended training with a raw KeyboardInterrupt")
    assert stop.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"interrupted in epoch 2; last checkpoint: {tmp_path / 'model.pth'} (epoch 1). Resume with --resume")
    assert read_checkpoint(tmp_path / "model.pth")["epoch"] == 1


def test_disk_full_at_a_checkpoint_save_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_set(tmp_path / "set")

    def disk_full(obj, path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(engine.train, "save_checkpoint", disk_full)
    with pytest.raises(SystemExit, match=rf"^--save {tmp_path / 'model.pth'}: cannot write the checkpoint of epoch 1 "
                                         r"\(No space left on device\); the last good checkpoint is none: no epoch "
                                         r"completed\. Free space"):
        train_single.main(train_args(data, tmp_path))


def test_a_write_that_fails_in_torch_save_raises_its_os_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills after 1000 bytes: torch.save reports the file's OSError as 'enforce fail at
    inline_container.cc'; the caller gets ENOSPC, and no temporary file stays."""
    real_fdopen = os.fdopen

    class FullDisk(io.RawIOBase):
        def __init__(self, fd: int) -> None:
            self.real = real_fdopen(fd, "wb")
            self.written = 0

        def writable(self) -> bool:
            return True

        def write(self, data: bytes) -> int:
            if self.written + len(data) > 1000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.real.write(data)

        def flush(self) -> None:
            self.real.flush()

        def close(self) -> None:
            super().close()
            self.real.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FullDisk(fd))
    with pytest.raises(OSError) as error:
        save_checkpoint({"weights": torch.ones(100)}, tmp_path / "model.pth")
    assert error.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_batch_larger_than_the_training_set_is_one_line_at_start(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    with pytest.raises(SystemExit, match=r"^--batch-size 4 is larger than the training set \(2 images in folder:.*\); "
                                         r"lower --batch-size to at most 2$"):
        train_single.main(train_args(data, tmp_path) + ["--batch-size", "4"])


# ---- P6: stale temporary files


def test_a_stale_temp_file_of_a_killed_save_is_removed_at_the_next_save(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f".model.pth.{gone.pid}.k1ll3d.tmp"
    live = tmp_path / f".model.pth.{os.getppid()}.wr1t1ng.tmp"
    for path in (stale, live):
        path.write_bytes(b"half a checkpoint")
    save_checkpoint({"epoch": 1}, tmp_path / "model.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "model.pth"])


# ---- P10: a typo beside a valid set name


def test_a_typo_in_a_set_name_suggests_the_close_name_and_fails(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"^--dataset CUHK-TE1: not a data set name; did you mean CUHK-TE-1\?$"):
        test_script.main(["--dataset", "CUHK-TE-1", "CUHK-TE1", "--skip-missing", "--out", str(tmp_path)])


# ---- P11: check_dataset.py into a closed pipe


def test_check_dataset_into_a_closed_pipe_has_no_traceback(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    child = subprocess.Popen([sys.executable, str(ROOT / "tools" / "check_dataset.py"), str(data), "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    child.stdout.close()  # the reader is gone before the checker writes, as `| head` after its lines
    stderr = child.stderr.read().decode()
    assert child.wait() == 0
    assert "BrokenPipeError" not in stderr and "Traceback" not in stderr, stderr


# ---- P12: results.json permissions


def test_results_json_gets_the_permissions_of_a_new_file(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        write_results([], tmp_path / "results.json", {})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644


# ---- P14: the split-list message names a real flag


def test_a_missing_split_list_names_the_split_file_flag(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_set(root / "CUHK", n=3)
    for folder in ("image", "gt"):
        for i in range(3):
            (root / "CUHK" / folder / f"{i}.png").rename(root / "CUHK" / folder / f"out_of_focus{i:04d}.png")
    args = train_args(tmp_path / "unused", tmp_path, "--train-set", "CUHK-TR-1", "--data-root", str(root))
    with pytest.raises(SystemExit, match=r"CUHK-TR-1 needs the split list .* Put it there or pass --split-file PATH"):
        train_single.main(args)
    (tmp_path / "te1.txt").write_text("out_of_focus0002.png\n")
    parsed = config_from_flags(vars(train_single.parse_args(args + ["--split-file", str(tmp_path / "te1.txt")])), TrainConfig)
    loader, _ = engine.stages.make_dbd_loader(parsed, CPU)
    assert [p.name for p in loader.dataset.pairs] == ["out_of_focus0000.png", "out_of_focus0001.png"]
    assert train_kd.parse_args(["--split-file", "x.txt"]).split_file == "x.txt"
    assert test_script.parse_args(["--split-file", "x.txt", "--pred-dir", "m", "--dataset", "CUHK-TE-1"]).split_file \
        == "x.txt"


# ---- micro-batches of one image through split attention (found while fixing issue 19)


def test_a_one_image_micro_batch_through_split_attention_is_refused_at_start(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    args = train_args(data, tmp_path)  # --batch-size 2
    with pytest.raises(SystemExit, match=r"^--batch-size 2 over 1 process\(es\) x --accumulate 2 gives micro-batches "
                                         r"of 1 image, and the trained network \(split attention, ResNeSt\) cannot"):
        train_single.main(args + ["--accumulate", "2"])
    resnet = [a if a != "resnest14d" else "resnet18" for a in args]
    train_single.main(resnet + ["--accumulate", "2"])  # plain BatchNorm takes one image
    assert (tmp_path / "model.pth").is_file()
