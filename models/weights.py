"""Loading weights: the authors' released state_dicts (explicit key map, documented dead keys dropped by
name), our own checkpoints, and DDP / torch.compile wrapped files. Every mismatch is reported at once; the files
this repository ships are checked against their recorded SHA-256 (models.shipped)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from utils.checkpoint import CheckpointError, check_finite, read_checkpoint, unpack_checkpoint

from .dbdnet import VARIANTS, DBDNet, Variant, build_model
from .midas import MidasNet, build_midas
from .shipped import verify_shipped

AUTHORS_TOP_LEVEL = ("resnest.", "vgg.", "rfb", "agg1.")
MAX_LISTED = 12

# The authors' key -> our key. Rules are applied in order; each rewrites a key at most once.
AUTHORS_KEY_RULES: list[tuple[str, str]] = [
    # encoder: the used ResNeSt stages 3-4 are `layer3_1` / `layer4_1`; VGG16 sits under `vgg.features`
    (r"^resnest\.layer3_1\.", "encoder.model.layer3."),
    (r"^resnest\.layer4_1\.", "encoder.model.layer4."),
    (r"^resnest\.", "encoder.model."),
    (r"^vgg\.features\.(\d+)\.", r"encoder.model.features_\1."),
    # per-level reducers, coarse -> fine (ResNeSt: rfb4/3/2/1; VGG16: rfb4/3/2/5; PDNet: 1x1 convs)
    (r"^rfb4_1\.", "reducers.0."),
    (r"^rfb3_1\.", "reducers.1."),
    (r"^rfb2_1\.", "reducers.2."),
    (r"^rfb[15]_1\.", "reducers.3."),
    (r"^agg1\.conv11\.", "reducers.0."),
    (r"^agg1\.conv22\.", "reducers.1."),
    (r"^agg1\.conv33\.", "reducers.2."),
    (r"^agg1\.conv44\.", "reducers.3."),
    # inside an RFB
    (r"^(reducers\.\d\.)branch(\d)\.", r"\1branches.\2."),
    (r"^(reducers\.\d\.)conv_cat\.", r"\1fuse."),
    (r"^(reducers\.\d\.)conv_res\.", r"\1shortcut."),
    # decoder `agg1`
    (r"^agg1\.conv_upsample1\.", "decoder.fusion.gate0_to1."),
    (r"^agg1\.conv_upsample2\.", "decoder.fusion.gate0."),
    (r"^agg1\.conv_upsample3\.", "decoder.fusion.gate1."),
    (r"^agg1\.conv_upsample6\.", "decoder.fusion.gate2."),
    (r"^agg1\.conv_upsample4\.", "decoder.up_convs.0."),
    (r"^agg1\.conv_upsample5\.", "decoder.up_convs.1."),
    (r"^agg1\.conv_upsample7\.", "decoder.up_convs.2."),
    (r"^agg1\.conv_concat2\.", "decoder.fuse_convs.0."),
    (r"^agg1\.conv_concat3\.", "decoder.fuse_convs.1."),
    (r"^agg1\.conv_concat4\.", "decoder.fuse_convs.2."),
    (r"^agg1\.conv4\.", "decoder.refine."),
    (r"^agg1\.conv5\.", "decoder.classifier."),
    (r"^agg1\.side1\.", "decoder.side_heads.0."),
    (r"^agg1\.side2\.", "decoder.side_heads.1."),
    (r"^agg1\.side3\.", "decoder.side_heads.2."),
    (r"^agg1\.side4\.", "decoder.side_heads.3."),
    (r"^agg1\.spatial_attention1\.", "decoder.side_attention.0."),
    (r"^agg1\.spatial_attention2\.", "decoder.side_attention.1."),
    (r"^agg1\.spatial_attention3\.", "decoder.side_attention.2."),
    (r"^agg1\.spatial_attention4\.", "decoder.side_attention.3."),
]

# Modules the authors build but never call in forward; their keys are dropped by name.
AUTHORS_DEAD_KEYS: dict[str, tuple[str, ...]] = {
    "*": (r"^resnest\.layer3_2\.", r"^resnest\.layer4_2\."),      # unused second copy of stages 3-4
    "pdnet": (r"^rfb[1-4]_1\.",),                                  # PDNet builds RFBs but uses 1x1 convs
    "dffnet_wo_dffm": (r"^agg1\.conv_upsample[1236]\.",),          # NG builds the DFFM gates, never calls them
}


def _error(path: Path, message: str) -> CheckpointError:
    return CheckpointError(f"{path}: {message}")


def is_authors_layout(state: dict[str, torch.Tensor]) -> bool:
    """True for the authors' DFFNet-family key layout (resnest./vgg./rfb*/agg1.)."""
    return any(k.startswith(AUTHORS_TOP_LEVEL) for k in state)


