"""The CUDA paths, checked on the CPU: what a GPU run would do is observed through monkeypatched torch.cuda
functions, a CUDA device context whose moves are no-ops, or the code path itself (issue 19)."""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, SyncBatchNormAct
from torch import nn

import engine.config
import engine.depth
import engine.evaluate
import engine.resume
import engine.run
import engine.stages
import engine.train
import losses.distillation
import train_depth
import train_kd
import train_single
import utils.distributed
import utils.resize
import utils.runtime
from losses import Projectors, SegmentationCriterion, response_distillation_loss
from models import VARIANTS, build_midas, build_model
from tests.test_training import common_args, write_tiny_set
from engine.config import DistillConfig, LoopConfig, TrainConfig
from utils.checkpoint import model_checkpoint, save_checkpoint
from utils.distributed import DistributedContext

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("test_script", ROOT / "test.py")   # `test` is also a stdlib package
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

CPU = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
CPU_DDP = DistributedContext(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
CUDA_DDP = DistributedContext(rank=1, local_rank=1, world_size=2, device=torch.device("cuda", 1))


class Stop(Exception):
    """Raised by a monkeypatched function to end a run at the point a test looks at."""


def raise_stop(*args, **kwargs):
    raise Stop


@pytest.fixture
def no_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    """nn.Module.to is a no-op, so that set-up code for a CUDA device runs on the CPU."""
    monkeypatch.setattr(nn.Module, "to", lambda self, *args, **kwargs: self)


def batchnorm_kinds(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


# ---- rows 1-2: teachers with batch statistics under DDP on CUDA use SyncBatchNorm


def test_teachers_with_batch_statistics_are_synchronised_under_ddp_on_cuda(no_moves, tmp_path: Path):
    """A ResNeSt teacher's split attention applies BatchNorm to a pooled B x C x 1 x 1 map: with one image per
    GPU plain BatchNorm fails in train mode, and with several it normalises each GPU's share on its own."""
    args = DistillConfig(save=str(tmp_path / "m.pth"), world_size=2)
    assert args.teacher_bn == "batch"
    for teacher in (build_model("dffnet", "resnest14d"), build_midas("resnet18", features=16)):
        synced = engine.stages.prepare_teacher(teacher, args, CUDA_DDP)
        assert batchnorm_kinds(synced) == {nn.SyncBatchNorm}
        assert synced.training and not any(p.requires_grad for p in synced.parameters())
    eval_args = DistillConfig(save=str(tmp_path / "m.pth"), teacher_bn="eval", world_size=2)
    for args, ctx in ((eval_args, CUDA_DDP), (args, CPU_DDP), (args, CPU)):
        assert batchnorm_kinds(engine.stages.prepare_teacher(build_model("dffnet", "resnet18"), args, ctx)) == \
            {nn.BatchNorm2d}


# ---- row 3: resuming with --amp fp16 from a run saved without it


class Tiny(nn.Linear):
    def __init__(self) -> None:
        super().__init__(2, 1)
        self.config = {"name": "tiny"}


def test_resume_with_fp16_from_a_run_saved_without_it_starts_a_fresh_scaler(tmp_path: Path, capsys):
    model = Tiny()
    optimizer = torch.optim.Adam(model.parameters())
    saved = torch.amp.GradScaler("cpu", enabled=False)     # what --amp off / bf16 saves: an empty state
    path = save_checkpoint(model_checkpoint(
        model, {"amp": "bf16"}, 3, optimizers={"model": optimizer.state_dict()}, extra_modules={},
        grad_scaler=saved.state_dict(), best_val_mae=None, rng=[]),
        tmp_path / "run.pth")
    stage = engine.train.Stage(network=model, model=model, optimizer=optimizer, loss_fn=None)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    epoch, _ = engine.resume.resume_from(path, stage, LoopConfig(amp="fp16"), scaler, CPU)
    assert epoch == 3 and scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()
    assert "the fp16 gradient scaler starts afresh" in capsys.readouterr().out


# ---- row 4: the RNG state of this process's GPU only


def test_rng_state_saves_and_restores_only_this_process_gpu(monkeypatch: pytest.MonkeyPatch):
    """Under torchrun every process sees every GPU: saving them all and restoring them all would overwrite
    the other ranks' generators, and a resume with fewer visible GPUs would fail."""
    states = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(states.values()))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                        lambda all_states: restored.extend((s, i) for i, s in enumerate(all_states)))
    state = engine.resume.rng_state(torch.device("cuda", 1))
    assert torch.equal(state["cuda"], states[1])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)     # resumed where one GPU is visible
    engine.resume.set_rng_state(state, torch.device("cuda", 0))
    assert len(restored) == 1 and torch.equal(restored[0][0], states[1])
    assert torch.device(restored[0][1]) == torch.device("cuda", 0)
    restored.clear()
    engine.resume.set_rng_state(engine.resume.rng_state(CPU.device), CPU.device)
    assert restored == []


