"""The optimiser of every trained network (fused Adam), its parameter groups and the learning-rate update."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn


def adam(params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], lr: float,
         weight_decay: float = 0.0) -> torch.optim.Adam:
    """torch.optim.Adam with the fused kernel (CPU and CUDA): the same update, one pass over the weights."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


def encoder_scaled_groups(model: nn.Module, encoder_lr_scale: float) -> list[dict[str, Any]]:
    """Adam's parameter groups for a network with an `encoder`: the encoder learns at `encoder_lr_scale` times
    the learning rate, everything else (decoder, heads) at 1x. A scale of 1 gives one group, as before the
    option existed, so older checkpoints resume."""
    if encoder_lr_scale == 1:
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]
    encoder = {id(p) for p in model.encoder.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) in encoder], "lr_scale": float(encoder_lr_scale)},
            {"params": [p for p in model.parameters() if id(p) not in encoder], "lr_scale": 1.0}]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group of `optimizer` the learning rate `lr`, times the group's `lr_scale` if any."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


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
