"""Bad input, third round (issue 30, B1-B6 and P1-P16): shipped files checked when loaded, tools that never
destroy their inputs, runs that never lose each other's results, and odd files among photos. Each case gets a
one-line message naming the file and what is wrong, loses nothing and processes the other inputs. Tiny images
and models; the shipped files are only ever read (a damaged one is a copy)."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import engine.eval_run
import engine.evaluate
import models.shipped
import train_kd
import train_single
from datasets import DatasetError, DatasetWarning, PhotoDataset, build_dataset
from models import build_midas, build_model
from models.shipped import SHIPPED_CHECKPOINT, SHIPPED_DEPTH_TEACHER
from tests.test_bad_input import FAST, load_script, run_test_py, train_args, write_set
from utils.checkpoint import model_checkpoint, read_checkpoint, save_checkpoint
from utils.runlock import lock_path

ROOT = Path(__file__).resolve().parents[1]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
PROG = r"[\w.]+"  # a tool's parser.prog: its file name, or pytest's when called in this process
NON_UTF8_NAME = os.fsdecode(b"caf\xe9")  # Latin-1 'café': not UTF-8, held by Python as a surrogate escape

export_tool = load_script("export_model_bad_input_3", ROOT / "tools" / "export_model.py")
baselines_tool = load_script("baselines_bad_input_3", ROOT / "tools" / "baselines.py")
figures_tool = load_script("figures_bad_input_3", ROOT / "tools" / "figures.py")
photos_tool = load_script("sample_photos_bad_input_3", ROOT / "tools" / "sample_photos.py")


def md5s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def flipped_copy(source: Path, target: Path) -> Path:
    """A copy of `source` with one byte in the middle of its tensor data inverted (the original is only read)."""
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def hold_folder(folder: Path) -> subprocess.Popen:
    """Another process holding an flock on `folder` (as a run writing into it does) until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; os.makedirs(sys.argv[1], exist_ok=True); "
         "fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); "
         "sys.stdin.read()", str(folder)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    return holder


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained resnet18 DFFNet in our checkpoint format, trained at 64 px."""
    torch.manual_seed(0)
    model = build_model("dffnet", backbone="resnet18")
    path = tmp_path_factory.mktemp("detector") / "dffnet.pth"
    save_checkpoint(model_checkpoint(model, {"img_size": 64}, 1), path)
    return path


@pytest.fixture(scope="module")
def midas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MiDaS as train_depth.py saves it (with its optimiser state)."""
    torch.manual_seed(0)
    model = build_midas(encoder="resnet18", features=16)
    optimizer = torch.optim.Adam(model.parameters())
    path = tmp_path_factory.mktemp("midas") / "midas_small.pth"
    save_checkpoint(model_checkpoint(model, {"loss": "ssi", "img_size": 64}, 1,
                                     optimizers={"model": optimizer.state_dict()}), path)
    return path


# ---- B1: the shipped files are checked against their recorded SHA-256 when loaded


