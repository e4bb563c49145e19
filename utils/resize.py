"""Bilinear resizing that stays deterministic on CUDA.

F.interpolate's bilinear backward on CUDA (upsample_bilinear2d_backward_out_cuda) accumulates with atomic
adds and has no deterministic implementation: under torch.use_deterministic_algorithms(True) it raises.
`resize_bilinear` computes the same resize as two matrix products with interpolation matrices, whose
backward is again two matrix products (deterministic with cuBLAS's workspace setting). It is used on CUDA
while deterministic algorithms are on (`--deterministic`); everywhere else F.interpolate runs unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def interpolation_matrix(size_in: int, size_out: int, align_corners: bool, device: torch.device | None = None,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[size_out, size_in] weights of 1-D linear interpolation with F.interpolate's source coordinates."""
    out = torch.arange(size_out, dtype=torch.float64)
    if align_corners:
        source = out * ((size_in - 1) / (size_out - 1)) if size_out > 1 else torch.zeros_like(out)
    else:
        source = ((out + 0.5) * (size_in / size_out) - 0.5).clamp_min(0)
    low = source.floor().long().clamp_max(size_in - 1)
    high = (low + 1).clamp_max(size_in - 1)
    weight = source - low
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    matrix.index_put_((rows, low), 1 - weight, accumulate=True)
    matrix.index_put_((rows, high), weight, accumulate=True)
    return matrix.to(device=device, dtype=dtype)


def matmul_resize(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Bilinear resize of a [..., H, W] tensor to `size` as rows @ x @ columns^T."""
    rows = interpolation_matrix(x.shape[-2], size[0], align_corners, x.device, x.dtype)
    columns = interpolation_matrix(x.shape[-1], size[1], align_corners, x.device, x.dtype)
    return torch.matmul(torch.matmul(rows, x), columns.T)


def uses_matmul(x: torch.Tensor) -> bool:
    """Whether `resize_bilinear` resizes `x` by matrix products: on CUDA while deterministic algorithms are on."""
    return x.is_cuda and torch.are_deterministic_algorithms_enabled()


def resize_bilinear(x: torch.Tensor, size: tuple[int, int] | torch.Size | None = None, factor: int | None = None,
                    align_corners: bool = False) -> torch.Tensor:
    """F.interpolate(x, size or scale_factor=factor, mode="bilinear", align_corners=...), by matrix products
    on CUDA while deterministic algorithms are on."""
    if size is None:
        size = (math.floor(x.shape[-2] * factor), math.floor(x.shape[-1] * factor))
    if uses_matmul(x):
        return matmul_resize(x, tuple(size), align_corners)
    if factor is not None:
        return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=align_corners)
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class BilinearUpsample(nn.Module):
    """nn.Upsample(scale_factor=factor, mode="bilinear") through `resize_bilinear`."""

    def __init__(self, factor: int, align_corners: bool = False) -> None:
        super().__init__()
        self.factor, self.align_corners = factor, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_bilinear(x, factor=self.factor, align_corners=self.align_corners)
