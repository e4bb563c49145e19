"""The files this project trained on a CPU and ships in the repository: the real-photo DFFNet (checkpoint/release/)
and the synthetic-depth MiDaS teacher (depth_pretrained/), each described in a MODEL_CARD.md beside it; and the
choice of the default detector."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from utils.checkpoint import CHECKPOINT_FORMAT, read_checkpoint, save_checkpoint

from .weights import unpack_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CHECKPOINT = ROOT / "checkpoint" / "release" / "dffnet_cuhk_cpu.pth"
AUTHORS_CHECKPOINT = Path("checkpoint") / "D-DFFNet.pth"
# the recorded digest of the committed file (tests check it; change it only with the file and its card)
SHIPPED_SHA256 = "9acb362c0ce019d7c70010cf833f25cec71c20bed4a185c203ac61a0c27b3b24"
SHIPPED_DEPTH_TEACHER = ROOT / "depth_pretrained" / "midas_synthetic_cpu.pth"
SHIPPED_DEPTH_TEACHER_SHA256 = "4c7e86acde565798dc3c7e32809d5f50e6f0eeda43dcc5ad5cdfb9701ce78309"


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(path: str | os.PathLike) -> str:
    """One line saying what a checkpoint file is, from the description it carries (if any)."""
    obj = read_checkpoint(path)
    return obj.get("description", "") if isinstance(obj, dict) else ""


def default_detector() -> tuple[Path, str]:
    """The checkpoint test.py and test.sh use without --checkpoint: the authors' D-DFFNet.pth when it is
    present, otherwise the shipped CPU model; with one line saying which and what it is."""
    if AUTHORS_CHECKPOINT.is_file():
        return AUTHORS_CHECKPOINT, f"using {AUTHORS_CHECKPOINT} (the authors' D-DFFNet, as found)"
    relative = SHIPPED_CHECKPOINT.relative_to(ROOT)
    description = describe(SHIPPED_CHECKPOINT)
    card = "" if "MODEL_CARD.md" in description else f"; see {relative.parent}/MODEL_CARD.md"
    return SHIPPED_CHECKPOINT, f"using {relative}: {description} ({AUTHORS_CHECKPOINT} is absent{card})"


def export_release(training_checkpoint: str | os.PathLike, out: str | os.PathLike, description: str) -> Path:
    """Write the model of a training checkpoint for shipping: weights stored in fp16 (they load into float32),
    the model and training configuration, the epoch and a one-line description; no optimiser state."""
    obj = read_checkpoint(training_checkpoint)
    state, metadata = unpack_checkpoint(obj, Path(training_checkpoint))
    if "model_config" not in metadata:
        raise ValueError(f"{training_checkpoint}: not a checkpoint of this code (no model configuration)")
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    shipped: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "model": half, "model_config": metadata["model_config"],
                               "config": metadata.get("config", {}), "epoch": metadata.get("epoch"),
                               "description": description, "storage": "float16 weights, load into float32"}
    return save_checkpoint(shipped, out)

