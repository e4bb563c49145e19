"""End-to-end training on CPU: resnest14d, tiny synthetic images, each stage, resume, NaN stop, SIGKILL."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import engine.stages
import engine.train
import losses.segmentation
import train_kd
import train_single
from engine.config import DistillConfig, TrainConfig
from engine.options import config_from_flags
from models import build_midas, build_model, load_model, make_frozen_teacher
from utils.checkpoint import read_checkpoint, save_checkpoint
from utils.distributed import DistributedContext

ROOT = Path(__file__).resolve().parents[1]


def write_tiny_set(root: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    """n random images with one in-focus square each (white = in-focus), in the synthetic layout."""
    rng = np.random.default_rng(seed)
    (root / "image").mkdir(parents=True)
    (root / "gt").mkdir()
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(size // 4, 3 * size // 4, 2)
        mask[y - size // 6 : y + size // 6, x - size // 6 : x + size // 6] = 255
        image = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
        image[mask > 0] = rng.integers(100, 255, (int((mask > 0).sum()), 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "image" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "gt" / f"{i:03d}.png")
    return root


def write_tiny_item(seed: int, size: int = 64) -> dict[str, torch.Tensor]:
    """One normalised image with a bright in-focus square, and its mask (1 = in-focus)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, size, size)
    y, x = torch.randint(size // 4, 3 * size // 4, (2,), generator=g).tolist()
    mask[:, y - size // 6 : y + size // 6, x - size // 6 : x + size // 6] = 1
    image = torch.randn(3, size, size, generator=g) * 0.3 + mask
    return {"image": image, "mask": mask}


def common_args(data: Path, run: Path, batch: int = 2) -> list[str]:
    return ["--backbone", "resnest14d", "--pretrained", "none", "--train-set", f"synthetic:{data}",
            "--img-size", "64", "--batch-size", str(batch), "--workers", "0", "--device", "cpu",
            "--save", str(run / "model.pth"), "--log-dir", str(run / "log")]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_set(tmp_path_factory.mktemp("tiny"), 8)


@pytest.fixture(scope="module")
def two_epoch_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stage 1 for 2 epochs in one run, validating on the same images (validation must not perturb it)."""
    run = tmp_path_factory.mktemp("two_epochs")
    train_single.main(common_args(data, run) + ["--epochs", "2", "--val-set", f"synthetic:{data}"])
    return run


@pytest.fixture(scope="module")
def depth_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MiDaS (resnet18 encoder, 16 decoder features) saved in our checkpoint format."""
    torch.manual_seed(0)
    midas = build_midas(encoder="resnet18", features=16)
    path = tmp_path_factory.mktemp("midas") / "midas_small.pt"
    save_checkpoint({"format": "ddffnet-checkpoint-v1", "model": midas.state_dict(), "model_config": midas.config,
                     "config": {}, "epoch": 0}, path)
    return path


def test_stage1_writes_a_complete_checkpoint_and_logs(two_epoch_run: Path):
    checkpoint = read_checkpoint(two_epoch_run / "model.pth")
    assert checkpoint["format"] == "ddffnet-checkpoint-v1" and checkpoint["epoch"] == 2
    assert checkpoint["model_config"] == {"name": "dffnet", "backbone": "resnest14d", "depth_heads": False,
                            "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    assert checkpoint["config"]["batch_size"] == 2 and checkpoint["config"]["loss"] == "bce+edge"
    assert set(checkpoint["optimizers"]) == {"model"} and checkpoint["sampler"] == {"seed": 42, "epoch": 2}
    assert checkpoint["schedule"]["lr"] == pytest.approx(1e-4 * (1 - 2 / 80) ** 0.9)
    # the rate the optimiser actually used in epoch 2: poly 1e-4 * (1 - 2 / 80) ** 0.9 = 9.7747e-05
    assert checkpoint["optimizers"]["model"]["param_groups"][0]["lr"] == pytest.approx(9.7747e-05, rel=1e-4)
    assert {"python", "numpy", "torch", "cuda"} <= set(checkpoint["rng"][0])
    model = load_model(two_epoch_run / "model.pth").eval()
    assert model(torch.zeros(1, 3, 64, 64)).logits.shape == (1, 1, 64, 64)
    steps = read_csv(two_epoch_run / "log" / "steps.csv")
    assert [(r["epoch"], r["step"]) for r in steps] == [(e, s) for e in "12" for s in "1234"]
    assert {"loss", "final", "side1", "side4", "lr", "mae"} <= set(steps[0])
    epochs = read_csv(two_epoch_run / "log" / "epochs.csv")
    assert [r["epoch"] for r in epochs] == ["1", "2"]
    assert all(0 < float(r["val_mae"]) < 1 and 0 <= float(r["val_fbeta"]) <= 1 for r in epochs)
    best = read_checkpoint(two_epoch_run / "model_best.pth")
    assert best["best_val_mae"] == pytest.approx(min(float(r["val_mae"]) for r in epochs), rel=1e-4)


def test_one_epoch_plus_resume_equals_two_epochs(data: Path, two_epoch_run: Path, tmp_path: Path):
    train_single.main(common_args(data, tmp_path) + ["--epochs", "1"])
    train_single.main(common_args(data, tmp_path) + ["--epochs", "2", "--resume"])
    resumed = read_checkpoint(tmp_path / "model.pth")
    uninterrupted = read_checkpoint(two_epoch_run / "model.pth")
    assert resumed["epoch"] == 2
    assert_same_state(resumed["model"], uninterrupted["model"])
    assert [r["loss"] for r in read_csv(tmp_path / "log" / "steps.csv")] == \
        [r["loss"] for r in read_csv(two_epoch_run / "log" / "steps.csv")]
    with pytest.raises(SystemExit, match="--batch-size 4 differs"):
        train_single.main(common_args(data, tmp_path, batch=4) + ["--epochs", "3", "--resume"])


def test_encoder_lr_scale_gives_the_encoder_its_own_rate_and_must_match_on_resume(data: Path, tmp_path: Path):
    torch.manual_seed(0)
    model = build_model("dffnet", "resnest14d")
    start = model.state_dict()
    save_checkpoint({"format": "ddffnet-checkpoint-v1", "model": start, "model_config": model.config, "config": {},
                     "epoch": 0}, tmp_path / "start.pth")
    init = ["--epochs", "1", "--init", str(tmp_path / "start.pth")]
    train_single.main(common_args(data, tmp_path) + init + ["--encoder-lr-scale", "0.1"])
    checkpoint = read_checkpoint(tmp_path / "model.pth")
    encoder_group, rest_group = checkpoint["optimizers"]["model"]["param_groups"]
    lr = 1e-4 * (1 - 1 / 80) ** 0.9
    assert (encoder_group["lr"], rest_group["lr"]) == (pytest.approx(0.1 * lr), pytest.approx(lr))
    assert len(encoder_group["params"]) == len(list(model.encoder.parameters()))
    assert len(encoder_group["params"]) + len(rest_group["params"]) == len(list(model.parameters()))
    # from the same start, the encoder moves far less than in a run at one rate; the decoder about as much
    train_single.main(common_args(data, tmp_path / "one_rate") + init)
    one_rate = read_checkpoint(tmp_path / "one_rate" / "model.pth")["model"]

    def moved(state: dict[str, torch.Tensor], prefix: str) -> float:
        return sum((state[k].float() - start[k].float()).abs().sum().item() for k in start
                   if k.startswith(prefix) and start[k].is_floating_point() and "running" not in k)

    assert moved(checkpoint["model"], "encoder.") < 0.3 * moved(one_rate, "encoder.")
    assert moved(checkpoint["model"], "decoder.") > 0.5 * moved(one_rate, "decoder.")
    with pytest.raises(SystemExit, match="--encoder-lr-scale 1.0 differs from the checkpoint's 0.1"):
        train_single.main(common_args(data, tmp_path) + ["--epochs", "2", "--resume"])


def test_loss_falls_when_overfitting_one_batch(tmp_path: Path):
    """The training step itself (engine.train.train_step), repeated on one fixed batch."""
    batch = torch.utils.data.default_collate([write_tiny_item(seed) for seed in range(2)])
    config = config_from_flags(vars(train_single.parse_args(common_args(tmp_path, tmp_path) + ["--lr", "1e-3"])), TrainConfig)
    ctx = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    torch.manual_seed(0)
    stage = engine.stages.build_stage1(config, ctx)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = [engine.train.train_step(stage, iter([batch]), 1, config, ctx, scaler)["loss"] for _ in range(12)]
    assert losses[-1] < 0.7 * losses[0] and losses[-1] == min(losses), losses


def test_stage2_feature_distillation_epoch(data: Path, two_epoch_run: Path, depth_teacher: Path, tmp_path: Path):
    train_kd.main(common_args(data, tmp_path) + [
        "--epochs", "1", "--teacher", str(two_epoch_run / "model.pth"), "--depth-teacher", str(depth_teacher),
        "--teacher-bn", "batch", "--amp", "bf16", "--channels-last"])
    checkpoint = read_checkpoint(tmp_path / "model.pth")
    assert checkpoint["epoch"] == 1 and set(checkpoint["optimizers"]) == {"model", "projectors"}
    # student resnest14d 2048/1024/512/256 -> DFFNet teacher (same) and -> MiDaS resnet18 512/256/128/64
    assert checkpoint["extra_modules"]["to_defocus"]["convs.0.weight"].shape == (2048, 2048, 1, 1)
    assert checkpoint["extra_modules"]["to_depth"]["convs.3.weight"].shape == (64, 256, 1, 1)
    rows = read_csv(tmp_path / "log" / "steps.csv")
    assert all(float(r["alpha"]) == 3.0 for r in rows)
    for r in rows:
        total = float(r["seg"]) + 3.0 * (float(r["defocus_distill"]) + float(r["depth_distill"]))
        assert float(r["loss"]) == pytest.approx(total, rel=1e-4)
        assert float(r["seg"]) == pytest.approx(
            1.1 * float(r["final"]) + sum(float(r[f"side{k}"]) for k in range(1, 5)), rel=1e-4)
    assert checkpoint["optimizers"]["projectors"]["param_groups"][0]["lr"] == 0.1


@pytest.mark.parametrize("teachers", ["depth", "defocus"])
def test_single_teacher_ablation_distils_from_that_teacher_only(data: Path, two_epoch_run: Path, depth_teacher: Path,
                                                                 tmp_path: Path, teachers: str):
    other = {"depth": "defocus", "defocus": "depth"}[teachers]
    missing = str(tmp_path / "absent.pth")  # the unused teacher's file is never opened
    paths = {"defocus": str(two_epoch_run / "model.pth"), "depth": str(depth_teacher), other: missing}
    train_kd.main(common_args(data, tmp_path) + ["--epochs", "1", "--teachers", teachers,
                                                 "--teacher", paths["defocus"], "--depth-teacher", paths["depth"]])
    checkpoint = read_checkpoint(tmp_path / "model.pth")
    assert set(checkpoint["extra_modules"]) == {f"to_{teachers}"}
    assert checkpoint["config"]["teachers"] == teachers
    rows = read_csv(tmp_path / "log" / "steps.csv")
    assert f"{other}_distill" not in rows[0]
    for r in rows:
        assert float(r["loss"]) == pytest.approx(float(r["seg"]) + float(r["alpha"]) * float(r[f"{teachers}_distill"]),
                                                 rel=1e-4)


def test_response_distillation_epoch(data: Path, depth_teacher: Path, tmp_path: Path):
    train_kd.main(common_args(data, tmp_path) + ["--epochs", "1", "--distill", "response",
                                                 "--depth-teacher", str(depth_teacher), "--encoder-lr-scale", "0.5"])
    checkpoint = read_checkpoint(tmp_path / "model.pth")
    assert checkpoint["epoch"] == 1 and checkpoint["model_config"]["depth_heads"] is True
    encoder_group, rest_group = checkpoint["optimizers"]["model"]["param_groups"]  # stage 2 scales its encoder too
    assert encoder_group["lr"] == pytest.approx(0.5 * rest_group["lr"])
    student = build_model("dffnet", "resnest14d", depth_heads=True)  # the depth heads learn at the decoder's rate
    assert len(encoder_group["params"]) == len(list(student.encoder.parameters()))
    assert len(rest_group["params"]) == len(list(student.parameters())) - len(encoder_group["params"])
    rows = read_csv(tmp_path / "log" / "steps.csv")
    assert len(rows) == 4 and all(float(r["depth"]) > 0 for r in rows)
    for r in rows:
        assert float(r["loss"]) == pytest.approx(float(r["seg"]) + float(r["depth"]), rel=1e-4)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(data: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    real_loss = losses.segmentation.segmentation_loss
    calls = []

    def loss_turning_nan(*args, **kwargs):
        loss, terms = real_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan"), terms) if len(calls) == 6 else (loss, terms)

    monkeypatch.setattr(losses.segmentation, "segmentation_loss", loss_turning_nan)
    with pytest.raises(SystemExit, match=r"non-finite loss at epoch 2, step 2/4.*model.pth \(epoch 1\)"):
        train_single.main(common_args(data, tmp_path) + ["--epochs", "2"])
    assert read_checkpoint(tmp_path / "model.pth")["epoch"] == 1


def test_bad_input_gives_a_clear_message(data: Path, depth_teacher: Path, tmp_path: Path):
    with pytest.raises(SystemExit, match="--batch-size 3 must be divisible"):
        train_single.main(common_args(data, tmp_path, batch=3) + ["--accumulate", "2"])
    with pytest.raises(SystemExit, match="--depth-teacher: .*missing.pth: no such file"):
        train_kd.main(common_args(data, tmp_path) + ["--depth-teacher", str(tmp_path / "missing.pth")])
    with pytest.raises(SystemExit, match="--teacher: .*missing.pth: no such file"):
        train_kd.main(common_args(data, tmp_path) + ["--teacher", str(tmp_path / "missing.pth"),
                                                     "--depth-teacher", str(depth_teacher)])
    with pytest.raises(SystemExit, match="--train-set"):
        train_single.main(common_args(tmp_path / "nothing", tmp_path))


def test_a_truncated_training_file_is_refused_at_start_by_name(data: Path, tmp_path: Path):
    copy = Path(shutil.copytree(data, tmp_path / "set"))
    broken = copy / "image" / "003.png"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    with pytest.raises(SystemExit, match=r"^--train-set / --data-root: synthetic:.* cannot be used for training: "
                                         r"files that do not decode: image/003\.png \(image file is truncated\)$"):
        train_single.main(common_args(copy, tmp_path) + ["--epochs", "1"])
    assert not (tmp_path / "model.pth").exists()


def test_a_new_run_refuses_to_replace_an_existing_save(data: Path, tmp_path: Path):
    """The defaults are where users put the authors' weights: a new run must not overwrite them."""
    import train_depth

    save = tmp_path / "model.pth"
    save.write_bytes(b"the authors' weights")
    refused = rf"^--save {save} already exists: pass --resume to continue it or --overwrite to replace it, or " \
              r"choose another --save$"
    for main in (train_single.main, train_kd.main):
        with pytest.raises(SystemExit, match=refused):
            main(common_args(data, tmp_path) + ["--epochs", "1"])
    with pytest.raises(SystemExit, match=refused):
        train_depth.main(["--data", str(data), "--device", "cpu", "--save", str(save)])
    assert save.read_bytes() == b"the authors' weights"
    train_single.main(common_args(data, tmp_path) + ["--epochs", "1", "--overwrite"])
    assert read_checkpoint(save)["epoch"] == 1


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], r"^--batch-size must be >= 1, got 0$"),
    (["--lr", "nan"], r"^--lr must be a finite number > 0, got nan$"),
    (["--lr=-1e-4"], r"^--lr must be a finite number > 0, got -0.0001$"),
    (["--img-size", "0"], r"^--img-size 0 must be a positive multiple of 32$"),
    (["--device", "gpu"], r"^--device gpu: not a device; use auto, cpu, cuda or cuda:N$"),
])
def test_impossible_numbers_and_devices_are_named_at_start(data: Path, tmp_path: Path, flags: list[str],
                                                           message: str):
    import train_depth

    for main in (train_single.main, train_kd.main):
        with pytest.raises(SystemExit, match=message):
            main(common_args(data, tmp_path) + flags)
    with pytest.raises(SystemExit, match=message):
        train_depth.main(["--data", str(data), "--device", "cpu", "--save", str(tmp_path / "d.pth"), *flags])
    assert not list(tmp_path.iterdir())


