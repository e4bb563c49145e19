"""DFFNet decoder: dense feature fusion (DFFM), side classifiers, side-guided spatial attention and
coarse-to-fine concatenation aggregation. Every level has 32 channels; levels are ordered coarse -> fine."""
from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBN, upsample


class DenseFeatureFusion(nn.Module):
    """DFFM: each finer level is multiplied by gates computed from every coarser level.

    level1 = gate0_to1(up(r0)) * r1
    level2 = gate0(up^2(r0)) * gate1(up(r1)) * r2
    level3 = gate0(up^3(r0)) * gate1(up^2(r1)) * gate2(up(r2)) * r3
    gate0 and gate1 are shared by levels 2 and 3; the raw r1, r2 (not the gated levels) drive the gates.
    """

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.gate0_to1 = ConvBN(channels, channels)
        self.gate0 = ConvBN(channels, channels)
        self.gate1 = ConvBN(channels, channels)
        self.gate2 = ConvBN(channels, channels)

    def forward(self, r0: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor,
                r3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r0_x2 = upsample(r0)
        r0_x4 = upsample(r0_x2)
        r1_x2 = upsample(r1)
        level1 = self.gate0_to1(r0_x2) * r1
        level2 = self.gate0(r0_x4) * self.gate1(r1_x2) * r2
        level3 = self.gate0(upsample(r0_x4)) * self.gate1(upsample(r1_x2)) * self.gate2(upsample(r2)) * r3
        return level1, level2, level3


class SideAttention(nn.Sequential):
    """Spatial gate from a side logit: 3x3 conv 1 -> C (no bias) and a sigmoid."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__(nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.Sigmoid())


class DFFNetDecoder(nn.Module):
    """Decoder of the DFFNet family, configured per ablation.

    With dense fusion the coarsest level is first brought to the next resolution (up_convs[0] after a x2
    upsampling) and the side head sees that; without it the side head sees the coarsest level at its own
    resolution and the upsampling conv follows the attention. Returns the 1/`finest stride` logit map, the
    side logits (before attention) and, with depth heads, the depth predictions (final layer first).
    """

    def __init__(self, channels: int = 32, dense_fusion: bool = True, side_outputs: bool = True,
                 side_attention: bool = True, depth_heads: bool = False) -> None:
        super().__init__()
        if side_attention and not side_outputs:
            raise ValueError("side attention is driven by the side logits: it needs side_outputs=True")
        c = channels
        self.fusion = DenseFeatureFusion(c) if dense_fusion else None
        self.up_convs = nn.ModuleList([ConvBN(c, c), ConvBN(2 * c, 2 * c), ConvBN(3 * c, 3 * c)])
        self.fuse_convs = nn.ModuleList([ConvBN(2 * c, 2 * c), ConvBN(3 * c, 3 * c), ConvBN(4 * c, 4 * c)])
        self.refine = ConvBN(4 * c, 4 * c)
        self.classifier = nn.Conv2d(4 * c, 1, 1)
        self.side_heads = nn.ModuleList([nn.Conv2d(c, 1, 1) for _ in range(4)]) if side_outputs else None
        self.side_attention = nn.ModuleList([SideAttention(c) for _ in range(4)]) if side_attention else None
        self.depth_heads = (nn.ModuleList([nn.Conv2d(4 * c, 1, 1)] + [nn.Conv2d(c, 1, 1) for _ in range(4)])
                            if depth_heads else None)

    def forward(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        r0, r1, r2, r3 = levels
        if self.fusion is not None:
            branches = [self.up_convs[0](upsample(r0)), *self.fusion(r0, r1, r2, r3)]
        else:
            branches = [r0, r1, r2, r3]
        sides = [head(b) for head, b in zip(self.side_heads, branches)] if self.side_heads is not None else []
        depth_inputs = branches
        if self.side_attention is not None:
            branches = [attention(s) * b for attention, s, b in zip(self.side_attention, sides, branches)]
        top = branches[0] if self.fusion is not None else self.up_convs[0](upsample(branches[0]))
        x = self.fuse_convs[0](torch.cat([branches[1], top], dim=1))
        x = self.fuse_convs[1](torch.cat([branches[2], self.up_convs[1](upsample(x))], dim=1))
        x = self.fuse_convs[2](torch.cat([branches[3], self.up_convs[2](upsample(x))], dim=1))
        x = self.refine(x)
        depth = []
        if self.depth_heads is not None:
            depth = [self.depth_heads[0](x)] + [head(b) for head, b in zip(self.depth_heads[1:], depth_inputs)]
        return self.classifier(x), sides, depth