def authors_key(key: str) -> str:
    """Our name for one of the authors' keys."""
    for pattern, replacement in AUTHORS_KEY_RULES:
        key = re.sub(pattern, replacement, key, count=1)
    return key


def from_authors_layout(state: dict[str, torch.Tensor], name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop the variant's documented dead keys and rename the rest; also returns our key -> file key."""
    dead = re.compile("|".join(AUTHORS_DEAD_KEYS["*"] + AUTHORS_DEAD_KEYS.get(name, ())))
    renamed, origin = {}, {}
    for key, value in state.items():
        if dead.match(key):
            continue
        ours = authors_key(key)
        if ours in renamed:
            raise ValueError(f"keys {origin[ours]!r} and {key!r} both map to {ours!r}")
        renamed[ours], origin[ours] = value, key
    return renamed, origin


def _listing(title: str, items: list[str]) -> str:
    shown = "\n    ".join(items[:MAX_LISTED])
    more = f"\n    ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"  {len(items)} {title}:\n    {shown}{more}"


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path,
                      origin: dict[str, str] | None = None) -> None:
    """load_state_dict(strict=True), reporting every missing / unexpected / mis-shaped key in one error."""
    origin = origin or {}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [origin.get(k, k) for k in state if k not in expected]
    mis_shaped = [f"{origin.get(k, k)}: file {tuple(v.shape)}, model {tuple(expected[k].shape)}"
                  for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or mis_shaped:
        config = getattr(model, "config", {})
        parts = [f"does not fit the model {config or type(model).__name__} "
                 "(a checkpoint of another variant or backbone?)"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("keys with a different shape", mis_shaped)):
            if items:
                parts.append(_listing(title, items))
        raise _error(path, "\n".join(parts))
    model.load_state_dict(state, strict=True)


def complete_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored `model_config` with what older checkpoints leave out filled in: every checkpoint written
    before the input normalisation was stored was trained on ImageNet's."""
    if "normalisation" not in config:
        return {**config, "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}
    return config


def _load_into(model: nn.Module, obj: Any, path: Path) -> dict[str, Any]:
    state, metadata = unpack_checkpoint(obj, path)
    check_finite(state, path)
    stored_config = metadata.get("model_config")
    if stored_config is not None:
        stored_config = complete_model_config(stored_config)
    config = getattr(model, "config", None)
    if stored_config is not None and config is not None and stored_config != config:
        raise _error(path, f"holds a model built with {stored_config}, but the model is {config}")
    origin = None
    if isinstance(model, DBDNet) and is_authors_layout(state):
        try:
            state, origin = from_authors_layout(state, model.config["name"])
        except ValueError as e:
            raise _error(path, str(e)) from None
    load_state_strict(model, state, path, origin)
    return metadata


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load weights into `model` (DBD network or MiDaS) from the authors' files, our checkpoints or
    DDP / compile-prefixed files. Returns our checkpoint's entries without tensors ({} for a bare
    state_dict). Raises CheckpointError naming the file and listing every mismatch."""
    path = Path(path)
    verify_shipped(path)
    return _load_into(model, read_checkpoint(path), path)


def _variant_signature(variant: Variant) -> tuple[bool, bool, bool, str, bool]:
    """What a variant's weights show: DFFM gates, side heads, side attention, reducer kind, VGG taps."""
    return (variant.dense_fusion, variant.side_outputs, variant.side_attention, variant.reducer,
            variant.default_backbone.startswith("vgg"))


def _keys_signature(keys: set[str]) -> tuple[bool, bool, bool, str, bool]:
    """The same signature read off a state_dict in this code's key layout."""
    return (any(k.startswith("decoder.fusion.") for k in keys),
            any(k.startswith("decoder.side_heads.") for k in keys),
            any(k.startswith("decoder.side_attention.") for k in keys),
            "conv1x1" if "reducers.0.weight" in keys else "rfb",
            any(k.startswith("encoder.model.features_") for k in keys))


def stored_variant(state: dict[str, torch.Tensor]) -> str:
    """The registry name (or 'midas') of a bare state_dict, in the authors' key layout or in ours, found by
    matching the decoder parts its keys hold against the registry's variants. The authors' NG model
    (dffnet_wo_dffm) stores the unused DFFM gates, so its keys are DFFNet's and it is reported as 'dffnet'."""
    if any(k.startswith("scratch.") for k in state):
        return "midas"
    keys = {authors_key(k) for k in state} if is_authors_layout(state) else set(state)
    found = _keys_signature(keys)
    for name, variant in VARIANTS.items():
        if _variant_signature(variant) == found:
            return name
    return "dffnet"


def build_from_config(config: dict[str, Any]) -> nn.Module:
    """build_model / build_midas from a stored `model.config`."""
    config = dict(config)
    name = config.pop("name")
    return build_midas(**config) if name == "midas" else build_model(name, **config)


def load_model(path: str | os.PathLike, name: str | None = None, backbone: str | None = None,
               map_location: str | torch.device = "cpu", detector_only: bool = False) -> nn.Module:
    """Build the network stored in `path` and load it (train mode). Our checkpoints carry their
    `model_config`; for bare state_dicts the network is `name` / `backbone`, by default the variant the
    keys identify, in the authors' layout or ours (dffnet for the authors' DFFNet.pth / D-DFFNet.pth), with
    its default backbone, and with R-DFFNet depth heads when the keys hold them. `model.training_config` is
    the resolved training configuration our checkpoints carry ({} for bare state_dicts), and
    `model.inference_img_size` the input size an exported file says to run it at (None if none). `detector_only`
    refuses a depth (MiDaS) model before building it."""
    path = Path(path)
    verify_shipped(path)
    obj = read_checkpoint(path, map_location=map_location)
    state, metadata = unpack_checkpoint(obj, path)
    config = metadata.get("model_config")
    if config is not None:
        config = complete_model_config(config)
    stored_name = config.get("name") if config is not None else stored_variant(state)
    if detector_only and "midas" in (stored_name, name):
        raise _error(path, "is a depth model (MiDaS), not a blur detector: give a DFFNet-family checkpoint "
                           "(e.g. checkpoint/DFFNet.pth); MiDaS weights go to --depth-teacher")
    if config is not None:
        stored_backbone = config.get("backbone", config.get("encoder"))
        if name is not None and name != config.get("name"):
            raise _error(path, f"holds a '{config.get('name')}' model, but '{name}' was asked for")
        if backbone is not None and backbone != stored_backbone:
            raise _error(path, f"holds a model with backbone '{stored_backbone}', but '{backbone}' was asked for")
        model = build_from_config(config)
    else:
        name = name or stored_variant(state)
        if name == "midas":
            model = build_midas(encoder=backbone or "resnext101_32x8d")
        else:
            model = build_model(name, backbone, depth_heads=any(k.startswith("decoder.depth_heads.") for k in state))
    loaded = _load_into(model, obj, path)
    model.training_config = loaded.get("config") or {}
    model.inference_img_size = loaded.get("inference_img_size")
    return model.to(map_location).train()


def load_midas(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> MidasNet:
    """MiDaS from the authors' midas_v21-f6b98070.pt or from our checkpoint of a MiDaS model."""
    return load_model(path, name="midas", map_location=map_location)
