"""Third round of the safety net (issue 30, M1-M17): each test pins a behaviour that a one-line change of the
code got past the rest of the suite, with expectations worked out by hand: the input size a checkpoint
records, random crops of image and mask alike, the epoch means and remaining-time estimates of both training
loops, the depth teacher's warm-up and loss, the --save lock, the inverted-map hint, the export tool's
errors, the 16-bit photo and colour-mask boundaries, and the one-image refusal under SyncBatchNorm."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import datasets.base
import engine.depth
import engine.eval_run
import engine.run
import engine.stages
import engine.train
import train_depth
import train_single
import utils.log
from datasets import build_dataset
from datasets.decoding import load_rgb
from datasets.polarity import MaskPolarity
from datasets.synthetic import generate_dataset
from datasets.transforms import denormalise
from engine.config import ConfigError, DepthConfig, LoopConfig, TrainConfig
from engine.options import config_from_flags
from engine.saved_maps import polarity_hint
from models import build_model
from tests.test_training import read_csv, write_tiny_set
from utils.checkpoint import model_checkpoint, save_checkpoint
from utils.distributed import DistributedContext
from utils.runlock import acquire, lock_path, release

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("test_script_mutations_3", ROOT / "test.py")  # `test`: stdlib
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

CPU = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
CPU_DDP = DistributedContext(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
CUDA_DDP = DistributedContext(rank=1, local_rank=1, world_size=2, device=torch.device("cuda", 1))


class RecordedRemainingTime(utils.log.RemainingTime):
    """RemainingTime that notes the total of every estimate a run creates."""

    totals: list[int] = []

    def __init__(self, total_steps: int, after: int = 10) -> None:
        RecordedRemainingTime.totals.append(total_steps)
        super().__init__(total_steps, after)


def stage1_args(data: Path, run: Path, *extra: str) -> list[str]:
    """Stage 1 on 8 images, global batch 4 in 2 micro-batches of 2: 2 optimiser steps and 4 loader batches
    per epoch."""
    return ["--backbone", "resnet18", "--pretrained", "none", "--train-set", f"synthetic:{data}", "--img-size", "64",
            "--batch-size", "4", "--accumulate", "2", "--no-augment", "--workers", "0", "--device", "cpu",
            "--save", str(run / "model.pth"), "--log-dir", str(run / "log"), *extra]


@pytest.fixture(scope="module")
def stage1_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | list[int]]:
    """One epoch of stage 1, then a run resumed from it up to epoch 3, noting the remaining-time totals."""
    data = write_tiny_set(tmp_path_factory.mktemp("tiny"), 8)
    first, resumed = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("resumed")
    train_single.main(stage1_args(data, first, "--epochs", "1"))
    (resumed / "model.pth").write_bytes((first / "model.pth").read_bytes())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.train, "RemainingTime", RecordedRemainingTime)
        RecordedRemainingTime.totals = []
        train_single.main(stage1_args(data, resumed, "--epochs", "3", "--resume"))
        totals = list(RecordedRemainingTime.totals)
    return {"first": first, "resumed": resumed, "resumed_totals": totals}


@pytest.fixture(scope="module")
def depth_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """train_depth.py on 4 images, batch 2 (2 steps per epoch), 2 epochs, --lr 1e-3, --warmup-steps 3,
    --loss ordinal; notes the learning rate of every optimiser step, the depth losses called and the
    remaining-time totals."""
    root = tmp_path_factory.mktemp("depth")
    data = generate_dataset(root / "syn", n=4, seed=3, size=64)
    step_lrs: list[float] = []
    losses_called: list[str] = []
    real_adam = engine.depth.adam

    def adam_noting_lrs(*args, **kwargs):
        optimizer = real_adam(*args, **kwargs)
        optimizer.register_step_pre_hook(lambda opt, *_: step_lrs.append(opt.param_groups[0]["lr"]))
        return optimizer

    def noting(name, loss):
        def called(*args, **kwargs):
            losses_called.append(name)
            return loss(*args, **kwargs)
        return called

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.depth, "adam", adam_noting_lrs)
        patch.setattr(engine.train, "RemainingTime", RecordedRemainingTime)
        for name, loss in list(engine.depth.DEPTH_LOSSES.items()):
            patch.setitem(engine.depth.DEPTH_LOSSES, name, noting(name, loss))
        RecordedRemainingTime.totals = []
        train_depth.main(["--data", str(data), "--img-size", "64", "--epochs", "2", "--batch-size", "2",
                          "--features", "16", "--workers", "0", "--device", "cpu", "--lr", "1e-3",
                          "--warmup-steps", "3", "--loss", "ordinal", "--save", str(root / "midas.pth"),
                          "--log-dir", str(root / "log")])
        totals = list(RecordedRemainingTime.totals)
    return {"step_lrs": step_lrs, "losses_called": losses_called, "totals": totals}


# ---- M1: test.py feeds each checkpoint the input size it was trained at


def test_test_py_feeds_a_checkpoint_the_input_size_it_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint trained at 64 px is run at 64 x 64 (not test.py's default 320) on a test set and on
    photos; --img-size 32 overrides it."""
    torch.manual_seed(0)
    checkpoint = tmp_path / "at64.pth"
    save_checkpoint(model_checkpoint(build_model("dffnet", "resnet18"), {"img_size": 64}, 1), checkpoint)
    data = write_tiny_set(tmp_path / "set", 2, size=48)
    seen: list[tuple[int, int]] = []
    real_load_detector = engine.eval_run.load_detector

    def load_and_watch(*args, **kwargs):
        model = real_load_detector(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape[-2:])))
        return model

    monkeypatch.setattr(engine.eval_run, "load_detector", load_and_watch)
    common = ["--checkpoint", str(checkpoint), "--device", "cpu", "--workers", "0", "--grid", "0"]
    runs = [(["--dataset", f"folder:{data}:white=in-focus", "--out", str(tmp_path / "eval")], (64, 64)),
            (["--images", str(data / "image"), "--out", str(tmp_path / "photos")], (64, 64)),
            (["--dataset", f"folder:{data}:white=in-focus", "--out", str(tmp_path / "eval32"), "--img-size", "32"],
             (32, 32))]
    for extra, size in runs:
        seen.clear()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert test_script.main(common + extra) == 0
        assert seen and set(seen) == {size}, extra


