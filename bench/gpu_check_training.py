"""The training parts of bench/gpu_check.py: fp16 with the gradient scaler, torchrun (DDP, SyncBatchNorm,
NCCL) and the stage-1 / stage-2 step speeds, with the torchrun worker that runs stage 1 in each process."""
from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train_single  # noqa: E402
from bench.common import (build_stage, peak_memory_gb, random_batches, reset_peak_memory, stage_config,  # noqa: E402
                          time_steps)
from bench.gpu_check_parts import (CUHK_TR_IMAGES, FP16_STEPS, PRECISIONS, device_of,  # noqa: E402
                                   run_command)
from datasets.synthetic import generate_dataset  # noqa: E402
from engine.config import TrainConfig  # noqa: E402
from engine.options import config_from_flags, log_dir  # noqa: E402
from engine.resume import rng_state, training_checkpoint  # noqa: E402
from engine.run import start_training  # noqa: E402
from engine.stages import build_stage1, make_dbd_loader  # noqa: E402
from engine.train import Stage, run_stage, train_step  # noqa: E402
from models import build_midas, build_model  # noqa: E402
from utils.checkpoint import model_checkpoint, save_checkpoint  # noqa: E402
from utils.distributed import DistributedContext, EpochShuffleSampler  # noqa: E402
from utils.optim import set_lr  # noqa: E402
from utils.runtime import configure_backends, select_device, use_deterministic_algorithms  # noqa: E402
from utils.schedule import poly_lr  # noqa: E402

TORCHRUN_WORKER = "--torchrun-worker"
DETERMINISTIC_STEPS = 3
RUNNER = ROOT / "bench" / "gpu_check.py"   # torchrun starts it with TORCHRUN_WORKER first


def checkpoint_seconds(stage: Stage, config: TrainConfig, scaler: torch.amp.GradScaler, path: Path) -> float:
    """Time to write the stage's per-epoch training checkpoint (weights, Adam states, RNG), as `fit` does."""
    sampler = EpochShuffleSampler(CUHK_TR_IMAGES, config.batch_size)
    device = next(stage.model.parameters()).device
    start = time.perf_counter()
    save_checkpoint(training_checkpoint(stage, config, 1, sampler, scaler, None, [rng_state(device)]), path)
    seconds = time.perf_counter() - start
    path.unlink()
    return seconds


def measure_row(cfg: argparse.Namespace, stage_name: str, precision: str, checkpoint: Path | None) -> dict[str, Any]:
    """Build the stage as the scripts do, run cfg.warmup + cfg.steps steps on random batches, report the
    median step, the first (warm-up / compile) step and the peak memory; optionally time a checkpoint."""
    amp, channels_last, compiled = PRECISIONS[precision]
    device = device_of(cfg)
    ctx = DistributedContext(rank=0, local_rank=0, world_size=1, device=device)
    config = stage_config(cfg, stage_name, cfg.batch, amp, channels_last, device, compiled)
    reset_peak_memory(device)
    torch.manual_seed(0)
    stage = build_stage(stage_name, config, cfg, ctx)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    seconds = time_steps(stage, random_batches(cfg.batch, cfg.img_size, cfg.warmup + cfg.steps), config, ctx, scaler)
    step = statistics.median(seconds[cfg.warmup:])
    row = {"stage": stage_name, "precision": precision, "batch": cfg.batch, "img_size": cfg.img_size,
           "seconds_per_step": step, "first_step_seconds": seconds[0], "step_seconds": seconds,
           "images_per_second": cfg.batch / step, "peak_memory_gb": peak_memory_gb(device)}
    if checkpoint is not None:
        row["checkpoint_seconds"] = checkpoint_seconds(stage, config, scaler, checkpoint)
    return row


def speed_rows(cfg: argparse.Namespace, stage_name: str, precisions: tuple[str, ...]) -> dict[str, Any]:
    """One row per precision (the first also times the checkpoint), memory freed between rows."""
    device = device_of(cfg)
    configure_backends(device)
    rows = []
    for precision in precisions:
        checkpoint = cfg.work / f"{stage_name.replace(' ', '')}.pth" if not rows else None
        rows.append(measure_row(cfg, stage_name, precision, checkpoint))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summary = " | ".join(f"{r['precision']} {r['seconds_per_step']:.3f} s/step {r['images_per_second']:.1f} img/s "
                         f"{r['peak_memory_gb']:.1f} GB" for r in rows)
    return {"rows": rows, "checkpoint_seconds": rows[0]["checkpoint_seconds"], "summary": summary}


