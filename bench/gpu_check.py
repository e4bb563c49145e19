"""One-command GPU check: CUDA correctness, paper-scale training speed and the projected full-run time,
fp16 with the gradient scaler, torchrun with SyncBatchNorm, test.py and demo.sh, all in a few minutes.

    bash bench/gpu_check.sh                           # on a CUDA machine: at most 8 minutes
    python bench/gpu_check.py --device cpu --quick    # every part that runs without CUDA, tiny sizes (CI)
    python bench/gpu_check.py --parts env stage1      # only some parts

No data set or weight file is needed: synthetic data and random weights throughout. The parts, in order:
  env              GPU, driver, torch, CUDA, cuDNN and NCCL versions
  correctness      DFFNet (resnest101e) and MiDaS (ResNeXt-101) forward on the CPU and on CUDA with the same
                   weights and input, fp32 with TF32 off, then on: max|a - b| / max|a| of the logits / depth
                   and of the encoder features                                                   [CUDA]
  fp16             20 stage-1 steps with fp16 autocast and the gradient scaler at the paper's learning rate:
                   every loss finite; the scaler's scale and skipped steps                       [CUDA]
  torchrun-1       `torchrun --nproc_per_node 1`: stage 1 for 3 steps through the training loop (run_stage),
                   the multi-process path forced on: DDP, SyncBatchNorm, NCCL (gloo, BatchNorm on a CPU);
                   with one process PyTorch's SyncBatchNorm falls back to plain batch norm
  torchrun-2       the same with 2 processes, where SyncBatchNorm synchronises                 [2 GPUs]
  data             a synthetic set of CUHK's image size, 640x427 JPEG
  loader           the real training loader over it (augmentation, default workers, pinned memory on CUDA)
  stage1, stage2   train_step at the paper's scale (320x320, batch 6, resnest101e, MiDaS ResNeXt-101) in
                   fp32 and in bf16 + channels_last: s/step, images/s, peak memory, checkpoint write time
  test.py          test.py's images/s at batch 8 on the synthetic set, model and metrics on the device
  stage1-compile,  the same steps in bf16 + channels_last + torch.compile (the scripts' --compile)
  stage2-compile
  demo             demo.sh's run time (what `make demo` runs)                                   [CUDA]
Each part runs in its own forked process (and process group) with its own timeout, inside an overall
budget (--budget, 8 minutes): a part that fails, crashes or times out is reported and the rest still run.
From the stage rows and the loader the script projects the wall time of the paper's run (74 epochs x 100
steps per stage on CUHK-TR-1's 604 images, batch 6; loader and per-epoch checkpoint included) and prints
it beside the paper's "both stages under 2 hours on one RTX 3090".

--quick: resnest14d, MiDaS resnet18, 64x64, batch 2, 8 images of 96x64; its numbers only show that the
script works. Under --quick the compile parts run only when named in --parts (an inductor compile of the
training step takes minutes on a CPU). Writes bench/results/gpu_check.json (gpu_check_quick.json with
--quick), one entry per part with its status (ok | failed | skipped), reason, seconds and results, and
each part's log in bench/results/gpu_check[_quick]_logs/.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import importlib.util
import json
import math
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import torch
import torch.distributed as dist
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train_single  # noqa: E402
from bench.common import (build_stage, machine, peak_memory_gb, random_batches, reset_peak_memory,  # noqa: E402
                          stage_argv, time_steps)
from datasets.files import HOMOGENEOUS_DIR  # noqa: E402
from datasets.synthetic import generate_dataset  # noqa: E402
from engine.options import log_dir  # noqa: E402
from engine.stages import build_stage1  # noqa: E402
from engine.train import (Stage, make_train_loader, rng_state, run_stage, start_training, train_step,  # noqa: E402
                          training_checkpoint)
from models import DBDOutput, build_midas, build_model  # noqa: E402
from utils.checkpoint import model_checkpoint, save_checkpoint  # noqa: E402
from utils.distributed import DistributedContext, EpochShuffleSampler  # noqa: E402
from utils.optim import set_lr  # noqa: E402
from utils.runtime import configure_backends, select_device  # noqa: E402
from utils.schedule import poly_lr  # noqa: E402

PAPER_EPOCHS = 74                  # the authors' `--epoch 75` runs epochs 1..74
CUHK_TR_IMAGES = 604
STEPS_PER_EPOCH = CUHK_TR_IMAGES // 6
PAPER_HOURS = 2.0                  # "both stages under 2 hours on one RTX 3090"
CUHK_ASPECT = 427 / 640
PRECISIONS = {"fp32": ("off", False, False), "bf16+cl": ("bf16", True, False),
              "bf16+cl+compile": ("bf16", True, True)}   # amp, channels_last, torch.compile
FP32_TOLERANCE = 1e-3              # max|cpu - cuda| / max|cpu| with TF32 off
TF32_TOLERANCE = 5e-2              # the same with TF32 on (10-bit mantissa in matmuls and convolutions)
FP16_STEPS = 20
TEST_BATCH = 8
COMMAND_GRACE = 15                 # s between SIGTERM to torchrun / demo.sh and the part's own deadline
SIZES = {
    False: {"backbone": "resnest101e", "midas_encoder": "resnext101_32x8d", "midas_features": 256, "img_size": 320,
            "batch": 6, "warmup": 3, "steps": 5, "data_images": 120, "data_width": 640, "data_workers": 8,
            "torchrun_steps": 3},
    True: {"backbone": "resnest14d", "midas_encoder": "resnet18", "midas_features": 64, "img_size": 64,
           "batch": 2, "warmup": 1, "steps": 1, "data_images": 8, "data_width": 96, "data_workers": 1,
           "torchrun_steps": 2},
}
TORCHRUN_WORKER = "--torchrun-worker"


# ----------------------------------------------------------------------------------------------
# helpers of the parts


def device_of(cfg: argparse.Namespace) -> torch.device:
    """The device the parts run on (resolved by the env part)."""
    return torch.device(cfg.device)


def relative_difference(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    """max |reference - other| / max |reference| over lists of tensors of the same shapes."""
    error = max((r - o).abs().max().item() for r, o in zip(reference, other))
    return error / max(r.abs().max().item() for r in reference)


def network_outputs(network: nn.Module, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """DFFNet's logits or MiDaS's depth, and the encoder features, of one inference forward (on the CPU)."""
    with torch.inference_mode():
        out = network(images)
    final = {"logits": [out.logits.cpu()]} if isinstance(out, DBDOutput) else {"depth": [out.depth.cpu()]}
    return {**final, "features": [f.cpu() for f in out.features]}


def checkpoint_seconds(stage: Stage, args: argparse.Namespace, scaler: torch.amp.GradScaler, path: Path) -> float:
    """Time to write the stage's per-epoch training checkpoint (weights, Adam states, RNG), as `fit` does."""
    sampler = EpochShuffleSampler(CUHK_TR_IMAGES, args.batch_size)
    device = next(stage.dbd_model.parameters()).device
    start = time.perf_counter()
    save_checkpoint(training_checkpoint(stage, args, 1, sampler, scaler, None, [rng_state(device)]), path)
    seconds = time.perf_counter() - start
    path.unlink()
    return seconds


