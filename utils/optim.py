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


@torch.no_grad()
def clip_grad_value(params: Iterable[nn.Parameter], clip: float) -> None:
    """nn.utils.clip_grad_value_ (every gradient clamped to [-clip, clip] in place), the same values. On the
    CPU each gradient is clamped in one pass: torch's version makes two there (its for-each clamp_min_ and
    clamp_max_ fall back to one sweep each over all the gradients). Elsewhere torch's for-each kernels run."""
    params = [p for p in params if p.grad is not None]
    on_cpu = [p.grad for p in params if p.grad.device.type == "cpu"]
    for grad in on_cpu:
        grad.clamp_(min=-float(clip), max=float(clip))
    if len(on_cpu) < len(params):
        nn.utils.clip_grad_value_([p for p in params if p.grad.device.type != "cpu"], clip)
