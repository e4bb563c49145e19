"""torch.hub entry points: the real-photo DFFNet this repository ships, and the paper's DFFNet and D-DFFNet from
a checkpoint file. Each returns the network in eval mode; `models.predict` turns a photo into its map:

    from models import predict
    model = torch.hub.load("path/to/this/clone", "dffnet_cpu", source="local")
    in_focus = predict(model, "photo.jpg")   # float32 H x W in [0, 1], white = in-focus
"""
from __future__ import annotations

import os

import torch

from models import load_model as _load_model
from models.shipped import SHIPPED_CHECKPOINT
from utils.checkpoint import CheckpointError as _CheckpointError

dependencies = ["torch", "torchvision", "timm", "numpy", "PIL", "cv2", "huggingface_hub", "tqdm"]


def dffnet_cpu(device: str | torch.device = "cpu") -> torch.nn.Module:
    """The DFFNet this repository trained on CUHK photos on a CPU and ships (checkpoint/release/MODEL_CARD.md)."""
    return _load_model(SHIPPED_CHECKPOINT, map_location=device, detector_only=True).eval()


def _paper_model(entry: str, checkpoint: str | os.PathLike | None, file_name: str, written_by: str,
                 device: str | torch.device) -> torch.nn.Module:
    if checkpoint is None:
        raise _CheckpointError(f"{entry}: give checkpoint=PATH, the authors' {file_name} (on the README page of "
                               f"their repository, yuxinjin-whu/D-DFFNet on GitHub) or a file {written_by} wrote")
    return _load_model(checkpoint, name="dffnet", map_location=device, detector_only=True).eval()


def dffnet(checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The paper's DFFNet (stage 1) from `checkpoint`: the authors' DFFNet.pth or a file train_single.py wrote."""
    return _paper_model("dffnet", checkpoint, "DFFNet.pth", "train_single.py", device)


def d_dffnet(checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The paper's D-DFFNet (DFFNet distilled from a depth model, stage 2) from `checkpoint`: the authors'
    D-DFFNet.pth or a file train_kd.py wrote."""
    return _paper_model("d_dffnet", checkpoint, "D-DFFNet.pth", "train_kd.py", device)
