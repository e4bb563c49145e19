"""The parts of bench/gpu_check.py that check the machine, the data path, test.py and demo.sh, with the
constants and helpers all parts share. Each part takes the settings and the finished parts' entries and
returns its results (with a one-line "summary"; a non-empty "problems" list marks it failed); an exception
also marks it failed."""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import torch
import torch.distributed as dist
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from datasets.files import HOMOGENEOUS_DIR  # noqa: E402
from datasets.synthetic import generate_dataset  # noqa: E402
from engine.config import TrainConfig, resolve  # noqa: E402
from engine.stages import make_dbd_loader  # noqa: E402
from models import DBDOutput, build_midas, build_model  # noqa: E402
from utils.checkpoint import model_checkpoint, save_checkpoint  # noqa: E402
from utils.distributed import DistributedContext  # noqa: E402
from utils.runtime import select_device  # noqa: E402

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


def driver_version() -> str:
    """The NVIDIA driver's version from nvidia-smi ("unknown" without it)."""
    if not shutil.which("nvidia-smi"):
        return "unknown (no nvidia-smi)"
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True)
    return smi.stdout.splitlines()[0].strip() if smi.returncode == 0 and smi.stdout else "unknown"


# ----------------------------------------------------------------------------------------------
# the parts


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
    config = resolve(TrainConfig(train_set=expression, img_size=cfg.img_size, batch_size=cfg.batch, device=cfg.device))
    loader, sampler = make_dbd_loader(config, DistributedContext(rank=0, local_rank=0, world_size=1,
                                                                 device=device_of(cfg)))
    sampler.set_epoch(1)
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)
    first = time.perf_counter() - start
    count = 1 + sum(1 for _ in batches)
    per_batch = (time.perf_counter() - start - first) / (count - 1)
    return {"workers": config.workers, "pin_memory": loader.pin_memory, "batch": cfg.batch, "batches": count,
            "first_batch_seconds": first, "seconds_per_batch": per_batch, "images_per_second": cfg.batch / per_batch,
            "summary": f"{config.workers} workers: {per_batch:.3f} s per batch of {cfg.batch} "
                       f"({cfg.batch / per_batch:.0f} img/s), first batch after {first:.1f} s"}


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