def part_fp16(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """FP16_STEPS stage-1 steps in fp16 autocast with the GradScaler, lr of epoch 1 (train_step raises on a
    non-finite loss)."""
    device = device_of(cfg)
    configure_backends(device)
    ctx = DistributedContext(rank=0, local_rank=0, world_size=1, device=device)
    torch.manual_seed(0)
    config = stage_config(cfg, "stage 1", cfg.batch, "fp16", False, device)
    stage = build_stage("stage 1", config, cfg, ctx)
    set_lr(stage.optimizer, poly_lr(1, config.lr, config.schedule_epochs, config.lr_power))
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")   # as engine.train.run_stage
    stage.network.train()
    batches = iter(random_batches(cfg.batch, cfg.img_size, FP16_STEPS))
    scales, losses = [scaler.get_scale()], []
    for _ in range(FP16_STEPS):
        losses.append(train_step(stage, batches, 1, config, ctx, scaler)["loss"])
        scales.append(scaler.get_scale())
    skipped = sum(after < before for before, after in zip(scales, scales[1:]))
    problems = ["every step skipped: the gradients overflow at every scale"] if skipped == FP16_STEPS else []
    return {"steps": FP16_STEPS, "lr": config.lr, "losses": losses, "scales": scales, "skipped_steps": skipped,
            "problems": problems,
            "summary": f"{FP16_STEPS} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, all finite; scale "
                       f"{scales[0]:.0f} -> {scales[-1]:.0f} ({skipped} skipped)"}


def part_deterministic(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """--deterministic: DETERMINISTIC_STEPS stage-2 steps (both teachers) run twice from the same seed must give
    bit-identical weights, as docs/training_and_evaluation.md's "how exactly" promises for one GPU."""
    device = device_of(cfg)
    use_deterministic_algorithms()
    configure_backends(device, deterministic=True)
    ctx = DistributedContext(rank=0, local_rank=0, world_size=1, device=device)
    losses, weights = [], []
    for _ in range(2):
        torch.manual_seed(0)
        config = stage_config(cfg, "stage 2", cfg.batch, "off", False, device)
        stage = build_stage("stage 2", config, cfg, ctx)
        stage.network.train()
        scaler = torch.amp.GradScaler(device.type, enabled=False)
        batches = iter(random_batches(cfg.batch, cfg.img_size, DETERMINISTIC_STEPS))
        losses.append([train_step(stage, batches, 1, config, ctx, scaler)["loss"] for _ in range(DETERMINISTIC_STEPS)])
        weights.append({name: value.cpu() for name, value in stage.model.state_dict().items()})
        del stage
        gc.collect()
    differing = [name for name in weights[0] if not torch.equal(weights[0][name], weights[1][name])]
    problems = ([f"{len(differing)} weight tensors differ between the two runs, first {differing[0]}"]
                if differing else [])
    return {"steps": DETERMINISTIC_STEPS, "losses": losses, "differing_tensors": len(differing), "problems": problems,
            "summary": f"two runs of {DETERMINISTIC_STEPS} stage-2 steps with --deterministic: "
                       f"{len(differing)} of {len(weights[0])} weight tensors differ"}


def torchrun_stage1(cfg: argparse.Namespace, processes: int) -> dict[str, Any]:
    """Stage 1 for cfg.torchrun_steps steps under `torchrun --nproc_per_node processes` (see torchrun_worker)."""
    out = cfg.work / f"torchrun-{processes}"
    data = generate_dataset(out / "data", n=cfg.torchrun_steps * cfg.batch, seed=3, size=cfg.img_size)
    device = "cuda" if cfg.device.startswith("cuda") else "cpu"
    train = ["--train-set", f"synthetic:{data}", "--backbone", cfg.backbone, "--pretrained", "none", "--img-size",
             str(cfg.img_size), "--batch-size", str(cfg.batch), "--epochs", "1", "--workers", "2", "--device", device,
             "--save", str(out / "DFFNet.pth"), "--log-dir", str(out / "logs"), "--overwrite"]
    report = out / "report.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(RUNNER), TORCHRUN_WORKER, str(report), *train]
    seconds = run_command("torchrun", command, cfg)
    result = {**json.loads(report.read_text()), "seconds": seconds}
    losses = result["losses"]
    problems = []
    if len(losses) != cfg.torchrun_steps:
        problems.append(f"{len(losses)} steps logged, expected {cfg.torchrun_steps}")
    if not all(map(math.isfinite, losses)):
        problems.append("non-finite loss")
    if not result["ddp"]:
        problems.append("the network is not wrapped in DistributedDataParallel")
    if device == "cuda" and not result["sync_batchnorm_layers"]:
        problems.append("no SyncBatchNorm layer on CUDA")
    norm = (f"{result['sync_batchnorm_layers']} SyncBatchNorm layers" if device == "cuda"
            else "BatchNorm (SyncBatchNorm is CUDA-only)")
    result.update(problems=problems,
                  summary=f"{result['backend']}, {processes} process{'es' if processes > 1 else ''}: {len(losses)} "
                          f"steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, DDP, {norm}, {seconds:.0f} s")
    return result


def part_torchrun_1(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """torchrun with one process (NCCL on CUDA, gloo on the CPU)."""
    return torchrun_stage1(cfg, 1)


def part_torchrun_2(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """torchrun with two processes on two GPUs: SyncBatchNorm synchronises."""
    return torchrun_stage1(cfg, 2)


def part_torchrun_kd(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """train_kd.py under `torchrun --nproc_per_node 2` at one image per GPU, with random-weight teachers that
    use batch statistics (the default --teacher-bn batch): their SyncBatchNorm normalises over both GPUs'
    images, where plain BatchNorm would fail on a single image."""
    out = cfg.work / "torchrun-kd"
    data = generate_dataset(out / "data", n=cfg.torchrun_steps * 2, seed=3, size=cfg.img_size)
    torch.manual_seed(0)
    teacher = save_checkpoint(model_checkpoint(build_model("dffnet", backbone=cfg.backbone), {}, 0),
                              out / "DFFNet.pth")
    midas = save_checkpoint(model_checkpoint(build_midas(encoder=cfg.midas_encoder, features=cfg.midas_features),
                                             {}, 0), out / "midas.pth")
    train = ["--train-set", f"synthetic:{data}", "--backbone", cfg.backbone, "--pretrained", "none", "--img-size",
             str(cfg.img_size), "--batch-size", "2", "--epochs", "1", "--workers", "2", "--device", "cuda",
             "--teacher", str(teacher), "--depth-teacher", str(midas), "--save", str(out / "D-DFFNet.pth"),
             "--log-dir", str(out / "logs"), "--overwrite"]
    seconds = run_command("torchrun train_kd.py", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   "--nproc_per_node", "2", str(ROOT / "train_kd.py"), *train], cfg)
    with (out / "logs" / "steps.csv").open(newline="") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    problems = [] if losses and all(map(math.isfinite, losses)) else [f"losses {losses}: none, or not finite"]
    return {"losses": losses, "seconds": seconds, "problems": problems,
            "summary": f"stage 2, 2 processes x 1 image, teachers with batch statistics: {len(losses)} steps, "
                       f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, {seconds:.0f} s" if losses else "no steps"}


def part_stage1(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """Stage-1 steps in fp32 and bf16 + channels_last."""
    return speed_rows(cfg, "stage 1", ("fp32", "bf16+cl"))


def part_stage2(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """Stage-2 steps (teachers included) in fp32 and bf16 + channels_last."""
    return speed_rows(cfg, "stage 2", ("fp32", "bf16+cl"))


def part_stage1_compile(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """Stage-1 steps in bf16 + channels_last + torch.compile (the first step compiles)."""
    return speed_rows(cfg, "stage 1", ("bf16+cl+compile",))


def part_stage2_compile(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """Stage-2 steps in bf16 + channels_last + torch.compile (the first step compiles)."""
    return speed_rows(cfg, "stage 2", ("bf16+cl+compile",))


@dataclass(frozen=True)
class ProcessGroupContext(DistributedContext):
    """A torchrun group taken through the multi-process code path even with one process (DDP, SyncBatchNorm
    on CUDA, the all-reduce of the loss terms), which the training scripts skip for a single process."""

    @property
    def enabled(self) -> bool:
        return True


def torchrun_worker(report: Path, argv: list[str]) -> None:
    """One torchrun process: join the group (NCCL on CUDA, gloo on the CPU), then stage 1 exactly as
    train_single.py runs it, through run_stage; rank 0 writes `report`."""
    config = config_from_flags(vars(train_single.parse_args(argv)), TrainConfig)
    device = select_device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    backend = dist.get_backend()
    ctx = start_training(config)
    ctx = ProcessGroupContext(rank=ctx.rank, local_rank=ctx.local_rank, world_size=ctx.world_size, device=ctx.device)
    loader, sampler = make_dbd_loader(config, ctx)
    stage = build_stage1(config, ctx)
    sync_batchnorm = sum(isinstance(module, nn.SyncBatchNorm) for module in stage.network.modules())
    ddp = isinstance(stage.network, nn.parallel.DistributedDataParallel)
    start = time.perf_counter()
    run_stage(stage, config, ctx, loader, sampler, f"gpu_check: stage 1 under torchrun ({backend})")
    if ctx.is_main:
        with (log_dir(config) / "steps.csv").open(newline="") as f:
            losses = [float(row["loss"]) for row in csv.DictReader(f)]
        report.write_text(json.dumps({"backend": backend, "world_size": ctx.world_size, "device": str(ctx.device),
                                      "ddp": ddp, "sync_batchnorm_layers": sync_batchnorm, "losses": losses,
                                      "run_stage_seconds": time.perf_counter() - start}))
