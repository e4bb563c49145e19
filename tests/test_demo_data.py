"""Issue 11: decidable synthetic defocus at any size, and the depth teacher's MiDaS-convention scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets.scenes import BlurRange, generate_image
from metrics.depth import relative_depth_errors


def _coc_shares(size: int, count: int = 24) -> tuple[float, float, float]:
    """(share of pixels in the ambiguous band, share visibly blurred, median largest CoC / width)."""
    blur = BlurRange()
    band, blurred, largest = [], [], []
    for index in range(count):
        rendering, meta = generate_image(11, index, size)
        if meta["wide_dof"]:
            continue
        coc = rendering.coc_px / size
        band.append(((coc > blur.sharp_share) & (coc < blur.blurred_share)).mean())
        blurred.append((coc >= blur.blurred_share).mean())
        largest.append(coc.max())
    return float(np.mean(band)), float(np.mean(blurred)), float(np.median(largest))


def test_few_pixels_have_an_ambiguous_blur_and_sizes_look_alike() -> None:
    small, large = _coc_shares(96), _coc_shares(192)
    for band, blurred, largest in (small, large):
        assert band < 0.10, "constant-depth surfaces must stay out of the ambiguous CoC band"
        assert blurred > 0.25
        assert BlurRange().max_share[0] <= largest <= BlurRange().max_share[1] + 1e-6
    assert abs(small[2] - large[2]) < 0.015, "the largest blur scales with the width"


def test_label_threshold_is_one_pixel_per_320() -> None:
    for size in (96, 320):
        _, meta = generate_image(3, 0, size)
        assert meta["coc_threshold_px"] == pytest.approx(size / 320)


def test_depth_errors_are_zero_for_a_map_right_up_to_scale_and_shift() -> None:
    target = 1.0 / torch.tensor([1.0, 2.0, 4.0, 8.0]).view(1, 1, 2, 2)
    errors = relative_depth_errors(3.0 * target + 0.2, target)
    assert errors["abs_rel"].item() == pytest.approx(0.0, abs=1e-6)
    assert errors["delta1"].item() == 1.0


def test_depth_errors_of_an_inverted_map_use_a_zero_scale() -> None:
    # true depths 1, 2, 4, 8 m; an inverted map gets s = 0, t = mean inverse depth = 0.46875,
    # i.e. a constant depth of 1 / 0.46875 = 2.1333 m everywhere.
    target = 1.0 / torch.tensor([1.0, 2.0, 4.0, 8.0]).view(1, 1, 2, 2)
    errors = relative_depth_errors(-target, target)
    constant = 1 / 0.46875
    expected = np.mean([abs(constant - d) / d for d in (1.0, 2.0, 4.0, 8.0)])
    assert errors["abs_rel"].item() == pytest.approx(expected, rel=1e-5)
    assert errors["delta1"].item() == 0.25  # only the 2 m pixel is within a factor 1.25
