"""Loss values checked against hand-computed numbers on toy masks and vectors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses import (Projectors, bce_dof_edge_loss, dof_edge_loss, feature_distillation_loss, label_edges,
                    prediction_edges, segmentation_loss)
from losses.segmentation import neighbour_response


def as_map(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def test_neighbour_response_is_the_authors_conv2d_filter():
    kernel = torch.ones(1, 1, 3, 3)
    kernel[..., 1, 1] = -8.0
    generator = torch.Generator().manual_seed(0)
    soft = torch.rand(3, 1, 17, 23, generator=generator)
    binary = (torch.rand(3, 1, 17, 23, generator=generator) > 0.5).float()
    torch.testing.assert_close(neighbour_response(soft), F.conv2d(soft, kernel, padding=1), atol=1e-5, rtol=0)
    assert torch.equal(neighbour_response(binary), F.conv2d(binary, kernel, padding=1))


def test_label_edges_are_a_two_pixel_band_plus_the_border_of_ones():
    mask = as_map([[0, 0, 0, 1, 1, 1]] * 6)
    expected = as_map([
        [0, 0, 1, 1, 1, 1],
        [0, 0, 1, 1, 0, 1],
        [0, 0, 1, 1, 0, 1],
        [0, 0, 1, 1, 0, 1],
        [0, 0, 1, 1, 0, 1],
        [0, 0, 1, 1, 1, 1],
    ])
    assert torch.equal(label_edges(mask), expected)


def test_label_edges_border_behaviour():
    ones = torch.ones(1, 1, 4, 4)
    ring = torch.ones(1, 1, 4, 4)
    ring[..., 1:3, 1:3] = 0
    assert torch.equal(label_edges(ones), ring)  # zero padding makes the border of a 1-region an edge
    assert label_edges(torch.zeros(1, 1, 4, 4)).sum() == 0  # a 0-region has no border edge


def test_prediction_edges_of_a_constant_half_map():
    edges = prediction_edges(torch.zeros(1, 1, 4, 4))  # p = 0.5 everywhere
    corner, side = 2.5**2 / (2.5**2 + 1), 1.5**2 / (1.5**2 + 1)
    assert edges[0, 0, 0, 0].item() == pytest.approx(corner)
    assert edges[0, 0, 0, 1].item() == pytest.approx(side)
    assert edges[0, 0, 1, 1].item() == 0.0


def hand_dice_sure_ones() -> float:
    """Logits +30 (p = 1) on an all-ones 4x4 mask: 4 corners e=-5, 8 sides e=-3, label edges = ring of 12."""
    corner, side = 25 / 26, 9 / 10
    overlap = 4 * corner + 8 * side
    pred_sq = 4 * corner**2 + 8 * side**2
    return 1 - (2 * overlap + 1) / (pred_sq + 12 + 1)


def hand_dice_half_on_zeros() -> float:
    """Logits 0 (p = 0.5) on an all-zero 4x4 mask: no label edges."""
    corner, side = 6.25 / 7.25, 2.25 / 3.25
    return 1 - 1 / (4 * corner**2 + 8 * side**2 + 1)


def toy_batch() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.stack([torch.full((1, 4, 4), 30.0), torch.zeros(1, 4, 4)])
    mask = torch.stack([torch.ones(1, 4, 4), torch.zeros(1, 4, 4)])
    return logits, mask


def test_dof_edge_loss_hand_values_and_batch_reduction():
    logits, mask = toy_batch()
    d1, d2 = hand_dice_sure_ones(), hand_dice_half_on_zeros()
    assert dof_edge_loss(logits[:1], mask[:1]).item() == pytest.approx(d1, abs=1e-6)
    assert dof_edge_loss(logits[1:], mask[1:]).item() == pytest.approx(d2, abs=1e-6)
    assert dof_edge_loss(logits, mask).item() == pytest.approx(d1 + d2, abs=1e-6)  # authors: summed
    assert dof_edge_loss(logits, mask, reduction="mean").item() == pytest.approx((d1 + d2) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        dof_edge_loss(logits, mask, reduction="none")


def test_bce_dof_edge_loss_is_mean_bce_plus_half_summed_dice():
    logits, mask = toy_batch()
    bce = (16 * math.log1p(math.exp(-30.0)) + 16 * math.log(2.0)) / 32
    expected = bce + 0.5 * (hand_dice_sure_ones() + hand_dice_half_on_zeros())
    assert bce_dof_edge_loss(logits, mask).item() == pytest.approx(expected, abs=1e-6)


def test_split_batch_with_sum_scale_reproduces_the_whole_batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 8, 8, generator=g)
    mask = (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float()
    whole = bce_dof_edge_loss(logits, mask)
    halves = [bce_dof_edge_loss(logits[i : i + 2], mask[i : i + 2], edge_sum_scale=2) for i in (0, 2)]
    assert (sum(halves) / 2).item() == pytest.approx(whole.item(), rel=1e-6)


def test_segmentation_loss_weights_and_side_upsampling():
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    logits = torch.randn(2, 1, 16, 16, generator=g)
    sides = [torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 8, 8, generator=g)]
    total, terms = segmentation_loss(logits, sides, mask, final_weight=1.1)
    up = [F.interpolate(s, size=(16, 16), mode="bilinear", align_corners=False) for s in sides]
    expected = 1.1 * bce_dof_edge_loss(logits, mask) + sum(bce_dof_edge_loss(u, mask) for u in up)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert list(terms) == ["final", "side1", "side2"]
    bce_total, _ = segmentation_loss(logits, [], mask, loss="bce")
    assert bce_total.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, mask).item(), rel=1e-6)


def test_feature_distillation_on_known_vectors():
    # pixel 0: s = (3, 4), t = (0, 5); pixel 1: s = (1e-3, 0), t = (0, 2)
    student = torch.tensor([[3.0, 1e-3], [4.0, 0.0]]).view(1, 2, 1, 2)
    teacher = torch.tensor([[0.0, 0.0], [5.0, 2.0]]).view(1, 2, 1, 2)
    n0 = math.sqrt(25 + 1e-6)
    d0 = (3 / n0) ** 2 + (4 / n0 - 5 / n0) ** 2
    small = 1e-3 / math.sqrt(1e-6 + 1e-6)  # epsilon inside the root: 0.7071, not ~1
    d1 = small**2 + (2 / math.sqrt(4 + 1e-6)) ** 2
    total, levels = feature_distillation_loss([student, student], [teacher, teacher])
    assert levels[0].item() == pytest.approx((d0 + d1) / 2, rel=1e-5)
    assert total.item() == pytest.approx(d0 + d1, rel=1e-5)


def test_feature_distillation_resizes_teacher_and_carries_no_teacher_gradient():
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 8, 8, requires_grad=True)
    total, _ = feature_distillation_loss([student], [teacher])
    total.backward()
    assert student.grad is not None and teacher.grad is None
    same, _ = feature_distillation_loss([student], [student.detach()])
    assert same.item() == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="channels"):
        feature_distillation_loss([student], [torch.randn(2, 5, 4, 4)])


def test_projectors_match_the_authors_adapters():
    channels = [2048, 1024, 512, 256]
    projectors = Projectors(channels, channels)
    assert sum(p.numel() for p in projectors.parameters()) == 5_570_560
    assert all(conv.bias is None and conv.kernel_size == (1, 1) for conv in projectors.convs)
    assert projectors.convs[0].weight.std().item() == pytest.approx(math.sqrt(2 / 4096), rel=0.02)
    mixed = Projectors([64, 32], [128, 16])  # any backbone pair: student -> teacher channels
    out = mixed([torch.randn(1, 64, 2, 2), torch.randn(1, 32, 4, 4)])
    assert [tuple(o.shape) for o in out] == [(1, 128, 2, 2), (1, 16, 4, 4)]