def measure_row(cfg: argparse.Namespace, stage_name: str, precision: str, checkpoint: Path | None) -> dict[str, Any]:
    """Build the stage as the scripts do, run cfg.warmup + cfg.steps steps on random batches, report the
    median step, the first (warm-up / compile) step and the peak memory; optionally time a checkpoint."""
    amp, channels_last, compiled = PRECISIONS[precision]
    device = device_of(cfg)
    ctx = DistributedContext(rank=0, local_rank=0, world_size=1, device=device)
    argv = stage_argv(cfg, cfg.batch, amp, channels_last, device) + (["--compile"] if compiled else [])
    reset_peak_memory(device)
    torch.manual_seed(0)
    stage, args = build_stage(stage_name, argv, cfg, ctx)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    seconds = time_steps(stage, random_batches(cfg.batch, cfg.img_size, cfg.warmup + cfg.steps), args, ctx, scaler)
    step = statistics.median(seconds[cfg.warmup:])
    row = {"stage": stage_name, "precision": precision, "batch": cfg.batch, "img_size": cfg.img_size,
           "seconds_per_step": step, "first_step_seconds": seconds[0], "step_seconds": seconds,
           "images_per_second": cfg.batch / step, "peak_memory_gb": peak_memory_gb(device)}
    if checkpoint is not None:
        row["checkpoint_seconds"] = checkpoint_seconds(stage, args, scaler, checkpoint)
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


