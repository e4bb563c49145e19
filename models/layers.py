"""Building blocks shared by the DFFNet family: conv+BN, the RFB reducer, align-corners upsampling."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.resize import resize_bilinear


def upsample(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """One bilinear resize by `factor` with align_corners=True (the authors' nn.Upsample)."""
    return resize_bilinear(x, factor=factor, align_corners=True)


class ConvBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d, with NO activation (the authors' BasicConv2d)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
                 padding: int | tuple[int, int] = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels)


class RFB(nn.Module):
    """Receptive field block: four parallel conv+BN branches (dilation 1/3/5/7) fused by a 3x3 conv+BN,
    added to a 1x1 conv+BN shortcut; the final ReLU is the block's only nonlinearity."""

    def __init__(self, in_channels: int, out_channels: int = 32) -> None:
        super().__init__()
        c = out_channels
        branches = [nn.Sequential(ConvBN(in_channels, c, 1, padding=0))]
        for k in (3, 5, 7):
            branches.append(nn.Sequential(
                ConvBN(in_channels, c, 1, padding=0),
                ConvBN(c, c, (1, k), padding=(0, k // 2)),
                ConvBN(c, c, (k, 1), padding=(k // 2, 0)),
                ConvBN(c, c, 3, padding=k, dilation=k),
            ))
        self.branches = nn.ModuleList(branches)
        self.fuse = ConvBN(4 * c, c, 3, padding=1)
        self.shortcut = ConvBN(in_channels, c, 1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))
        return F.relu(fused + self.shortcut(x))


INPUT_MULTIPLE = 32


def check_input_size(x: torch.Tensor, name: str) -> None:
    """Raise a clear error unless the input's height and width are multiples of the coarsest stride (32)."""
    height, width = x.shape[-2:]
    if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
        raise ValueError(f"{name}: input height and width must be divisible by {INPUT_MULTIPLE}, "
                         f"got {height}x{width}")