# ---- M2: a random crop cuts the mask where it cuts the image


def test_a_random_crop_cuts_image_and_mask_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """64 x 64, in focus (white in photo and mask) in the top-left 32 x 32 quadrant; the crop box (8, 8, 40, 40)
    keeps 32 x 32 pixels whose top-left 24 x 24 are in focus, and 32 px training leaves them at that size."""
    (tmp_path / "image").mkdir()
    (tmp_path / "gt").mkdir()
    quadrant = np.zeros((64, 64), np.uint8)
    quadrant[:32, :32] = 255
    Image.fromarray(np.repeat(quadrant[..., None], 3, axis=2)).save(tmp_path / "image" / "0.png")
    Image.fromarray(quadrant).save(tmp_path / "gt" / "0.png")
    boxes: list[tuple[int, int, float]] = []

    def fixed_box(width: int, height: int, min_area: float) -> tuple[int, int, int, int]:
        boxes.append((width, height, min_area))
        return 8, 8, 40, 40

    monkeypatch.setattr(datasets.base, "draw_crop", fixed_box)
    monkeypatch.setattr(datasets.base, "draw_flip", lambda: False)
    torch.manual_seed(0)  # the colour jitter's draw
    train = build_dataset(f"folder:{tmp_path}:white=in-focus", "train", img_size=32, augment=True, crop_scale=0.5)
    item = train[0]
    expected = np.zeros((32, 32), np.float32)
    expected[:24, :24] = 1
    assert boxes == [(64, 64, 0.5)]
    np.testing.assert_array_equal(item["mask"][0].numpy(), expected)
    grey = denormalise(item["image"]).mean(dim=0).numpy()  # colour jitter moves white and black by at most ~10%
    assert (grey[:24, :24] > 0.8).all() and (grey[24:, :] < 0.2).all() and (grey[:, 24:] < 0.2).all()


# ---- M3: --crop-scale reaches the training set


def test_crop_scale_reaches_the_training_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_tiny_set(tmp_path / "set", 2)
    minimum_areas: list[float] = []
    real_draw_crop = datasets.base.draw_crop

    def noting(width: int, height: int, min_area: float) -> tuple[int, int, int, int]:
        minimum_areas.append(min_area)
        return real_draw_crop(width, height, min_area)

    monkeypatch.setattr(datasets.base, "draw_crop", noting)
    config = TrainConfig(backbone="resnet18", pretrained="none", train_set=f"synthetic:{data}", img_size=32,
                         batch_size=2, workers=0, crop_scale=0.5, save=str(tmp_path / "m.pth"))
    loader, _ = engine.stages.make_dbd_loader(config, CPU)
    loader.dataset[0]
    assert minimum_areas == [0.5]


# ---- M4: the epoch's mean loss is over optimiser steps, not micro-batches