def test_a_flipped_byte_in_the_shipped_detector_stops_test_py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy stands where the shipped file stands (models.shipped.ROOT / SHIPPED_CHECKPOINT): intact it is used;
    with one byte flipped test.py names it in one line before scoring anything. Its digest is computed once."""
    data = write_set(tmp_path / "set")
    copy = tmp_path / "checkpoint" / "release" / "dffnet_cuhk_cpu.pth"
    copy.parent.mkdir(parents=True)
    shutil.copyfile(SHIPPED_CHECKPOINT, copy)
    monkeypatch.setattr(models.shipped, "ROOT", tmp_path)
    monkeypatch.setattr(models.shipped, "SHIPPED_CHECKPOINT", copy)
    monkeypatch.chdir(tmp_path)  # no checkpoint/D-DFFNet.pth here
    hashed = []
    real_sha256 = models.shipped.sha256
    monkeypatch.setattr(models.shipped, "sha256", lambda path: hashed.append(path) or real_sha256(path))
    intact = run_test_py(["--dataset", f"folder:{data}:white=in-focus", "--out", str(tmp_path / "intact"), *FAST])
    assert intact.returncode == 0, intact.stderr
    assert len(hashed) == 1  # described, then loaded: hashed once
    flipped_copy(SHIPPED_CHECKPOINT, copy)
    result = run_test_py(["--dataset", f"folder:{data}:white=in-focus", "--out", str(tmp_path / "flipped"), *FAST])
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"test.py: error: {copy}: damaged or replaced: its SHA-256 ({hashlib.sha256(copy.read_bytes()).hexdigest()[:12]}"
        f"...) differs from the one recorded for this shipped file in models/shipped.py "
        f"({models.shipped.SHIPPED_SHA256[:12]}...); restore it with `git checkout -- "
        "checkpoint/release/dffnet_cuhk_cpu.pth`, or record a new release's digest there")
    assert not (tmp_path / "flipped" / "results.json").exists()
    explicit = run_test_py(["--checkpoint", str(copy), "--dataset", f"folder:{data}:white=in-focus",
                            "--out", str(tmp_path / "explicit"), *FAST])
    assert explicit.returncode == 2 and f"{copy}: damaged or replaced" in explicit.stderr


def test_a_flipped_byte_in_the_shipped_depth_teacher_stops_training_at_start(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_set(tmp_path / "set")
    copy = flipped_copy(SHIPPED_DEPTH_TEACHER, tmp_path / "midas_synthetic_cpu.pth")
    monkeypatch.setattr(models.shipped, "SHIPPED_DEPTH_TEACHER", copy)
    args = [a if a != "resnest14d" else "resnet18" for a in train_args(data, tmp_path)]
    with pytest.raises(SystemExit, match=rf"^--depth-teacher: {copy}: damaged or replaced: its SHA-256 "):
        train_kd.main(args + ["--teachers", "depth", "--depth-teacher", str(copy)])
    assert not (tmp_path / "model.pth").exists() and not lock_path(tmp_path / "model.pth").exists()


# ---- B2 / B3 / P4: tools/export_model.py


def export(*argv: str) -> None:
    export_tool.main([*argv, "--description", "a test model"])


def test_export_refuses_a_checkpoint_with_nan_weights(tmp_path: Path) -> None:
    model = build_model("dffnet", backbone="resnet18")
    state = model.state_dict()
    state["decoder.classifier.weight"] = torch.full_like(state["decoder.classifier.weight"], float("nan"))
    save_checkpoint({**model_checkpoint(model, {}, 3), "model": state}, tmp_path / "diverged.pth")
    with pytest.raises(SystemExit, match=rf"^{PROG}: {tmp_path / 'diverged.pth'}: holds non-finite weights, "
                                         r"first decoder\.classifier\.weight \(NaN\)"):
        export(str(tmp_path / "diverged.pth"), str(tmp_path / "shipped.pth"))
    assert not (tmp_path / "shipped.pth").exists()


def test_export_never_replaces_its_input_and_needs_overwrite_for_another_file(tmp_path: Path, detector: Path) -> None:
    source = tmp_path / "train.pth"
    shutil.copyfile(detector, source)
    before = source.read_bytes()
    for flags in ([], ["--overwrite"]):
        with pytest.raises(SystemExit, match=rf"^{PROG}: out {source} is the input checkpoint itself: "
                                             "exporting would replace the training checkpoint"):
            export(str(source), str(source), *flags)
    assert source.read_bytes() == before
    existing = tmp_path / "shipped.pth"
    existing.write_bytes(b"an earlier release")
    with pytest.raises(SystemExit, match=rf"^{PROG}: out {existing} already exists; pass --overwrite"):
        export(str(source), str(existing))
    assert existing.read_bytes() == b"an earlier release"
    export(str(source), str(existing), "--overwrite")
    assert read_checkpoint(existing)["description"] == "a test model"


def test_export_onto_a_full_disk_is_one_line(tmp_path: Path, detector: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(obj, path) -> None:
        raise ENOSPC

    monkeypatch.setattr(models.shipped, "save_checkpoint", disk_full)
    with pytest.raises(SystemExit, match=rf"^{PROG}: {tmp_path / 'shipped.pth'}: not written \(No space left "
                                         r"on device\); nothing was written$"):
        export(str(detector), str(tmp_path / "shipped.pth"))


# ---- B4: masks of the other polarity than the one given


@pytest.fixture
def inverted_dut(shared_data: Path, tmp_path: Path) -> Path:
    """The five DUT sample photos with their masks inverted: white = blurred."""
    root = tmp_path / "dut-inverted"
    shutil.copytree(shared_data / "DUT-sample" / "image", root / "image")
    (root / "gt").mkdir()
    for mask in sorted((shared_data / "DUT-sample" / "gt").iterdir()):
        ImageOps.invert(Image.open(mask).convert("L")).save(root / "gt" / mask.name)
    return root


def test_masks_of_the_other_polarity_than_stated_are_refused_with_the_evidence(inverted_dut: Path,
                                                                               tmp_path: Path) -> None:
    stated = f"folder:{inverted_dut}:white=in-focus"
    message = (rf"^{stated} \({inverted_dut}\): the masks look white=blurred, not white=in-focus as stated: their white "
               r"regions are the smoother ones in 5 of 5 images \(median log ratio of high-frequency energy white/black "
               rf"-\d\.\d\d\); if they are, write folder:{inverted_dut}:white=blurred")
    for split in ("train", "test"):
        with pytest.raises(DatasetError, match=message):
            build_dataset(stated, split, img_size=64)
    with pytest.raises(SystemExit, match=r"^--train-set / --data-root: " + message[1:]):
        train_single.main(train_args(inverted_dut, tmp_path, "--train-set", stated, "--batch-size", "2"))
    assert not (tmp_path / "model.pth").exists()
    result = run_test_py(["--pred-dir", str(inverted_dut / "gt"), "--dataset", stated, "--skip-missing",
                          "--out", str(tmp_path / "out"), *FAST])
    assert result.returncode == 2 and "the masks look white=blurred, not white=in-focus as stated" in result.stderr
    assert len(build_dataset(f"folder:{inverted_dut}:white=blurred", "test")) == 5
    with pytest.warns(DatasetWarning, match=r"mask polarity not given; estimated white=blurred from image sharpness "
                                            r"\(confidence 1\.00 over 5 images\)"):
        build_dataset(f"folder:{inverted_dut}", "test")  # the estimate itself is right


# ---- B5: two test.py runs at once on one --out


def test_a_second_test_py_on_a_busy_out_stops_naming_the_first(tmp_path: Path, detector: Path) -> None:
    data = write_set(tmp_path / "set")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"run": {}, "results": ["the first run, still writing"]}')
    holder = hold_folder(out)
    try:
        result = run_test_py(["--checkpoint", str(detector), "--dataset", f"folder:{data}:white=in-focus",
                              "--out", str(out), *FAST])
    finally:
        holder.stdin.close()
        holder.wait()
    assert result.returncode == 2
    assert result.stderr.strip() == (f"test.py: error: --out {out}: another run (pid {holder.pid}) is writing it; wait "
                                     "for that run to end or choose another --out")
    assert (out / "results.json").read_text() == '{"run": {}, "results": ["the first run, still writing"]}'
    after = run_test_py(["--checkpoint", str(detector), "--dataset", f"folder:{data}:white=in-focus",
                         "--out", str(out), *FAST])
    assert after.returncode == 0 and sorted(p.name for p in out.iterdir()) == ["dffnet", "pr_curves.png",
                                                                                 "results.json"]


# ---- B6: tools/baselines.py never writes into a data set


def test_baselines_into_the_test_sets_mask_folder_is_refused(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    masks = md5s(data / "gt")
    for out, flags in ((data / "gt", []), (data / "image" / "maps", []), (data, []), (data / "gt", ["--overwrite"])):
        with pytest.raises(SystemExit, match=rf"^{PROG}: --out {out} (is a folder|lies inside .*, a folder) of "
                                             rf"--test-set folder:{data}:white=in-focus: the maps would go among"):
            baselines_tool.main(["all-in-focus", "--test-set", f"folder:{data}:white=in-focus", "--out", str(out),
                                 *flags])
    assert md5s(data / "gt") == masks and sorted(p.name for p in data.iterdir()) == ["gt", "image"]


def test_baselines_replace_their_own_maps_but_no_other_file(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    out = tmp_path / "maps"
    out.mkdir()
    (out / "1.png").write_bytes(b"the user's own file")
    argv = ["all-in-focus", "--test-set", f"folder:{data}:white=in-focus", "--out", str(out)]
    with pytest.raises(SystemExit, match=rf"^{PROG}: --out {out} holds 1 files of the names the maps take that "
                                         r"this tool did not write \(1\.png\); choose another --out, or pass --overwrite"):
        baselines_tool.main(argv)
    assert (out / "1.png").read_bytes() == b"the user's own file" and not (out / "0.png").exists()
    baselines_tool.main(argv + ["--overwrite"])
    baselines_tool.main(argv)  # its own maps: replaced without a word
    assert np.asarray(Image.open(out / "1.png")).min() == 255


# ---- P1: the run lock never outlives a run


def test_a_training_that_fails_after_taking_the_lock_leaves_none(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    with pytest.raises(SystemExit, match=r"^--batch-size 4 is larger than the training set"):
        train_single.main(train_args(data, tmp_path, "--batch-size", "4"))
    assert not lock_path(tmp_path / "model.pth").exists()
    with pytest.raises(SystemExit, match=r"^--val-set / --data-root: .*missing: no such folder"):
        train_single.main(train_args(data, tmp_path, "--val-set", f"folder:{tmp_path / 'missing'}"))
    assert not lock_path(tmp_path / "model.pth").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_removed(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock_path(tmp_path / "model.pth").write_text(f"{gone.pid}\n")
    train_single.main(train_args(data, tmp_path))
    assert (tmp_path / "model.pth").is_file() and not lock_path(tmp_path / "model.pth").exists()


# ---- P2: a damaged depth teacher stops the demo before any training


def test_a_truncated_depth_teacher_stops_the_demo_at_once(tmp_path: Path) -> None:
    teacher = tmp_path / "midas_truncated.pth"
    teacher.write_bytes(SHIPPED_DEPTH_TEACHER.read_bytes()[:5_000_000])
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHON": sys.executable, "DEMO_OUT": str(out), "DEMO_DEPTH_TEACHER": str(teacher),
           "DEMO_TRAIN_N": "4", "DEMO_TEST_N": "2", "DEMO_IMG_SIZE": "64", "DEMO_EPOCHS": "1", "DEMO_BATCH": "2",
           "DEMO_WORKERS": "0", "DEMO_AMP": "off", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(["bash", str(ROOT / "demo.sh")], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 1, run.stdout[-2000:]
    assert run.stderr.strip().startswith(f"demo.sh: the depth teacher: {teacher}: not a readable PyTorch checkpoint "
                                         "(truncated, corrupt, or not a weights file)")
    assert len(run.stderr.strip().splitlines()) == 1
    assert not (out / "data").exists() and list((out / "checkpoints").iterdir()) == []


# ---- P3: --resume from a depth teacher's checkpoint


def test_resuming_a_depth_checkpoint_into_stage_1_says_what_it_is(tmp_path: Path, midas: Path) -> None:
    data = write_set(tmp_path / "set")
    shutil.copyfile(midas, tmp_path / "model.pth")
    with pytest.raises(SystemExit, match=rf"^--resume {tmp_path / 'model.pth'}: is a depth-teacher checkpoint \(MiDaS, "
                                         r"written by train_depth\.py\), not a blur detector's run"):
        train_single.main(train_args(data, tmp_path, "--resume"))


# ---- P5: train_release.sh with SPLIT_LIST set to a missing file


def test_the_release_recipe_names_a_missing_split_list_it_was_given(tmp_path: Path) -> None:
    (tmp_path / "cuhk" / "image").mkdir(parents=True)
    (tmp_path / "cuhk" / "gt").mkdir()
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "CUHK_DIR": str(tmp_path / "cuhk"),
           "SPLIT_LIST": str(tmp_path / "lists" / "cuhk_te1.txt")}
    run = subprocess.run(["bash", str(ROOT / "tools" / "train_release.sh")], capture_output=True, text=True, env=env)
    assert run.returncode == 2
    assert run.stderr.strip() == (f"train_release.sh: no CUHK-TE-1 list (cuhk_te1.txt) at "
                                  f"SPLIT_LIST='{tmp_path / 'lists' / 'cuhk_te1.txt'}': no such file")


# ---- P6 / P7: symlink loops and FIFOs among the photos


def photo_folder(root: Path) -> Path:
    root.mkdir()
    Image.new("RGB", (40, 30), (120, 80, 60)).save(root / "a.jpg")
    (root / "loop1.jpg").symlink_to("loop2.jpg")
    (root / "loop2.jpg").symlink_to("loop1.jpg")
    os.mkfifo(root / "pipe.jpg")
    return root


def test_symlink_loops_and_fifos_among_photos_are_skipped_by_name(tmp_path: Path, detector: Path) -> None:
    photos = photo_folder(tmp_path / "photos")
    listed = PhotoDataset([photos, photos / "loop1.jpg", photos / "pipe.jpg"])
    assert listed.paths == [photos / "a.jpg"]  # the FIFO is never opened: reading it would wait forever
    assert listed.skipped == [f"{photos / 'loop1.jpg'} (a symlink loop)", f"{photos / 'loop2.jpg'} (a symlink loop)",
                              f"{photos / 'pipe.jpg'} (a FIFO, not a file)"]
    result = run_test_py(["--checkpoint", str(detector), "--images", str(photos), "--out", str(tmp_path / "out"),
                          *FAST])
    assert result.returncode == 0, result.stderr
    assert "skipped 3 files: " in result.stdout and "loop1.jpg (a symlink loop)" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out" / "maps").iterdir()) == ["a.png"]


def test_figures_draws_the_photos_beside_a_symlink_loop(tmp_path: Path, detector: Path, capsys) -> None:
    photos = photo_folder(tmp_path / "photos")
    figures_tool.main(["--photos", str(photos), "--checkpoint", f"model={detector}", "--device", "cpu",
                       "--out", str(tmp_path / "photos.png")])
    assert (tmp_path / "photos.png").is_file()
    assert f"skipped 3 files: {photos / 'loop1.jpg'} (a symlink loop)" in capsys.readouterr().out


def unblock_readers(fifo: Path, seconds: float = 30.0) -> None:
    """For `seconds`, open `fifo` for writing and close it whenever a reader waits on it, so that code that reads it
    gets an empty file instead of waiting forever (this test then fails instead of hanging)."""
    def writer() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.2)

    threading.Thread(target=writer, daemon=True).start()


def test_a_fifo_in_a_data_set_is_named_and_left_out(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set", n=3)
    (data / "gt" / "2.png").unlink()
    os.mkfifo(data / "gt" / "2.png")
    unblock_readers(data / "gt" / "2.png")
    with pytest.raises(DatasetError, match=r"cannot be used for training: images without a mask: 2\.png; unreadable "
                                           r"files: gt/2\.png \(a FIFO, not a file\)"):
        build_dataset(f"folder:{data}:white=in-focus", "train", img_size=64)


# ---- P8: a file name that is not UTF-8


def test_a_name_that_is_not_utf8_is_scored_and_reported(tmp_path: Path, detector: Path) -> None:
    data = write_set(tmp_path / "set")
    for folder in ("image", "gt"):
        (data / folder / "1.png").rename(data / folder / f"{NON_UTF8_NAME}.png")
    out = tmp_path / "out"
    result = run_test_py(["--checkpoint", str(detector), "--dataset", f"folder:{data}:white=in-focus",
                          "--save-maps", "--out", str(out), *FAST])
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "results.json").read_text())["results"][0]["n_images"] == 2
    csv_names = [line.split(",")[0] for line in (out / "dffnet" / "set" / "per_image.csv").read_text("utf-8").split()]
    assert csv_names == ["name", "0.png", "caf\\xe9.png"]
    assert (out / "dffnet" / "set" / "maps" / f"{NON_UTF8_NAME}.png").is_file()
    photos = run_test_py(["--checkpoint", str(detector), "--images", str(data / "image"), str(data / "gt"),
                          "--out", str(tmp_path / "photos"), *FAST])
    assert photos.returncode == 0, photos.stderr
    assert f"{data / 'image' / 'caf'}\\xe9.png -> image-caf\\xe9.png" in photos.stdout
    assert (tmp_path / "photos" / "maps" / f"image-{NON_UTF8_NAME}.png").is_file()
    checkpoint = tmp_path / f"{NON_UTF8_NAME}.pth"
    shutil.copyfile(detector, checkpoint)
    named = run_test_py(["--checkpoint", str(checkpoint), "--dataset", f"folder:{data}:white=in-focus",
                         "--out", str(tmp_path / "named"), *FAST])
    assert named.returncode == 0, named.stderr
    assert "| caf\\xe9 (measured, official) |" in named.stdout and (tmp_path / "named" / "pr_curves.png").is_file()


# ---- P9: test.py run from another folder finds the repository's D-DFFNet.pth


def test_the_repositorys_authors_checkpoint_is_found_from_another_folder(tmp_path: Path, detector: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    repository = tmp_path / "repository"
    (repository / "checkpoint" / "release").mkdir(parents=True)
    shutil.copyfile(detector, repository / "checkpoint" / "D-DFFNet.pth")
    shutil.copyfile(SHIPPED_CHECKPOINT, repository / "checkpoint" / "release" / SHIPPED_CHECKPOINT.name)
    monkeypatch.setattr(models.shipped, "ROOT", repository)
    monkeypatch.setattr(models.shipped, "SHIPPED_CHECKPOINT", repository / "checkpoint" / "release" /
                        SHIPPED_CHECKPOINT.name)
    monkeypatch.chdir(tmp_path)  # elsewhere: no checkpoint/ here
    path, note = models.shipped.default_detector()
    assert path == repository / "checkpoint" / "D-DFFNet.pth"
    assert note == f"using {repository / 'checkpoint' / 'D-DFFNet.pth'} (the authors' D-DFFNet, as found)"


# ---- P10: two runs with the same --log-dir


def test_a_second_run_never_replaces_the_logs_of_the_first(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    logs = tmp_path / "logs"
    first, second = (train_args(data, tmp_path / run, "--log-dir", str(logs)) for run in ("a", "b"))
    train_single.main(first)
    epochs = (logs / "epochs.csv").read_text()
    with pytest.raises(SystemExit, match=rf"^--log-dir {logs} holds the logs of the run with --save "
                                         rf"{tmp_path / 'a' / 'model.pth'}; choose another --log-dir, or pass --overwrite"):
        train_single.main(second)
    assert (logs / "epochs.csv").read_text() == epochs and not (tmp_path / "b" / "model.pth").exists()
    train_single.main(first + ["--overwrite"])  # the same run again replaces its own logs


def test_a_run_on_a_log_dir_in_use_stops_naming_the_other(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    holder = hold_folder(tmp_path / "log")
    try:
        with pytest.raises(SystemExit, match=rf"^--log-dir {tmp_path / 'log'}: another run \(pid {holder.pid}\) is "
                                             "writing it"):
            train_single.main(train_args(data, tmp_path))
    finally:
        holder.stdin.close()
        holder.wait()
    assert not lock_path(tmp_path / "model.pth").exists() and not (tmp_path / "log" / "steps.csv").exists()


# ---- P11: the depth teacher given to tools/figures.py as a detector


def test_figures_names_a_depth_model_given_as_a_detector(tmp_path: Path, midas: Path) -> None:
    data = write_set(tmp_path / "set")
    Image.new("RGB", (40, 30), (120, 80, 60)).save(tmp_path / "a.jpg")
    for source in (["--photos", str(tmp_path / "a.jpg")], ["--dataset", f"folder:{data}:white=in-focus"]):
        with pytest.raises(SystemExit, match=rf"^{PROG}: {midas}: is a depth model \(MiDaS\), not a blur "
                                             r"detector"):
            figures_tool.main([*source, "--checkpoint", f"teacher={midas}", "--device", "cpu",
                               "--out", str(tmp_path / "figure.png")])


# ---- P12: tools/sample_photos.py beside the user's files


def test_sample_photos_keep_the_users_licences_file(tmp_path: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "LICENCES.md").write_text("my own licences\n")
    with pytest.raises(SystemExit, match=rf"^{PROG}: {out}: would replace LICENCES\.md \(not written by this "
                                         r"tool, or changed since\); choose another folder, or pass --overwrite$"):
        photos_tool.main([str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["LICENCES.md"]
    assert (out / "LICENCES.md").read_text() == "my own licences\n"
    fresh = tmp_path / "fresh"
    photos_tool.main([str(fresh)])
    photos_tool.main([str(fresh)])  # its own files again: the same bytes, no question
    photos_tool.main([str(out), "--overwrite"])
    assert "CC0" in (out / "LICENCES.md").read_text()


# ---- P13: a DatasetWarning is one clean line


def test_a_dataset_warning_prints_as_one_line(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    (data / "image" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    run = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                          "from datasets import build_dataset; build_dataset(sys.argv[2], 'test')",
                          str(ROOT), f"folder:{data}:white=in-focus"], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    assert run.stderr == (f"warning: folder:{data}:white=in-focus: ignoring 1 hidden files (names starting with '.', "
                          "e.g. the '._' files macOS writes): image/.DS_Store\n")
    assert warnings.formatwarning("x", UserWarning, "f.py", 3, "src").startswith("f.py:3: UserWarning: x")


# ---- P14: Ctrl-C during test.py


def test_ctrl_c_during_test_py_is_one_line_and_status_130(tmp_path: Path, detector: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_set(tmp_path / "set")
    Image.new("RGB", (20, 20), (90, 60, 30)).save(tmp_path / "a.png")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    for argv, note in ((["--images", str(tmp_path / "a.png")], ""),
                       (["--dataset", f"folder:{data}:white=in-focus"],
                        " (results.json is written only at the end of a run)")):
        with monkeypatch.context() as patch:
            patch.setattr(engine.eval_run, "load_detector", interrupted)
            try:
                result = run_test_py(["--checkpoint", str(detector), *argv, "--out", str(tmp_path / "out"), *FAST])
            except KeyboardInterrupt:
                pytest.fail("Ctrl-C ended test.py with a raw KeyboardInterrupt")
        assert result.returncode == 130
        assert result.stderr.strip() == (f"test.py: interrupted (Ctrl-C); the files finished so far stay in "
                                         f"{tmp_path / 'out'}{note}")


# ---- P15: --val-set equal to --train-set


def test_a_validation_set_of_training_images_is_named(tmp_path: Path) -> None:
    data = write_set(tmp_path / "set")
    with pytest.warns(DatasetWarning, match=rf"^--val-set folder:{data}/:white=in-focus shares 2 of its 2 images with "
                                            rf"--train-set folder:{data}:white=in-focus: validation scores the network "
                                            rf"on images it trains on, so {tmp_path / 'model_best.pth'} would be chosen "
                                            "on training images"):
        train_single.main(train_args(data, tmp_path, "--val-set", f"folder:{data}/:white=in-focus"))
    held_out = write_set(tmp_path / "held_out", seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        train_single.main(train_args(data, tmp_path / "apart", "--val-set", f"folder:{held_out}:white=in-focus"))


# ---- P16: disk full while test.py draws its grid


def test_disk_full_while_drawing_the_grid_keeps_table_and_results(tmp_path: Path, detector: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_set(tmp_path / "set")

    def disk_full(rows, labels, path, height=160):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(engine.evaluate, "labelled_grid", disk_full)
    out = tmp_path / "out"
    result = run_test_py(["--checkpoint", str(detector), "--dataset", f"folder:{data}:white=in-focus",
                          "--out", str(out), *FAST])
    assert result.returncode == 1
    assert "| dffnet (measured, official) |" in result.stdout
    assert f"{out / 'dffnet' / 'set' / 'grid.png'}: not written (No space left on device)" in result.stderr
    assert json.loads((out / "results.json").read_text())["results"][0]["n_images"] == 2
    assert not (out / "dffnet" / "set" / "grid.png").exists()
