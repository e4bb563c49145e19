"""What the bench scripts share: the machine's description, peak memory, random training batches, and a
training stage built and timed exactly as train_single.py / train_kd.py run it (bench/train_speed.py,
bench/gpu_check.py)."""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from engine.config import DistillConfig, TrainConfig, resolve
from engine.stages import build_feature_distill_stage, build_stage1, prepare_teacher
from engine.train import Stage, train_step
from models import build_midas, build_model
from utils.distributed import DistributedContext


def machine(device: torch.device | None = None) -> dict[str, Any]:
    """Host, CPU model and its AMX / AVX512-BF16 flags, core and thread counts, Python / torch versions, and the
    GPU's name on CUDA."""
    cpu, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
        flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    device = device or torch.device("cpu")
    info = {"host": platform.node(), "cpu": cpu, "amx": "amx_tile" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA allocator peak stats, or the process's peak RSS on Linux."""
    if device.type == "cuda":
        torch.cuda.init()   # the allocator's statistics exist only once CUDA is initialised
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM (peak RSS) to the current RSS
    except OSError:
        pass


def peak_memory_gb(device: torch.device) -> float:
    """CUDA: max_memory_allocated; CPU: peak RSS (VmHWM; ru_maxrss when /proc is absent)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batches(batch: int, size: int, count: int) -> list[dict[str, torch.Tensor]]:
    """`count` training batches of random images and binary masks (on the CPU, as a loader yields them)."""
    generator = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(batch, 3, size, size, generator=generator),
             "mask": (torch.rand(batch, 1, size, size, generator=generator) > 0.5).float()} for _ in range(count)]


def stage_config(cfg: argparse.Namespace, stage_name: str, batch: int, amp: str, channels_last: bool,
                 device: torch.device, compiled: bool = False) -> TrainConfig:
    """The config of "stage 1" or "stage 2" for `cfg.backbone` / `cfg.img_size` from random weights (speed does not
    depend on them), otherwise the scripts' defaults."""
    config_type = TrainConfig if stage_name == "stage 1" else DistillConfig
    return resolve(config_type(backbone=cfg.backbone, pretrained="none", batch_size=batch, img_size=cfg.img_size,
                               amp=amp, device=str(device), channels_last=channels_last, compile=compiled))


def build_stage(stage_name: str, config: TrainConfig, cfg: argparse.Namespace, ctx: DistributedContext) -> Stage:
    """The training stage ("stage 1" or "stage 2") exactly as the scripts build it, with random weights;
    stage 2's teachers are `cfg.backbone` and MiDaS `cfg.midas_encoder` / `cfg.midas_features`."""
    if stage_name == "stage 1":
        return build_stage1(config, ctx)
    teacher = prepare_teacher(build_model("dffnet", backbone=cfg.backbone), config, ctx)
    midas = prepare_teacher(build_midas(encoder=cfg.midas_encoder, features=cfg.midas_features), config, ctx)
    return build_feature_distill_stage(config, ctx, {"defocus": teacher, "depth": midas})


def time_steps(stage: Stage, batches: list[dict[str, torch.Tensor]], config: TrainConfig,
               ctx: DistributedContext, scaler: torch.amp.GradScaler) -> list[float]:
    """Seconds of each `train_step` over `batches` (one step per batch; the device synchronised around each)."""
    stage.network.train()
    source = iter(batches)
    seconds = []
    for _ in batches:
        synchronise(ctx.device)
        start = time.perf_counter()
        train_step(stage, source, 1, config, ctx, scaler)
        synchronise(ctx.device)
        seconds.append(time.perf_counter() - start)
    return seconds


def run_on_one_thread(command: list[str], log: Path) -> None:
    """Run one command from the repository root on one thread, its output in `log`; exit naming it on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}); see {log}")
