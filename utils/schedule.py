"""The authors' per-epoch schedules (docs/REPRODUCTION.md, sections 4-5 and quirks 1 and 4).

Epochs are numbered 1, 2, ... as in the authors' loop `for epoch in range(1, opt.epoch)`. Their
`--epoch 75` therefore runs 74 epochs while both schedules keep 75 as `max_epochs`: the poly
denominator is max_epochs + 5 = 80 and the alpha ramp divides by max_epochs - 15 = 60.
"""
from __future__ import annotations


def poly_lr(epoch: int, base_lr: float, max_epochs: int = 75, power: float = 0.9) -> float:
    """Learning rate of `epoch`: base_lr * (1 - epoch / (max_epochs + 5)) ** power."""
    if epoch < 0 or epoch >= max_epochs + 5:
        raise ValueError(f"poly_lr: epoch {epoch} outside [0, {max_epochs + 5}) for max_epochs={max_epochs}")
    return base_lr * (1.0 - epoch / (max_epochs + 5)) ** power


DISTILL_ALPHA_HOLD = 15


def distill_alpha(epoch: int, max_epochs: int = 75) -> float:
    """Distillation weight of `epoch`: 3 before epoch 15, then 3 * (epoch - 15) / (max_epochs - 15)."""
    if epoch < DISTILL_ALPHA_HOLD:
        return 3.0
    if max_epochs <= DISTILL_ALPHA_HOLD:
        raise ValueError(f"distill_alpha: epoch {epoch} needs max_epochs above {DISTILL_ALPHA_HOLD}, got {max_epochs}")
    return 3.0 * (epoch - DISTILL_ALPHA_HOLD) / (max_epochs - DISTILL_ALPHA_HOLD)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear learning-rate warm-up: step / warmup_steps for the first warmup_steps steps (1-based), then 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)