# ---- rows 5, 9, 10: train_depth.py with fp16, its syncs and its loaders


class RecordingScaler(torch.amp.GradScaler):
    made: list[RecordingScaler] = []

    def __init__(self, device: str = "cuda", enabled: bool = True, **kwargs) -> None:
        super().__init__("cpu", enabled=enabled, **kwargs)
        self.scaled = 0
        RecordingScaler.made.append(self)

    def scale(self, outputs):
        self.scaled += 1
        return super().scale(outputs)


def record_loaders(monkeypatch: pytest.MonkeyPatch, module) -> list[dict]:
    """The keyword arguments of every DataLoader `module` makes; the loaders themselves run without workers."""
    made = []
    real = torch.utils.data.DataLoader

    def loader(dataset, **kwargs):
        made.append(kwargs)
        return real(dataset, **{**kwargs, "num_workers": 0, "persistent_workers": False})

    monkeypatch.setattr(module, "DataLoader", loader)
    return made


def count_syncs(monkeypatch: pytest.MonkeyPatch, function: str) -> dict[str, int]:
    """Calls of Tensor.item / Tensor.tolist made directly by functions named `function`."""
    counts = {"item": 0, "tolist": 0}
    for method in counts:
        real = getattr(torch.Tensor, method)

        def counted(self, *args, _real=real, _method=method, **kwargs):
            if sys._getframe(1).f_code.co_name == function:
                counts[_method] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    return counts


def test_depth_teacher_fp16_uses_a_gradient_scaler_one_sync_per_step_and_its_loaders(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from datasets.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "syn", n=4, seed=3, size=64)
    monkeypatch.setattr(engine.config, "check_amp", lambda amp, device: None)  # fp16 on this CPU, as on CUDA
    monkeypatch.setattr(engine.depth, "autocast", lambda device, amp: contextlib.nullcontext())
    monkeypatch.setattr(torch.amp, "GradScaler", RecordingScaler)
    RecordingScaler.made = []
    train_loaders = record_loaders(monkeypatch, engine.run)
    val_loaders = record_loaders(monkeypatch, engine.depth)
    syncs = count_syncs(monkeypatch, "train_step")  # the loop's step
    train_depth.main(["--data", str(data), "--val-data", str(data), "--img-size", "64", "--epochs", "1",
                      "--batch-size", "2", "--features", "16", "--workers", "2", "--device", "cpu", "--amp", "fp16",
                      "--save", str(tmp_path / "midas.pth"), "--log-dir", str(tmp_path / "log")])
    steps = 2
    assert [(s.is_enabled(), s.scaled) for s in RecordingScaler.made] == [(True, steps)]
    assert syncs == {"item": 0, "tolist": steps}  # loss and the dead-map check in one transfer
    # the training loader's workers restart every epoch (seeded from the generator a checkpoint saves)
    assert [kwargs.get("persistent_workers", False) for kwargs in train_loaders] == [False]
    assert [kwargs["persistent_workers"] for kwargs in val_loaders] == [True]


# ---- rows 9, 10: stage 1's syncs per step and its validation loader


