"""MiDaS v2.1 monocular depth network (ResNeXt-101 32x8d encoder + `scratch` RefineNet-style decoder),
with the state_dict layout of `midas_v21-f6b98070.pt`. Smaller timm ResNet-family encoders are accepted
for a MiDaS-architecture teacher trained from scratch."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils.resize import BilinearUpsample

from .encoders import create_timm_model
from .layers import check_input_size, upsample

RESNET_STEM = ("conv1", "bn1", "act1", "maxpool")


@dataclass
class MidasOutput:
    """MiDaS forward result."""

    depth: torch.Tensor            # B x 1 x H x W relative inverse depth (non-negative)
    features: list[torch.Tensor]   # the 4 encoder stage outputs, coarse -> fine


class MidasEncoder(nn.Module):
    """A ResNet-family encoder grouped as MiDaS does: layer1 = stem + first stage, layer2..layer4."""

    def __init__(self, encoder: str, pretrained: bool | str | os.PathLike = False) -> None:
        super().__init__()
        net = create_timm_model(encoder, pretrained)
        if not all(hasattr(net, name) for name in (*RESNET_STEM, "layer1", "layer2", "layer3", "layer4")):
            raise ValueError(f"MiDaS encoder '{encoder}' must be a timm ResNet-family model "
                             f"(conv1, bn1, act1, maxpool, layer1..layer4)")
        self.layer1 = nn.Sequential(*(getattr(net, name) for name in RESNET_STEM), net.layer1)
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        self.channels = [net.feature_info[i]["num_chs"] for i in (4, 3, 2, 1)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        layer1 = self.layer1(x)
        layer2 = self.layer2(layer1)
        layer3 = self.layer3(layer2)
        layer4 = self.layer4(layer3)
        return [layer4, layer3, layer2, layer1]


class ResidualConvUnit(nn.Module):
    """relu -> conv3x3 -> relu -> conv3x3, added to relu(x) (MiDaS' in-place ReLU rectifies the skip too)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """Adds the residual-refined skip to the coarser path, refines, and upsamples x2 (align_corners=True).

    The coarsest block is called without a skip, so its resConfUnit1 is unused (as in MiDaS v2.1)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        return upsample(self.resConfUnit2(x))


class MidasDecoder(nn.Module):
    """MiDaS `scratch`: 3x3 projections to `features` channels, four fusion blocks, output head."""

    def __init__(self, in_channels: list[int], features: int = 256) -> None:
        super().__init__()
        fine_to_coarse = in_channels[::-1]
        for i, channels in enumerate(fine_to_coarse, start=1):
            self.add_module(f"layer{i}_rn", nn.Conv2d(channels, features, 3, padding=1, bias=False))
        for i in (4, 3, 2, 1):
            self.add_module(f"refinenet{i}", FeatureFusionBlock(features))
        self.output_conv = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1),
            BilinearUpsample(2, align_corners=False),
            nn.Conv2d(features // 2, 32, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(32, 1, 1),
            nn.ReLU(True),
        )
        # Start the non-negative output in ReLU's linear range: with PyTorch's default init a network
        # trained from scratch can begin with an all-zero map and no gradient. Released weights overwrite it.
        nn.init.constant_(self.output_conv[-2].bias, 1.0)

    def forward(self, encoder_features: list[torch.Tensor]) -> torch.Tensor:
        layer4, layer3, layer2, layer1 = encoder_features
        path = self.refinenet4(self.layer4_rn(layer4))
        path = self.refinenet3(path, self.layer3_rn(layer3))
        path = self.refinenet2(path, self.layer2_rn(layer2))
        path = self.refinenet1(path, self.layer1_rn(layer1))
        return self.output_conv(path)


class MidasNet(nn.Module):
    """MiDaS v2.1. `features(x)` runs the encoder only; `forward` adds the depth decoder."""

    def __init__(self, encoder: str = "resnext101_32x8d", features: int = 256,
                 pretrained: bool | str | os.PathLike = False) -> None:
        super().__init__()
        self.config = {"name": "midas", "encoder": encoder, "features": features}
        self.pretrained = MidasEncoder(encoder, pretrained)
        self.feature_channels = list(self.pretrained.channels)
        self.scratch = MidasDecoder(self.feature_channels, features)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder stage outputs, coarse -> fine (the distillation targets)."""
        check_input_size(x, "midas")
        return self.pretrained(x)

    def forward(self, x: torch.Tensor) -> MidasOutput:
        encoder_features = self.features(x)
        return MidasOutput(self.scratch(encoder_features), encoder_features)


def build_midas(encoder: str = "resnext101_32x8d", features: int = 256,
                pretrained: bool | str | os.PathLike = False) -> MidasNet:
    """MiDaS v2.1 with a timm ResNet-family encoder; `pretrained` initialises the encoder from ImageNet
    weights (True: the local timm / HF cache, else downloaded as timm does; or a file path)."""
    return MidasNet(encoder, features, pretrained)
