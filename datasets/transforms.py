"""The authors' preprocessing, in their order: flip, PIL bilinear / nearest resize, colour jitter, ImageNet
normalisation."""
from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COLOR_JITTER = T.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1)


def resize_image(image: Image.Image, size: int) -> Image.Image:
    """size x size, PIL bilinear (with PIL's antialiasing), as torchvision's resize does on PIL images."""
    return image.resize((size, size), Image.Resampling.BILINEAR)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """size x size nearest-neighbour resize of a uint8 mask, PIL's sampling."""
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))


def normalise(image: Image.Image) -> torch.Tensor:
    """float[3,H,W]: ToTensor then ImageNet Normalize (every network takes this; models.encoders converts it to
    a backbone's own normalisation)."""
    return TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)


def denormalise(image: torch.Tensor) -> torch.Tensor:
    """The RGB picture in [0, 1] (float, 3 x H x W) behind a `normalise`d tensor."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.cpu().float() * std + mean).clamp(0, 1)


def mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """float[1,H,W] in {0,1} from a uint8 {0,1} mask."""
    return torch.from_numpy(mask.astype(np.float32))[None]


def draw_flip() -> bool:
    """The authors' horizontal flip decision, p = 0.5 (torch RNG)."""
    return bool(torch.rand(()) < 0.5)


def flip_pair(image: Image.Image, mask: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """Image and mask (or depth) mirrored left-right; the authors flip before resizing."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), np.ascontiguousarray(mask[:, ::-1])


def draw_crop(width: int, height: int, min_area: float) -> tuple[int, int, int, int]:
    """A random crop box (left, top, right, bottom) covering a share of the image area drawn from
    [min_area, 1], with an aspect ratio in [3/4, 4/3] of the image's own (torch RNG); the whole image
    when min_area >= 1."""
    if min_area >= 1:
        return 0, 0, width, height
    area = float(torch.empty(()).uniform_(min_area, 1.0))
    log_ratio = float(torch.empty(()).uniform_(np.log(3 / 4), np.log(4 / 3)))
    scale_w = min(1.0, np.sqrt(area * np.exp(log_ratio)))
    scale_h = min(1.0, area / scale_w)
    crop_w, crop_h = max(1, round(width * scale_w)), max(1, round(height * scale_h))
    left = int(torch.randint(0, width - crop_w + 1, ()))
    top = int(torch.randint(0, height - crop_h + 1, ()))
    return left, top, left + crop_w, top + crop_h


def crop_pair(image: Image.Image, mask: np.ndarray, box: tuple[int, int, int, int]) -> tuple[Image.Image, np.ndarray]:
    """Image and mask cut to the same box (left, top, right, bottom) at full resolution."""
    left, top, right, bottom = box
    return image.crop(box), np.ascontiguousarray(mask[top:bottom, left:right])


def jitter(image: Image.Image) -> Image.Image:
    """The authors' colour jitter 0.1/0.1/0.1 of the (resized) image (torch RNG)."""
    return COLOR_JITTER(image)
