"""The learning-rate and alpha values of docs/REPRODUCTION.md (sections 4-5), reproduced exactly."""
from __future__ import annotations

import pytest

from utils.schedule import distill_alpha, poly_lr


@pytest.mark.parametrize("epoch, lr", [(1, "9.887e-05"), (37, "5.719e-05"), (74, "9.718e-06")])
def test_poly_lr_table(epoch: int, lr: str):
    assert f"{poly_lr(epoch, 1e-4):.3e}" == lr


def test_poly_lr_formula_and_range():
    assert poly_lr(1, 1e-4) == 1e-4 * (1 - 1 / 80) ** 0.9
    assert poly_lr(0, 1e-4) == 1e-4
    with pytest.raises(ValueError, match="epoch 80"):
        poly_lr(80, 1e-4)


@pytest.mark.parametrize("epoch, alpha", [(1, 3.0), (14, 3.0), (15, 0.0), (16, 0.05), (30, 0.75), (45, 1.5),
                                          (60, 2.25), (74, 2.95)])
def test_alpha_table(epoch: int, alpha: float):
    assert distill_alpha(epoch) == pytest.approx(alpha, abs=1e-12)


def test_short_schedules_hold_alpha_at_3_and_refuse_only_the_ramp():
    assert distill_alpha(4, max_epochs=5) == 3.0
    with pytest.raises(ValueError, match="epoch 15 needs max_epochs above 15, got 10"):
        distill_alpha(15, max_epochs=10)