def test_the_epoch_mean_loss_is_the_mean_over_its_optimiser_steps(stage1_runs) -> None:
    """--accumulate 2: 2 optimiser steps of 2 micro-batches each; the epoch's value of every term is the mean
    of its 2 step rows (not their sum over 4 micro-batches, half of it)."""
    steps = read_csv(stage1_runs["first"] / "log" / "steps.csv")
    [epoch] = read_csv(stage1_runs["first"] / "log" / "epochs.csv")
    assert [(row["epoch"], row["step"]) for row in steps] == [("1", "1"), ("1", "2")]
    terms = [key for key in steps[0] if key not in ("epoch", "step", "global_step", "lr")]
    assert "loss" in terms and "final" in terms
    for term in terms:
        mean = (float(steps[0][term]) + float(steps[1][term])) / 2
        assert float(epoch[term]) == pytest.approx(mean, rel=1e-4, abs=1e-6), term


# ---- M5, M6, M11: the depth teacher's warm-up, loss and remaining-time estimate


def test_depth_training_warms_the_learning_rate_up(depth_run) -> None:
    """--lr 1e-3 over 2 epochs: poly 1e-3 * (1 - 1/7) ** 0.9 = 8.7046e-4 in epoch 1, 1e-3 * (1 - 2/7) ** 0.9 =
    7.3873e-4 in epoch 2; --warmup-steps 3 scales steps 1, 2 by 1/3, 2/3."""
    assert depth_run["step_lrs"] == pytest.approx([2.9015e-4, 5.8031e-4, 7.3873e-4, 7.3873e-4], rel=1e-4)


def test_depth_training_uses_the_loss_asked_for(depth_run) -> None:
    assert depth_run["losses_called"] == ["ordinal"] * 4


def test_depth_training_estimates_the_time_of_all_its_epochs(depth_run) -> None:
    assert depth_run["totals"] == [4]  # 2 epochs x 2 steps


# ---- M7: train_depth.py checks --init before any work


def test_train_depth_names_a_missing_init_file_before_any_work(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_teacher.pth"
    args = train_depth.parse_args(["--data", str(tmp_path), "--init", str(missing), "--save", str(tmp_path / "m.pth")])
    with pytest.raises(ConfigError, match=rf"^--init {missing}: no such file$"):
        config_from_flags(vars(args), DepthConfig)
    with pytest.raises(SystemExit, match=rf"^--init {missing}: no such file$"):
        train_depth.main(["--data", str(tmp_path), "--init", str(missing), "--save", str(tmp_path / "m.pth")])
    assert not (tmp_path / "m.pth").exists()


# ---- M8, M9: the --save lock is removed when released, and a run releases it


def test_a_released_lock_leaves_no_lock_file(tmp_path: Path) -> None:
    save = tmp_path / "model.pth"
    path = acquire(save)
    assert path == tmp_path / "model.pth.lock" and path.read_text() == f"{os.getpid()}\n"
    release(save)
    assert not path.exists()


def test_a_finished_training_run_leaves_no_lock(stage1_runs) -> None:
    for run in (stage1_runs["first"], stage1_runs["resumed"]):
        assert (run / "model.pth").is_file()
        assert not lock_path(run / "model.pth").exists()
        assert sorted(p.name for p in run.iterdir()) == ["log", "model.pth"]


# ---- M10: a resumed run estimates the time of the epochs it still has to run


def test_a_resumed_run_estimates_the_time_of_its_remaining_epochs(stage1_runs) -> None:
    """Resumed after epoch 1 with --epochs 3: epochs 2 and 3 of 2 optimiser steps each, 4 steps."""
    assert stage1_runs["resumed_totals"] == [4]
    assert [row["epoch"] for row in read_csv(stage1_runs["resumed"] / "log" / "epochs.csv")] == ["2", "3"]


# ---- M12: a run shorter than the estimate's sample reports at its last step


def test_a_run_shorter_than_ten_steps_gets_its_estimate_at_its_last_step(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 103.0])  # created at t=100; 3 steps done at t=103: 1 s/step
    monkeypatch.setattr(utils.log.time, "time", lambda: next(clock))
    pace = utils.log.RemainingTime(total_steps=3)
    assert [pace.step() for _ in range(3)] == [
        None, None, "1.00 s/step over the first 3 steps: about 0.0 min for the 0 steps left "
                    "(validation and saving not included)"]


# ---- M13: the inverted-map hint fires when most maps, not only all, look inverted