def test_training_step_syncs_once_and_validation_workers_persist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    data = write_tiny_set(tmp_path / "data", 8)
    train_loaders = record_loaders(monkeypatch, engine.run)
    eval_loaders = record_loaders(monkeypatch, engine.evaluate)
    syncs = count_syncs(monkeypatch, "train_step")
    train_single.main(common_args(data, tmp_path / "run", batch=4) + [
        "--epochs", "1", "--workers", "2", "--accumulate", "2", "--val-set", f"synthetic:{data}"])
    assert syncs == {"item": 0, "tolist": 2}        # 2 steps of 2 micro-batches: one tolist per step
    assert [kwargs["persistent_workers"] for kwargs in eval_loaders] == [True]
    # the training loader's workers restart every epoch, seeded from the generator a checkpoint saves
    assert [kwargs.get("persistent_workers", False) for kwargs in train_loaders] == [False]


# ---- rows 6, 8: the student under DDP on CUDA: timm's SyncBatchNorm conversion, no unused-parameter search


def test_ddp_on_cuda_keeps_timm_batchnorm_activations_and_skips_the_unused_parameter_search(
        no_moves, monkeypatch: pytest.MonkeyPatch):
    wrapped = []
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel",
                        lambda module, **kwargs: wrapped.append(kwargs) or module)
    backbone = timm.create_model("test_efficientnet", features_only=True)   # BatchNormAct2d + SiLU
    activations = [type(m.act) for m in backbone.modules() if isinstance(m, BatchNormAct2d)]
    assert nn.SiLU in activations
    reference = copy.deepcopy(backbone).eval()
    network = engine.run.prepare_trained_module(backbone, LoopConfig(batch_size=2, world_size=2), CUDA_DDP)
    converted = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(isinstance(m, nn.SyncBatchNorm) for m in converted)
    assert [type(m.act) for m in converted if isinstance(m, SyncBatchNormAct)] == activations
    x = torch.randn(2, 3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(network.eval()(x), reference(x)))   # the activations still run
    assert not wrapped[0].get("find_unused_parameters", False) and wrapped[0]["device_ids"] == [1]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_parameter_of_every_variant_gets_a_gradient(name: str):
    """What dropping DDP's find_unused_parameters relies on, for each stage's trained module."""
    images, masks = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    criterion = SegmentationCriterion()
    student = build_model(name, "resnet18", depth_heads=True)
    out = student(images)
    depth_loss = response_distillation_loss(out.depth, torch.rand(2, 1, 64, 64))[0]
    loss = criterion(out.logits, out.sides, masks)[0] + depth_loss
    projectors = Projectors(student.feature_channels, [8, 8, 8, 8])
    loss = loss + sum(p.square().mean() for p in projectors(out.features))
    loss.backward()
    for module in (student, projectors):
        assert [n for n, p in module.named_parameters() if p.grad is None] == []


# ---- row 7: bf16 counts as fast on CUDA only in hardware


def test_bf16_check_on_cuda_excludes_emulation(monkeypatch: pytest.MonkeyPatch):
    calls = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        calls.append(including_emulation)
        return including_emulation          # a V100 / T4: bf16 only emulated

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert not utils.runtime.bf16_is_fast(torch.device("cuda"))
    assert calls == [False]


# ---- row 11: the current CUDA device follows --device cuda:N


def test_an_indexed_cuda_device_becomes_the_current_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(torch.device(device)))
    cuda1 = torch.device("cuda", 1)
    for device in (torch.device("cpu"), torch.device("cuda")):
        utils.runtime.use_device(device)
    assert current == []

    monkeypatch.setattr(test_script, "select_device", lambda name: cuda1)
    monkeypatch.setattr(test_script, "check_writable", raise_stop)
    with pytest.raises(Stop):
        test_script.main(["--out", str(tmp_path / "out")])
    monkeypatch.setattr(engine.config, "select_device", lambda name: cuda1)
    monkeypatch.setattr(utils.distributed, "select_device", lambda name: cuda1)
    monkeypatch.setattr(engine.run, "check_outputs", raise_stop)
    with pytest.raises(Stop):
        train_depth.main(["--data", str(tmp_path)])
    monkeypatch.setattr(engine.evaluate, "load_model", raise_stop)
    with pytest.raises(Stop):
        engine.evaluate.load_detector("model.pth", engine.evaluate.EvalSettings(device=cuda1))
    assert current == [cuda1] * 3


# ---- row 12: --deterministic


