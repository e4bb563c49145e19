"""Device selection, seeding and the one mixed-precision context used by training and evaluation."""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from utils.errors import RunError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else the CPU; any torch device string is accepted (RunError otherwise)."""
    if name == "auto":
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {name}: CUDA is not available on this machine")
    return device


def use_device(device: torch.device) -> None:
    """Make an indexed CUDA device the current one, so that nothing (pinned-memory threads, cuBLAS) opens a
    context on GPU 0 when the run is on another GPU; a no-op elsewhere."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def autocast(device: torch.device, amp: str = "off") -> contextlib.AbstractContextManager:
    """Mixed-precision context for `--amp off|bf16|fp16` (fp16 is CUDA-only)."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    check_amp(amp, device)
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_amp(amp: str, device: torch.device) -> None:
    """Raise RunError, naming --amp, when `amp` cannot run on `device` (fp16 is CUDA-only)."""
    if AMP_DTYPES[amp] is torch.float16 and device.type != "cuda":
        raise RunError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast runs in hardware here: a CUDA GPU with bf16 support, or a CPU with
    AVX512-BF16 / AMX (elsewhere it is emulated and several times slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


CUBLAS_WORKSPACE = ":4096:8"


def use_deterministic_algorithms() -> None:
    """`--deterministic`: deterministic algorithms only (an op without one raises), and the cuBLAS workspace
    setting they need (CUBLAS_WORKSPACE_CONFIG, kept when already set). Call before any CUDA work."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)


def configure_backends(device: torch.device, deterministic: bool = False) -> None:
    """cudnn benchmark (the authors' setting) unless a deterministic run is asked for."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