def test_sigkill_mid_epoch_resumes_from_the_last_complete_checkpoint(data: Path, two_epoch_run: Path,
                                                                     tmp_path: Path):
    argv = [sys.executable, "train_single.py", *common_args(data, tmp_path)]
    # the child runs with this process's thread count, so its float reductions match two_epoch_run's
    threads = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    process = subprocess.Popen(argv + ["--epochs", "3"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    steps = tmp_path / "log" / "steps.csv"
    deadline = time.time() + 120
    try:
        while not (steps.exists() and "\n2,1," in steps.read_text()):
            assert process.poll() is None and time.time() < deadline, "training ended before epoch 2 began"
            time.sleep(0.02)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert read_checkpoint(tmp_path / "model.pth")["epoch"] == 1  # killed in epoch 2: epoch 1 is intact
    done = subprocess.run(argv + ["--epochs", "2", "--resume"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_state(read_checkpoint(tmp_path / "model.pth")["model"],
                      read_checkpoint(two_epoch_run / "model.pth")["model"])


def test_nonfinite_weights_stop_before_saving_and_keep_the_last_good_checkpoint(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A BatchNorm running variance turning inf in epoch 2 (the loss, in train mode, stays finite): the run
    stops naming the tensor and the epoch-1 file survives byte for byte."""
    real_build = engine.stages.build_stage1
    epoch1_file = []

    def build_with_diverging_variance(config, ctx):
        stage = real_build(config, ctx)
        real_loss_fn, calls = stage.loss_fn, []

        def loss_fn(batch, epoch):
            calls.append(epoch)
            if len(calls) == 3:  # epoch 2, step 1 of 2
                epoch1_file.append((tmp_path / "model.pth").read_bytes())
                stage.model.decoder.refine.bn.running_var.fill_(float("inf"))
            return real_loss_fn(batch, epoch)

        stage.loss_fn = loss_fn
        return stage

    monkeypatch.setattr(engine.stages, "build_stage1", build_with_diverging_variance)
    with pytest.raises(SystemExit, match=r"^non-finite weights after epoch 2: decoder\.refine\.bn\.running_var "
                                         r"\(inf\); stopping without saving \(the run diverged: lower --lr\?\)\. "
                                         rf"Last good checkpoint: {tmp_path / 'model.pth'} \(epoch 1\)$"):
        train_single.main(common_args(data, tmp_path, batch=4) + ["--epochs", "3", "--backbone", "resnet18"])
    assert (tmp_path / "model.pth").read_bytes() == epoch1_file[0]
    assert read_checkpoint(tmp_path / "model.pth")["epoch"] == 1
    assert [r["epoch"] for r in read_csv(tmp_path / "log" / "epochs.csv")] == ["1"]


CPU = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def test_stage2_teachers_use_batch_statistics_by_default(tmp_path: Path):
    """The authors never call .eval() on the teachers: by default their BatchNorm uses (and drifts with) each
    batch's statistics; --teacher-bn eval keeps the running statistics."""
    config = config_from_flags(vars(train_kd.parse_args(["--save", str(tmp_path / "m.pth")])), DistillConfig)
    assert config.teacher_bn == "batch"
    teacher = engine.stages.prepare_teacher(build_model("dffnet", "resnet18"), config, CPU)
    assert teacher.training and not any(p.requires_grad for p in teacher.parameters())
    running_mean = teacher.encoder.model.bn1.running_mean.clone()
    with torch.inference_mode():
        teacher.features(torch.randn(2, 3, 64, 64))
    assert not torch.equal(teacher.encoder.model.bn1.running_mean, running_mean)
    eval_config = DistillConfig(save=str(tmp_path / "m.pth"), teacher_bn="eval")
    assert not engine.stages.prepare_teacher(build_model("dffnet", "resnet18"), eval_config, CPU).training


@pytest.mark.parametrize("distill", ["feature", "response"])
@pytest.mark.parametrize("model_name, flags, final_weight", [
    ("dffnet", [], 1.1),                              # the authors' weight with side outputs
    ("dffnet_no_side", [], 1.0),                      # ... and without
    ("dffnet_no_side", ["--final-weight", "1.3"], 1.3),
])
def test_stage2_final_weight_follows_the_side_outputs(tmp_path: Path, distill: str, model_name: str,
                                                      flags: list[str], final_weight: float):
    config = config_from_flags(vars(train_kd.parse_args(["--model", model_name, "--backbone", "resnet18", "--pretrained",
                                                   "none", "--distill", distill, "--save", str(tmp_path / "m.pth"),
                                                   *flags])), DistillConfig)
    torch.manual_seed(0)
    depth_teacher = make_frozen_teacher(build_midas("resnet18", features=16))
    if distill == "feature":
        defocus_teacher = make_frozen_teacher(build_model("dffnet", "resnet18"))
        stage = engine.stages.build_feature_distill_stage(config, CPU, {"defocus": defocus_teacher,
                                                                        "depth": depth_teacher})
    else:
        stage = engine.stages.build_response_distill_stage(config, CPU, depth_teacher)
    batch = torch.utils.data.default_collate([write_tiny_item(seed) for seed in range(2)])
    _, terms = stage.loss_fn(batch, 1)
    sides = [value.item() for name, value in terms.items() if name.startswith("side")]
    assert len(sides) == (4 if model_name == "dffnet" else 0)
    assert terms["seg"].item() == pytest.approx(final_weight * terms["final"].item() + sum(sides), rel=1e-5)
    assert config.final_weight == final_weight  # what the log and the checkpoint's config record
