"""The optimiser of every trained network (fused Adam) and the per-epoch learning-rate update."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn


def adam(params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """torch.optim.Adam with the fused kernel (CPU and CUDA): the same update, one pass over the weights."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group of `optimizer` the learning rate `lr`."""
    for group in optimizer.param_groups:
        group["lr"] = lr