def test_the_inverted_map_hint_fires_when_most_maps_score_above_one_half() -> None:
    def rows(*maes: float) -> list[dict]:
        return [{"mae": mae} for mae in maes]

    hint = polarity_hint(rows(0.9, 0.8, 0.7, 0.1), "maps/DD", MaskPolarity.WHITE_IN_FOCUS)
    assert hint is not None and hint.startswith("maps/DD: MAE above 0.5 on 3 of 4 maps")
    assert hint.endswith("pass --pred-polarity white=blurred")
    assert polarity_hint(rows(0.9, 0.8, 0.2, 0.1), "maps/DD", MaskPolarity.WHITE_IN_FOCUS) is None  # half only
    assert polarity_hint(rows(0.9, None, 0.1, 0.2, 0.3), "maps/DD", MaskPolarity.WHITE_IN_FOCUS) is None


# ---- M14: tools/export_model.py names either kind of bad input in one line


def test_export_model_names_either_kind_of_bad_input_in_one_line(tmp_path: Path) -> None:
    """A file that is no PyTorch checkpoint (CheckpointError) and a state_dict without the model's
    configuration (ValueError): one line naming the file, exit status 1, nothing written. The two runs go
    side by side."""
    notes, bare = tmp_path / "notes.pth", tmp_path / "bare.pth"
    notes.write_text("these are notes, not weights\n")
    torch.save({"conv.weight": torch.zeros(2, 2)}, bare)
    runs = {source: subprocess.Popen([sys.executable, str(ROOT / "tools" / "export_model.py"), str(source),
                                      str(tmp_path / f"shipped_{source.stem}.pth"), "--description", "a test"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
            for source in (notes, bare)}
    for source, run in runs.items():
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 1, stderr
        assert "Traceback" not in stderr
        assert len(stderr.strip().splitlines()) == 1 and str(source) in stderr, stderr
        assert not (tmp_path / f"shipped_{source.stem}.pth").exists()


# ---- M15: the 16-bit photo scaling starts above 255


def test_a_16_bit_photo_whose_values_stay_within_255_is_read_as_8_bit(tmp_path: Path) -> None:
    """Values 0, 100, 255 in 16-bit storage are 8-bit values; 256 and 65535 mean a 16-bit range: top 8 bits."""
    Image.fromarray(np.array([[0, 100, 255]], np.uint16)).save(tmp_path / "within.png")
    Image.fromarray(np.array([[0, 256, 65535]], np.uint16)).save(tmp_path / "above.png")
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "within.png"))[0, :, 0], [0, 100, 255])
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "above.png"))[0, :, 0], [0, 1, 255])


# ---- M16: a grey mask's channels may differ by up to 48 grey levels (JPEG chroma noise)


@pytest.mark.parametrize("blue, accepted", [(207, True), (206, False)])
def test_a_mask_tinted_by_up_to_48_levels_is_grey(tmp_path: Path, blue: int, accepted: bool) -> None:
    """White drawn as (255, 247, blue): a spread of 48 levels is JPEG noise on a grey mask, 49 a colour mask."""
    (tmp_path / "image").mkdir()
    (tmp_path / "gt").mkdir()
    Image.new("RGB", (64, 64), (90, 80, 70)).save(tmp_path / "image" / "0.png")
    tinted = np.zeros((64, 64, 3), np.uint8)
    tinted[:, :32] = (255, 247, blue)
    Image.fromarray(tinted).save(tmp_path / "gt" / "0.png")
    expr = f"folder:{tmp_path}:white=in-focus"
    if not accepted:
        with pytest.raises(ValueError, match=r"colour mask.*gt/0\.png"):
            build_dataset(expr, "test", img_size=32)
        return
    mask = build_dataset(expr, "test", img_size=32)[0]["mask"][0].numpy()
    expected = np.zeros((64, 64), np.float32)
    expected[:, :32] = 1
    np.testing.assert_array_equal(mask, expected)


# ---- M17: micro-batches of one image are allowed under SyncBatchNorm (DDP on CUDA)


def test_one_image_micro_batches_pass_under_syncbatchnorm_only() -> None:
    """--batch-size 2 over 2 processes: 1 image per process. Under DDP on CUDA SyncBatchNorm takes its
    statistics over both processes' images; under gloo on the CPU each process's BatchNorm sees one image."""
    resnest = build_model("dffnet", "resnest14d")
    config = LoopConfig(batch_size=2, accumulate=1, world_size=2)
    engine.run.refuse_one_image_batch_statistics(resnest, config, CUDA_DDP, "the trained network")
    with pytest.raises(ConfigError, match=r"^--batch-size 2 over 2 process\(es\) x --accumulate 1 gives "
                                          r"micro-batches of 1 image"):
        engine.run.refuse_one_image_batch_statistics(resnest, config, CPU_DDP, "the trained network")