def test_deterministic_flag_sets_algorithms_backends_and_cublas_workspace(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path):
    modes = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode, **kwargs: modes.append(mode))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    for parse in (train_single.parse_args, train_kd.parse_args):
        assert parse(["--deterministic"]).deterministic and not parse([]).deterministic
    config = TrainConfig(deterministic=True, device="cpu", save=str(tmp_path / "m.pth"),
                         log_dir=str(tmp_path / "log"))
    backends = []
    monkeypatch.setattr(engine.run, "configure_backends",
                        lambda device, deterministic=False: backends.append(deterministic))
    with engine.run.training_run(config):
        pass
    assert modes == [True] and backends == [True] and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")     # a user's own setting is kept
    monkeypatch.setattr(engine.run, "configure_backends", raise_stop)
    with pytest.raises(Stop):
        train_depth.main(["--data", str(tmp_path), "--deterministic", "--device", "cpu",
                          "--save", str(tmp_path / "d.pth"), "--log-dir", str(tmp_path / "log")])
    assert modes == [True, True] and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_a_deterministic_run_on_the_cpu_trains_and_validates(tmp_path: Path):
    """No op of the training step or of validation lacks a deterministic implementation (on the CPU)."""
    data = write_tiny_set(tmp_path / "data", 4)
    try:
        train_single.main(common_args(data, tmp_path / "run") + ["--epochs", "1", "--deterministic",
                                                                  "--val-set", f"synthetic:{data}"])
    finally:
        torch.use_deterministic_algorithms(False)
    assert (tmp_path / "run" / "model.pth").is_file()


def test_response_distillation_avoids_median_along_a_dimension(monkeypatch: pytest.MonkeyPatch):
    """CUDA's median with indices has no deterministic implementation: R-DFFNet's depth normalisation takes
    the same value (the lower middle one) by sorting."""
    flat = torch.randn(3, 64)
    flat[:, :8] = 0.5                                    # ties, an even count
    reference = flat.median(dim=1, keepdim=True).values
    monkeypatch.setattr(torch.Tensor, "median", raise_stop)
    monkeypatch.setattr(torch, "median", raise_stop)
    heads = [torch.randn(2, 1, 16, 16, requires_grad=True)]
    response_distillation_loss(heads, torch.rand(2, 1, 32, 32))[0].backward()
    assert heads[0].grad.abs().sum() > 0
    assert torch.equal(losses.depth.lower_median(flat), reference)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape, size", [((2, 3, 5, 7), (10, 14)), ((1, 2, 40, 30), (13, 7)), ((1, 1, 8, 8), (1, 1))])
def test_matmul_resize_equals_bilinear_interpolate(shape, size, align_corners: bool, dtype: torch.dtype,
                                                   tolerance: float):
    """Equal up to rounding (float32 F.interpolate computes its source coordinates in float32)."""
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    weights = torch.randn(*shape[:2], *size, dtype=dtype)
    reference = F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
    resized = utils.resize.matmul_resize(x, size, align_corners)
    torch.testing.assert_close(resized, reference, rtol=0, atol=tolerance)
    grads = [torch.autograd.grad((y * weights).sum(), x)[0] for y in (reference, resized)]
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=tolerance * 10)


def test_deterministic_resizing_computes_the_same_networks_and_losses(monkeypatch: pytest.MonkeyPatch):
    """With --deterministic on CUDA every bilinear resize of the networks and losses goes through matrix
    products; forced here on the CPU, the loss and gradients are those of F.interpolate."""
    torch.manual_seed(0)
    student, midas = build_model("dffnet", "resnet18").eval(), build_midas("resnet18", features=16).eval()
    images, masks = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()

    def loss_and_grads() -> list[torch.Tensor]:
        out = student(images)
        loss = SegmentationCriterion()(out.logits, out.sides, masks)[0] + midas(images).depth.mean()
        params = [p for m in (student, midas) for p in m.parameters()]
        return [loss, *(g for g in torch.autograd.grad(loss, params, allow_unused=True) if g is not None)]

    reference = loss_and_grads()
    calls = []
    real = utils.resize.matmul_resize
    monkeypatch.setattr(utils.resize, "uses_matmul", lambda x: True)
    monkeypatch.setattr(utils.resize, "matmul_resize", lambda *args: calls.append(1) or real(*args))
    deterministic = loss_and_grads()
    assert len(calls) >= 10
    for a, b in zip(deterministic, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