def run_command(name: str, command: list[str], cfg: argparse.Namespace, env: dict[str, str] | None = None) -> float:
    """Run `command` (output into this part's log); SIGTERM it COMMAND_GRACE s before the part's deadline, so
    that torchrun can stop its workers, and SIGKILL it if it is still there 5 s before. Returns its seconds."""
    timeout = cfg.deadline - time.monotonic() - COMMAND_GRACE
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        code = process.wait(max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(COMMAND_GRACE - 5)
        except subprocess.TimeoutExpired:
            process.kill()
        raise TimeoutError(f"{name} still running after {timeout:.0f} s; stopped") from None
    if code:
        raise RuntimeError(f"{name} exited with code {code} (see the log)")
    return time.perf_counter() - start


def crop_rows(root: Path, height: int) -> None:
    """Crop every image, mask, depth map and region mask of a square synthetic set to its central `height`
    rows."""
    for folder in ("image", "gt", "depth", HOMOGENEOUS_DIR):
        for path in (root / folder).iterdir():
            data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            top = (data.shape[0] - height) // 2
            params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
            if not cv2.imwrite(str(path), data[top:top + height], params):
                raise OSError(f"cannot write {path}")


def load_test_script() -> Any:
    """test.py as a module (its name clashes with the standard library's `test` package)."""
    spec = importlib.util.spec_from_file_location("test_script", ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------
# the parts: each takes the settings and the finished parts' entries, and returns its results (with a
# one-line "summary"; a non-empty "problems" list marks it failed); an exception also marks it failed


def driver_version() -> str:
    """The NVIDIA driver's version from nvidia-smi ("unknown" without it)."""
    if not shutil.which("nvidia-smi"):
        return "unknown (no nvidia-smi)"
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True)
    return smi.stdout.splitlines()[0].strip() if smi.returncode == 0 and smi.stdout else "unknown"


def part_env(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """Versions and devices; resolves --device auto."""
    device = select_device(cfg.device)
    info = machine(device)
    info.update(cuda_devices=torch.cuda.device_count(), torch_cuda=torch.version.cuda)
    if not torch.cuda.is_available():
        info["summary"] = f"no CUDA: {info['cpu']} ({info['cpu_count']} cores), torch {torch.__version__}"
        return info
    nccl = torch.cuda.nccl.version() if dist.is_nccl_available() else "absent"
    properties = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    info.update(driver=driver_version(), cudnn=torch.backends.cudnn.version(),
                nccl=".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl),
                gpus=[{"name": p.name, "memory_gb": p.total_memory / 1e9, "capability": f"{p.major}.{p.minor}"}
                      for p in properties])
    gpu = info["gpus"][0]
    info["summary"] = (f"{len(properties)} x {gpu['name']} ({gpu['memory_gb']:.0f} GB, sm {gpu['capability']}), "
                       f"driver {info['driver']}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
                       f"cuDNN {info['cudnn']}, NCCL {info['nccl']}")
    return info


def part_correctness(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """CPU vs CUDA forward of DFFNet and MiDaS (eval mode, same weights and input), TF32 off then on."""
    torch.manual_seed(0)
    networks = {"DFFNet": build_model("dffnet", backbone=cfg.backbone).eval(),
                "MiDaS": build_midas(encoder=cfg.midas_encoder, features=cfg.midas_features).eval()}
    images = torch.randn(2, 3, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(0))
    reference = {name: network_outputs(network, images) for name, network in networks.items()}
    device = device_of(cfg)
    differences: dict[str, float] = {}
    problems = []
    for tf32, tolerance in ((False, FP32_TOLERANCE), (True, TF32_TOLERANCE)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        mode = "tf32" if tf32 else "fp32"
        for name, network in networks.items():
            outputs = network_outputs(network.to(device), images.to(device))
            for key, tensors in outputs.items():
                label = f"{name} {key}"
                differences[f"{label}, {mode}"] = value = relative_difference(reference[name][key], tensors)
                if not value <= tolerance:
                    problems.append(f"{label} ({mode}) differs by {value:.2e} > {tolerance:.0e}")
    worst = {mode: max(v for k, v in differences.items() if k.endswith(mode)) for mode in ("fp32", "tf32")}
    return {"max_relative_difference": differences, "tolerance": {"fp32": FP32_TOLERANCE, "tf32": TF32_TOLERANCE},
            "problems": problems,
            "summary": f"CPU vs CUDA, worst of logits / depth / features: fp32 {worst['fp32']:.1e}, "
                       f"TF32 {worst['tf32']:.1e}"}


def part_fp16(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """FP16_STEPS stage-1 steps in fp16 autocast with the GradScaler, lr of epoch 1 (train_step raises on a
    non-finite loss)."""
    device = device_of(cfg)
    configure_backends(device)
    ctx = DistributedContext(rank=0, local_rank=0, world_size=1, device=device)
    torch.manual_seed(0)
    stage, args = build_stage("stage 1", stage_argv(cfg, cfg.batch, "fp16", False, device), cfg, ctx)
    set_lr(stage.optimizer, poly_lr(1, args.lr, args.schedule_epochs, args.lr_power))
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")   # as engine.train.run_stage
    stage.network.train()
    batches = iter(random_batches(cfg.batch, cfg.img_size, FP16_STEPS))
    scales, losses = [scaler.get_scale()], []
    for _ in range(FP16_STEPS):
        losses.append(train_step(stage, batches, 1, args, ctx, scaler)["loss"])
        scales.append(scaler.get_scale())
    skipped = sum(after < before for before, after in zip(scales, scales[1:]))
    problems = ["every step skipped: the gradients overflow at every scale"] if skipped == FP16_STEPS else []
    return {"steps": FP16_STEPS, "lr": args.lr, "losses": losses, "scales": scales, "skipped_steps": skipped,
            "problems": problems,
            "summary": f"{FP16_STEPS} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, all finite; scale "
                       f"{scales[0]:.0f} -> {scales[-1]:.0f} ({skipped} skipped)"}


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
               str(Path(__file__).resolve()), TORCHRUN_WORKER, str(report), *train]
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


def part_data(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """A synthetic set at CUHK's image size: rendered square, JPEG like CUHK, cropped to 640x427."""
    width, height = cfg.data_width, round(cfg.data_width * CUHK_ASPECT)
    start = time.perf_counter()
    path = generate_dataset(cfg.work / "cuhk_size", n=cfg.data_images, seed=0, size=width,
                            workers=min(cfg.data_workers, os.cpu_count() or 1), image_format="jpg")
    crop_rows(path, height)
    seconds = time.perf_counter() - start
    return {"path": str(path), "images": cfg.data_images, "width": width, "height": height, "seconds": seconds,
            "summary": f"{cfg.data_images} synthetic images {width}x{height} (JPEG) in {seconds:.1f} s"}


def part_loader(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """One epoch of train_single.py's loader (default workers) over at least CUHK-TR-1's 604 images (the
    synthetic set repeated): time to the first batch, then seconds per batch."""
    data = done["data"]["results"]
    expression = "+".join([f"synthetic:{data['path']}"] * math.ceil(CUHK_TR_IMAGES / data["images"]))
    args = train_single.parse_args(["--train-set", expression, "--img-size", str(cfg.img_size),
                                    "--batch-size", str(cfg.batch), "--device", cfg.device])
    loader, sampler = make_train_loader(args, DistributedContext(rank=0, local_rank=0, world_size=1,
                                                                 device=device_of(cfg)))
    sampler.set_epoch(1)
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)
    first = time.perf_counter() - start
    count = 1 + sum(1 for _ in batches)
    per_batch = (time.perf_counter() - start - first) / (count - 1)
    return {"workers": args.workers, "pin_memory": loader.pin_memory, "batch": cfg.batch, "batches": count,
            "first_batch_seconds": first, "seconds_per_batch": per_batch, "images_per_second": cfg.batch / per_batch,
            "summary": f"{args.workers} workers: {per_batch:.3f} s per batch of {cfg.batch} "
                       f"({cfg.batch / per_batch:.0f} img/s), first batch after {first:.1f} s"}


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


def part_test_py(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """test.py (its defaults, batch TEST_BATCH) on the synthetic set with a random-weight DFFNet checkpoint;
    the second of two runs is timed (the first warms up cuDNN and the file cache)."""
    data = done["data"]["results"]
    out = cfg.work / "test_py"
    torch.manual_seed(0)
    checkpoint = save_checkpoint(model_checkpoint(build_model("dffnet", backbone=cfg.backbone), {}, 0),
                                 out / "DFFNet.pth")
    argv = ["--checkpoint", str(checkpoint), "--dataset", f"synthetic:{data['path']}", "--batch-size",
            str(TEST_BATCH), "--img-size", str(cfg.img_size), "--device", cfg.device, "--grid", "0",
            "--out", str(out / "results")]
    test_script = load_test_script()
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        if test_script.main(argv):
            raise RuntimeError("test.py returned an error (see the log)")
        seconds.append(time.perf_counter() - start)
    rate = data["images"] / seconds[-1]
    return {"images": data["images"], "batch": TEST_BATCH, "seconds": seconds, "images_per_second": rate,
            "summary": f"{rate:.1f} img/s at batch {TEST_BATCH} ({data['images']} images "
                       f"{data['width']}x{data['height']}, checkpoint loading included)"}


def part_demo(cfg: argparse.Namespace, done: dict[str, dict]) -> dict[str, Any]:
    """demo.sh at its defaults (the scripts pick CUDA), with this interpreter, output in the work folder."""
    env = {**os.environ, "PYTHON": sys.executable, "DEMO_OUT": str(cfg.work / "demo")}
    seconds = run_command("demo.sh", ["bash", str(ROOT / "demo.sh")], cfg, env)
    return {"seconds": seconds, "summary": f"demo.sh (make demo) on CUDA: {seconds / 60:.1f} min"}


@dataclass(frozen=True)
class Part:
    """A part of the check: what runs, its timeout in seconds, what it requires ("cuda", "2 gpus") and
    which parts must have succeeded before it."""

    name: str
    run: Callable[[argparse.Namespace, dict[str, dict]], dict[str, Any]]
    timeout: float
    requires: str | None = None
    needs: tuple[str, ...] = ()


PARTS = (
    Part("env", part_env, 60),
    Part("correctness", part_correctness, 90, requires="cuda"),
    Part("fp16", part_fp16, 60, requires="cuda"),
    Part("torchrun-1", part_torchrun_1, 90),
    Part("torchrun-2", part_torchrun_2, 90, requires="2 gpus"),
    Part("data", part_data, 60),
    Part("loader", part_loader, 60, needs=("data",)),
    Part("stage1", part_stage1, 75),
    Part("stage2", part_stage2, 90),
    Part("test.py", part_test_py, 60, needs=("data",)),
    Part("stage1-compile", part_stage1_compile, 150),
    Part("stage2-compile", part_stage2_compile, 150),
    Part("demo", part_demo, 240, requires="cuda"),
)
COMPILE_PARTS = ("stage1-compile", "stage2-compile")


# ----------------------------------------------------------------------------------------------
# running the parts


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
    args = train_single.parse_args(argv)
    device = select_device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    backend = dist.get_backend()
    ctx = start_training(args)
    ctx = ProcessGroupContext(rank=ctx.rank, local_rank=ctx.local_rank, world_size=ctx.world_size, device=ctx.device)
    loader, sampler = make_train_loader(args, ctx)
    stage = build_stage1(args, ctx)
    sync_batchnorm = sum(isinstance(module, nn.SyncBatchNorm) for module in stage.network.modules())
    ddp = isinstance(stage.network, nn.parallel.DistributedDataParallel)
    start = time.perf_counter()
    run_stage(stage, args, ctx, loader, sampler, f"gpu_check: stage 1 under torchrun ({backend})")
    if ctx.is_main:
        with (log_dir(args) / "steps.csv").open(newline="") as f:
            losses = [float(row["loss"]) for row in csv.DictReader(f)]
        report.write_text(json.dumps({"backend": backend, "world_size": ctx.world_size, "device": str(ctx.device),
                                      "ddp": ddp, "sync_batchnorm_layers": sync_batchnorm, "losses": losses,
                                      "run_stage_seconds": time.perf_counter() - start}))


def _part_process(part: Part, cfg: argparse.Namespace, done: dict[str, dict], result: Path, log: Path) -> None:
    """Body of a part's forked process: own process group, output into the log, result (or error) as JSON."""
    os.setpgid(0, 0)
    stream = log.open("w", buffering=1)
    os.dup2(stream.fileno(), 1)   # subprocesses and C code
    os.dup2(stream.fileno(), 2)
    sys.stdout = sys.stderr = stream
    try:
        payload = {"results": part.run(cfg, done)}
    except (Exception, SystemExit) as error:
        traceback.print_exc()
        payload = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
    stream.flush()
    result.write_text(json.dumps(payload, default=str))


def skip_reason(part: Part, cfg: argparse.Namespace, done: dict[str, dict], left: float) -> str | None:
    """Why `part` does not run, or None."""
    if cfg.parts and part.name not in cfg.parts and part.name != "env":
        return "not selected (--parts)"
    if cfg.quick and part.name in COMPILE_PARTS and part.name not in cfg.parts:
        return "--quick: an inductor compile takes minutes on a CPU (name it in --parts to run it)"
    if part.requires and not cfg.device.startswith("cuda"):
        return "no CUDA"
    if part.requires == "2 gpus" and cfg.gpus < 2:
        return f"needs 2 GPUs, found {cfg.gpus}"
    for need in part.needs:
        if done.get(need, {}).get("status") != "ok":
            return f"needs the {need} part, which did not succeed"
    if left < 10:
        return f"the {cfg.budget:.0f} s budget is used up"
    return None


def run_part(part: Part, cfg: argparse.Namespace, done: dict[str, dict], left: float) -> dict[str, Any]:
    """Run one part in a forked process with timeout min(part.timeout, left); returns its JSON entry.
    This process never initialises CUDA (the env part reads the devices), so each forked part can."""
    reason = skip_reason(part, cfg, done, left)
    if reason:
        return {"status": "skipped", "reason": reason}
    timeout = min(part.timeout, left)
    result, log = cfg.work / f"{part.name}.result.json", cfg.logs / f"{part.name}.log"
    cfg.deadline = time.monotonic() + timeout   # read by run_command in the part's process
    sys.stdout.flush()
    sys.stderr.flush()
    process = multiprocessing.get_context("fork").Process(target=_part_process, args=(part, cfg, done, result, log))
    start = time.monotonic()
    process.start()
    with contextlib.suppress(OSError):
        os.setpgid(process.pid, process.pid)
    try:
        process.join(timeout)
    finally:
        timed_out = process.is_alive()
        with contextlib.suppress(ProcessLookupError):
            if timed_out:   # SIGTERM first: torchrun stops its workers on it
                os.killpg(process.pid, signal.SIGTERM)
                process.join(5)
            os.killpg(process.pid, signal.SIGKILL)   # the part, or anything it left behind
        process.join()
    entry: dict[str, Any] = {"seconds": round(time.monotonic() - start, 1), "timeout": round(timeout), "log": str(log)}
    if timed_out:
        cut = f" (the rest of the {cfg.budget:.0f} s budget)" if timeout < part.timeout else ""
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s{cut}", **entry}
    if not result.exists():
        return {"status": "failed", "reason": f"its process died (exit code {process.exitcode})", **entry}
    payload = json.loads(result.read_text())
    if "error" in payload:
        return {"status": "failed", "reason": payload["error"], **entry}
    problems = payload["results"].pop("problems", [])
    return {"status": "failed" if problems else "ok", "reason": "; ".join(problems), **entry,
            "results": payload["results"]}


def project_full_run(parts: dict[str, dict]) -> dict[str, Any]:
    """Hours of the paper's run per precision: per stage 74 x (first batch + 100 x max(step, loader batch) +
    checkpoint) plus the one-off extra of the first step (cuDNN autotuning, compilation)."""
    loader = parts["loader"].get("results")
    if loader is None:
        return {"reason": "needs the loader part"}
    rows = {(row["stage"], row["precision"]): (row, part["results"]["checkpoint_seconds"])
            for part in parts.values() if "rows" in part.get("results", {}) for row in part["results"]["rows"]}
    hours = {}
    for precision in PRECISIONS:
        if not all((stage, precision) in rows for stage in ("stage 1", "stage 2")):
            continue
        per_stage = {}
        for stage in ("stage 1", "stage 2"):
            row, checkpoint = rows[(stage, precision)]
            step = max(row["seconds_per_step"], loader["seconds_per_batch"])
            epoch = loader["first_batch_seconds"] + STEPS_PER_EPOCH * step + checkpoint
            per_stage[stage] = (PAPER_EPOCHS * epoch + row["first_step_seconds"] - row["seconds_per_step"]) / 3600
        fastest_step = min(rows[(stage, precision)][0]["seconds_per_step"] for stage in per_stage)
        hours[precision] = {**per_stage, "both": sum(per_stage.values()),
                            "loader_bound": fastest_step < loader["seconds_per_batch"]}
    return {"epochs": PAPER_EPOCHS, "steps_per_epoch": STEPS_PER_EPOCH, "hours": hours, "paper_hours": PAPER_HOURS,
            "paper": "both stages under 2 hours on one RTX 3090"}


def print_entry(entry: dict[str, Any]) -> None:
    """The rest of a part's summary line: status, seconds, and its summary or the reason."""
    text = entry["results"]["summary"] if entry["status"] == "ok" else entry["reason"]
    seconds = f"{entry['seconds']:.0f} s" if "seconds" in entry else ""
    print(f"{entry['status']:7} {seconds:>6}  {text}", flush=True)


def print_projection(projection: dict[str, Any], quick: bool) -> None:
    """The projected hours per precision beside the paper's figure."""
    if "hours" not in projection:
        print(f"projected full run: not available ({projection['reason']})")
        return
    print(f"projected full run ({PAPER_EPOCHS} epochs x {STEPS_PER_EPOCH} steps per stage, loader and checkpoints "
          f"included{'; --quick: tiny networks, not comparable' if quick else ''}):")
    for precision, h in projection["hours"].items():
        print(f"  {precision:16} stage 1 {h['stage 1']:.2f} h + stage 2 {h['stage 2']:.2f} h = {h['both']:.2f} h"
              + ("   (loader-bound)" if h["loader_bound"] else ""))
    print(f"  paper: {projection['paper']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags plus the sizes of SIZES[--quick]; main and run_part fill in `work`, `deadline` and the
    device and GPU count found by the env part."""
    summary, details = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(description=summary, epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when present; cpu skips the CUDA-only parts")
    parser.add_argument("--quick", action="store_true", help="tiny networks and images: checks that the script works")
    parser.add_argument("--parts", nargs="+", choices=[p.name for p in PARTS], default=[], metavar="PART",
                        help="run only these parts (default: all; env always runs), from: "
                             + " ".join(p.name for p in PARTS))
    parser.add_argument("--budget", type=float, default=480, help="overall seconds; parts beyond it are skipped")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/gpu_check[_quick].json)")
    cfg = parser.parse_args(argv)
    vars(cfg).update(SIZES[cfg.quick])
    cfg.out = Path(cfg.out or ROOT / "bench" / "results" / f"gpu_check{'_quick' if cfg.quick else ''}.json")
    cfg.logs = cfg.out.with_name(f"{cfg.out.stem}_logs")
    cfg.gpus = 0
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Run the parts in order, print their lines and the projection, write the JSON; 1 if a part failed."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [TORCHRUN_WORKER]:
        torchrun_worker(Path(argv[1]), argv[2:])
        return 0
    cfg = parse_args(argv)
    requested = cfg.device
    cfg.logs.mkdir(parents=True, exist_ok=True)
    for old in cfg.logs.glob("*.log"):
        old.unlink()
    cfg.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    print(f"GPU check: device {requested}{', --quick' if cfg.quick else ''}, {cfg.backbone} at {cfg.img_size}x"
          f"{cfg.img_size}, batch {cfg.batch}, budget {cfg.budget:.0f} s; part logs in {cfg.logs}/", flush=True)
    start = time.monotonic()
    parts: dict[str, dict] = {}
    try:
        for part in PARTS:
            print(f"{part.name:15} ", end="", flush=True)   # the line is completed when the part ends
            parts[part.name] = entry = run_part(part, cfg, parts, cfg.budget - (time.monotonic() - start))
            if part.name == "env":
                env = entry.get("results", {})
                cfg.device = env.get("device", "cpu") if requested == "auto" else requested
                cfg.gpus = env.get("cuda_devices", 0)
            print_entry(entry)
    finally:
        shutil.rmtree(cfg.work, ignore_errors=True)
    projection = project_full_run(parts)
    print_projection(projection, cfg.quick)
    failed = [name for name, entry in parts.items() if entry["status"] == "failed"]
    report = {"command": [sys.executable, *sys.argv], "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "device": cfg.device, "quick": cfg.quick, "budget_seconds": cfg.budget,
              "seconds": round(time.monotonic() - start, 1),
              "sizes": {key: getattr(cfg, key) for key in SIZES[cfg.quick]}, "parts": parts, "projection": projection,
              "failed": failed}
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(report, indent=1))
    print(f"{len(failed)} part(s) failed{': ' + ', '.join(failed) if failed else ''}; "
          f"{report['seconds']:.0f} s in all; wrote {cfg.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
