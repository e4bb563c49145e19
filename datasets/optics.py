"""Thin-lens optics and the layered defocus renderer behind the synthetic data (datasets.scenes).

Each layer is blurred, in linear light, by a disc of its circle-of-confusion radius

    r_px = coc_scale_px * |1/z - 1/focus_distance_m|,
    coc_scale_px = A * f * focus_distance_m / (focus_distance_m - f) / (2 * pixel_pitch),  A = f / N,

and composited back to front with its blurred alpha, then sensor noise is added. Depths are in metres,
quantised to millimetres before anything else, so that the in-focus mask `r_px(z) < coc_threshold_px`
and the stored depth agree exactly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from scipy import ndimage

SENSOR_WIDTH_MM = 36.0
COC_THRESHOLD_PX = 1.0
GAMMA = 2.2


@dataclass(frozen=True)
class Camera:
    """Thin-lens camera with a square sensor of `width_px` pixels across `sensor_width_mm`."""
    focal_length_mm: float
    f_number: float
    focus_distance_m: float
    width_px: int
    sensor_width_mm: float = SENSOR_WIDTH_MM

    @property
    def pixel_pitch_mm(self) -> float:
        return self.sensor_width_mm / self.width_px

    @property
    def focal_length_px(self) -> float:
        return self.focal_length_mm / self.pixel_pitch_mm

    @property
    def coc_scale_px(self) -> float:
        """k in r_px = k * |1/z - 1/z_focus| (z in metres)."""
        f = self.focal_length_mm / 1000.0
        aperture = f / self.f_number
        pitch = self.pixel_pitch_mm / 1000.0
        return aperture * f * self.focus_distance_m / (self.focus_distance_m - f) / (2.0 * pitch)

    def signed_coc_px(self, depth_m: np.ndarray | float) -> np.ndarray:
        """CoC radius in pixels, positive in front of the focal plane, negative behind it."""
        return self.coc_scale_px * (1.0 / np.asarray(depth_m, dtype=np.float64)
                                    - 1.0 / self.focus_distance_m)

    def coc_radius_px(self, depth_m: np.ndarray | float) -> np.ndarray:
        """CoC radius in pixels of points at `depth_m`."""
        return np.abs(self.signed_coc_px(depth_m))

    def as_dict(self) -> dict:
        return {**asdict(self), "pixel_pitch_mm": self.pixel_pitch_mm,
                "coc_scale_px": self.coc_scale_px}


@dataclass
class Layer:
    """A surface: sRGB colour [H,W,3] in [0,1], coverage alpha [H,W], depth (scalar or [H,W]) in m."""
    color: np.ndarray
    alpha: np.ndarray
    depth_m: float | np.ndarray
    description: dict = field(default_factory=dict)


@dataclass
class Rendering:
    """Rendered photo (uint8 RGB), exact in-focus mask, visible depth (m), CoC radius (px) and the index
    (into the `layers` given to `render`) of the front-most layer at each pixel."""
    image: np.ndarray
    in_focus: np.ndarray
    depth_m: np.ndarray
    coc_px: np.ndarray
    front_layer: np.ndarray


def quantise_depth(depth_m: float | np.ndarray) -> float | np.ndarray:
    """Depth rounded to whole millimetres (what depth/*.png can store)."""
    if np.isscalar(depth_m):
        return round(float(depth_m) * 1000.0) / 1000.0
    return np.round(np.asarray(depth_m, dtype=np.float64) * 1000.0) / 1000.0


def disc_kernel(radius: float) -> np.ndarray:
    """Normalised disc of `radius` pixels with an anti-aliased rim."""
    half = int(math.ceil(radius))
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    kernel = np.clip(radius + 0.5 - np.hypot(x, y), 0.0, 1.0).astype(np.float32)
    return kernel / kernel.sum()


def coc_bin_edges(max_radius: float, threshold: float) -> np.ndarray:
    """Radius bin edges: [0, threshold) is one bin (in focus), then steps of max(0.5 px, 20 %)."""
    edges = [threshold]
    while edges[-1] <= max_radius:
        edges.append(edges[-1] + max(0.5, 0.2 * edges[-1]))
    return np.asarray(edges)


def _blur_box(alpha: np.ndarray, radius: float) -> tuple[slice, slice]:
    """Rows/cols covered by `alpha` grown by the blur radius, clipped to the image."""
    rows, cols = np.nonzero(alpha)
    margin = int(math.ceil(radius)) + 1
    return (slice(max(rows.min() - margin, 0), min(rows.max() + margin + 1, alpha.shape[0])),
            slice(max(cols.min() - margin, 0), min(cols.max() + margin + 1, alpha.shape[1])))


def _blur_slanted(rgba: np.ndarray, alpha: np.ndarray, radius_map: np.ndarray,
                  threshold: float) -> np.ndarray:
    """Premultiplied RGBA of a layer whose depth varies: every pixel gathers the disc blur of the
    layer at the CoC radius of the nearest layer pixel, quantised to `coc_bin_edges` bins."""
    covered = alpha > 0
    nearest = ndimage.distance_transform_edt(~covered, return_distances=False, return_indices=True)
    bins = np.searchsorted(coc_bin_edges(float(radius_map[covered].max()), threshold), radius_map,
                           side="right")
    bins = bins[nearest[0], nearest[1]]
    out = np.zeros_like(rgba)
    for b in np.unique(bins):
        take = bins == b
        radius = float(radius_map[take & covered].mean())
        if radius < 0.5:
            out[take] = rgba[take]
            continue
        box = _blur_box(take, radius)
        blurred = cv2.filter2D(rgba[box], -1, disc_kernel(radius), borderType=cv2.BORDER_REFLECT)
        out[take] = blurred[take[box]]
    return out


def render(layers: list[Layer], camera: Camera, coc_threshold_px: float = COC_THRESHOLD_PX,
           noise_std: float = 0.0, shot_noise: float = 0.0,
           rng: np.random.Generator | None = None) -> Rendering:
    """Thin-lens rendering; layers are composited far to near (by their farthest point, ties in list
    order), the union of their alpha >= 0.5 must cover every pixel."""
    height, width = layers[0].alpha.shape
    depth = np.full((height, width), np.inf)
    front = np.full((height, width), -1, np.int16)
    accumulated = np.zeros((height, width, 4), np.float32)
    order = sorted(range(len(layers)), key=lambda i: (-float(np.max(layers[i].depth_m)), i))
    for index in order:
        layer = layers[index]
        z = quantise_depth(layer.depth_m)
        alpha = layer.alpha.astype(np.float32)
        nearer = (alpha >= 0.5) & (z < depth)
        depth = np.where(nearer, z, depth)
        front[nearer] = index
        if not alpha.any():
            continue
        radius = float(camera.coc_radius_px(z)) if np.isscalar(z) else camera.coc_radius_px(z)
        box = _blur_box(alpha, float(np.max(radius)))
        linear = np.power(np.clip(layer.color[box], 0.0, 1.0), GAMMA).astype(np.float32)
        rgba = np.concatenate([linear * alpha[box][..., None], alpha[box][..., None]], axis=2)
        if not np.isscalar(radius):
            blurred = _blur_slanted(rgba, alpha[box], radius[box], coc_threshold_px)
        elif radius >= 0.5:
            blurred = cv2.filter2D(rgba, -1, disc_kernel(radius), borderType=cv2.BORDER_REFLECT)
        else:
            blurred = rgba
        accumulated[box] = blurred + (1.0 - blurred[..., 3:]) * accumulated[box]
    if np.isinf(depth).any():
        raise ValueError("render: some pixels are covered by no layer (the backdrop must be opaque)")
    linear = accumulated[..., :3] / np.maximum(accumulated[..., 3:], 1e-6)
    srgb = np.power(np.clip(linear, 0.0, 1.0), 1.0 / GAMMA)
    if rng is not None and (noise_std > 0 or shot_noise > 0):
        sigma = np.sqrt(noise_std ** 2 + shot_noise * srgb)
        srgb = srgb + sigma * rng.standard_normal(srgb.shape).astype(np.float32)
    image = np.clip(np.round(srgb * 255.0), 0, 255).astype(np.uint8)
    coc = camera.coc_radius_px(depth)
    return Rendering(image, coc < coc_threshold_px, depth, coc.astype(np.float32), front)
