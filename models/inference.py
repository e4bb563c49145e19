"""P(in-focus) maps for photos: the one inference path of `test.py --images`, the web page (app.py) and
torch.hub users.

    model = torch.hub.load(".", "dffnet_cpu", source="local")   # or models.load_model(path).eval()
    in_focus = predict(model, "photo.jpg")                       # float32 H x W in [0, 1], white = in-focus
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from datasets.decoding import DECODE_ERRORS, load_rgb, upright_rgb
from datasets.transforms import normalise, resize_image
from utils.runtime import autocast

DEFAULT_IMG_SIZE = 320  # the paper's input size, for checkpoints that record none (the authors' files)
ImageInput = Union[Image.Image, np.ndarray, str, os.PathLike]


@dataclass(frozen=True)
class InputSpec:
    """The input a detector takes: RGB resized to img_size x img_size, ImageNet-normalised as in training.
    (A network whose backbone expects another normalisation converts inside, from its `model_config`.)"""
    img_size: int


def input_spec(model: torch.nn.Module, img_size: int | None = None) -> InputSpec:
    """What a loaded detector expects: `img_size` when given, else the input size an exported file says to run
    it at, else its training size (DEFAULT_IMG_SIZE when its checkpoint records none). The one place that
    decides a detector's input."""
    config = getattr(model, "training_config", None) or {}
    return InputSpec(img_size or getattr(model, "inference_img_size", None) or config.get("img_size")
                     or DEFAULT_IMG_SIZE)


def as_rgb(image: ImageInput) -> Image.Image:
    """The 8-bit RGB picture, upright, of a file path (EXIF orientation applied; DatasetError naming a file that
    cannot be decoded), a PIL image (turned as its EXIF orientation says) or a numpy array taken as it is
    (H x W grey, H x W x 3 RGB or H x W x 4 RGBA; uint8, uint16, or float in [0, 1])."""
    if isinstance(image, (str, os.PathLike)):
        return load_rgb(Path(image))
    if isinstance(image, Image.Image):
        try:
            return upright_rgb(image)
        except DECODE_ERRORS as exc:
            raise ValueError(f"cannot decode the PIL image ({exc})") from None
    if isinstance(image, np.ndarray):
        return Image.fromarray(_array_to_8bit(image)).convert("RGB")
    raise TypeError(f"expected a PIL image, a numpy array or a file path, got {type(image).__name__}")


def _array_to_8bit(array: np.ndarray) -> np.ndarray:
    """uint8 H x W or H x W x 3 pixels of an image array (alpha dropped; 16-bit values above 255 keep their top
    8 bits, as for 16-bit files)."""
    if array.ndim == 3 and array.shape[2] in (1, 4):
        array = array[..., :3] if array.shape[2] == 4 else array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)) or min(array.shape[:2], default=0) < 1:
        raise ValueError(f"expected an H x W, H x W x 3 (RGB) or H x W x 4 (RGBA) image array, got shape {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return (array >> 8 if array.max() > 255 else array).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(np.min(array)), float(np.max(array))
        if not (np.isfinite(low) and np.isfinite(high) and 0 <= low and high <= 1):
            raise ValueError(f"a float image array must hold values in [0, 1], this one holds [{low:g}, {high:g}]")
        return np.round(array * 255).astype(np.uint8)
    raise ValueError(f"expected uint8, uint16 or float (values in [0, 1]) pixels, got {array.dtype}")


def _is_channels_last(model: torch.nn.Module) -> bool:
    """Whether the model's convolution weights are stored channels-last (then its input is too)."""
    weight = next((p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1), None)
    return weight is not None and not weight.is_contiguous() and \
        weight.is_contiguous(memory_format=torch.channels_last)


def detector_logits(model: torch.nn.Module, images: torch.Tensor, flip_average: bool = False) -> torch.Tensor:
    """The final in-focus logits (B, 1, H, W) of a batch; with `flip_average`, the mean of the logits of the
    images and of their mirror images (mirrored back): two forwards, a test-time augmentation the paper does not
    use."""
    logits = model(images).logits
    if flip_average:
        logits = (logits + model(images.flip(-1)).logits.flip(-1)) / 2
    return logits


def predict_batch(model: torch.nn.Module, images: list[ImageInput], img_size: int | None = None,
                  amp: str = "off", flip_average: bool = False) -> list[np.ndarray]:
    """P(in-focus) maps of several images run as one batch on the model's device; each float32 H x W in [0, 1] at
    its upright image's size (the network's map resized bilinearly). Puts the model in eval mode. `img_size`
    overrides the checkpoint's input size; `amp`: off | bf16 | fp16; `flip_average`: see `detector_logits`."""
    pictures = [as_rgb(image) for image in images]
    if not pictures:
        return []
    spec = input_spec(model, img_size)
    device = next(model.parameters()).device
    batch = torch.stack([normalise(resize_image(p, spec.img_size)) for p in pictures])
    batch = batch.to(device)
    if _is_channels_last(model):
        batch = batch.contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.inference_mode():
        with autocast(device, amp):
            logits = detector_logits(model, batch, flip_average)
        probs = torch.sigmoid(logits.float())
        return [F.interpolate(probs[i:i + 1], size=(p.height, p.width), mode="bilinear",
                              align_corners=False)[0, 0].cpu().numpy() for i, p in enumerate(pictures)]


def predict(model: torch.nn.Module, image: ImageInput, img_size: int | None = None, amp: str = "off",
            flip_average: bool = False) -> np.ndarray:
    """P(in-focus) map (float32, H x W in [0, 1], white = in-focus) of one image at its upright size: a PIL image,
    a numpy array (RGB) or a file path, fed to the model at its own input size (the model applies its own
    normalisation)."""
    return predict_batch(model, [image], img_size, amp, flip_average)[0]
