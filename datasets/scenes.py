"""Random layered defocus scenes for the synthetic data, rendered through a thin-lens camera.

A scene is a stack of layers (an opaque backdrop, optionally a ground plane whose depth grows towards
the horizon, and a few objects) with procedural textures: band-limited noise at random scales, 1/f
noise, stripes, checkers, dots, and a share of nearly textureless ("homogeneous") surfaces. The camera
and the renderer (each layer blurred by the disc of its circle of confusion, in linear light, and
composited back to front) are in datasets.optics. The rendering's in-focus mask is
`r_px(z) < coc_threshold_px` for the millimetre-quantised depth z of the front-most layer that covers the
pixel; `homogeneous_mask` is where that layer has the nearly textureless "flat" texture. Every image is
drawn from its own generator seeded by (seed, index).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .optics import SENSOR_WIDTH_MM, Camera, Layer, Rendering, quantise_depth, render

FLAT_SHARE = 0.2
MAX_DEPTH_M = 60.0
MIN_F_NUMBER, COMFORTABLE_F_NUMBER, MAX_F_NUMBER = 0.95, 1.4, 64.0
TEXTURES = ("noise", "fractal", "stripes", "checker", "dots", "flat")
TEXTURE_WEIGHTS = (0.3, 0.2, 0.12, 0.09, 0.09, FLAT_SHARE)
SHAPES = ("ellipse", "polygon", "box", "blob")


@dataclass(frozen=True)
class BlurRange:
    """Circle-of-confusion radii as shares of the image width, so that every --size looks alike.

    A surface is sharp below `sharp_share`, visibly blurred above `blurred_share`; surfaces of
    constant depth are kept out of the band between them. The label threshold sits in the band
    (1 px at 320 px). The most defocused surface has a CoC drawn log-uniformly in `max_share`.
    Calibrated against CUHK (bench/defocus_calibration.py)."""
    sharp_share: float = 0.002
    threshold_share: float = 1.0 / 320.0
    blurred_share: float = 0.012
    max_share: tuple[float, float] = (0.02, 0.06)

    def threshold_px(self, size: int) -> float:
        return self.threshold_share * size


def band_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with features of about `scale_px` pixels (bicubic upsampling)."""
    height, width = shape
    small = (max(2, int(height / scale_px) + 3), max(2, int(width / scale_px) + 3))
    noise = rng.standard_normal(small).astype(np.float32)
    big = cv2.resize(noise, (int(small[1] * scale_px) + 1, int(small[0] * scale_px) + 1),
                     interpolation=cv2.INTER_CUBIC)
    top = int(rng.integers(0, big.shape[0] - height + 1))
    left = int(rng.integers(0, big.shape[1] - width + 1))
    out = big[top:top + height, left:left + width]
    return (out - out.mean()) / (out.std() + 1e-6)


def _palette(rng: np.random.Generator, count: int) -> np.ndarray:
    hsv = np.stack([rng.uniform(0, 180, count), rng.uniform(20, 255, count),
                    rng.uniform(40, 255, count)], axis=1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0].astype(np.float32) / 255.0


def _blend(rng: np.random.Generator, field_: np.ndarray) -> np.ndarray:
    """Map a scalar field to colours between two random palette colours."""
    low, high = _palette(rng, 2)
    t = np.clip(field_, 0.0, 1.0)[..., None]
    return low * (1 - t) + high * t


def _rotated_coords(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    return x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)


def texture(rng: np.random.Generator, kind: str, shape: tuple[int, int]) -> np.ndarray:
    """sRGB texture [H,W,3] in [0,1] of the given kind (see TEXTURES)."""
    if kind == "flat":
        shade = 0.015 * band_noise(rng, shape, rng.uniform(0.3, 1.0) * max(shape))
        return np.clip(_palette(rng, 1)[0] + shade[..., None], 0, 1)
    if kind == "noise":
        value = 0.5 + rng.uniform(0.15, 0.35) * band_noise(rng, shape, np.exp(rng.uniform(0, np.log(24))))
    elif kind == "fractal":
        octaves = [band_noise(rng, shape, 2.0 ** k) * 2.0 ** (0.5 * k) for k in range(6)]
        total = sum(octaves)
        value = 0.5 + rng.uniform(0.15, 0.3) * total / total.std()
    elif kind in ("stripes", "checker"):
        u, v = _rotated_coords(rng, shape)
        period = rng.uniform(4, 32)
        wave = np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
        if kind == "checker":
            wave = wave * np.sin(2 * np.pi * v / period)
        value = 0.5 + 0.5 * np.tanh(rng.uniform(1, 6) * wave)
    elif kind == "dots":
        u, v = _rotated_coords(rng, shape)
        period = rng.uniform(6, 28)
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        value = (np.hypot(du, dv) < rng.uniform(0.2, 0.45) * period).astype(np.float32)
    else:
        raise ValueError(f"unknown texture {kind!r}; known: {', '.join(TEXTURES)}")
    grain = 0.05 * band_noise(rng, shape, 1.0)
    return np.clip(_blend(rng, value) + grain[..., None], 0.0, 1.0).astype(np.float32)


def shape_alpha(rng: np.random.Generator, kind: str, size: int, center: tuple[float, float],
                half_height: float, half_width: float) -> np.ndarray:
    """Anti-aliased coverage [size,size] of an object outline centred at (row, col)."""
    canvas = np.zeros((size, size), np.uint8)
    cy, cx = center
    shift = 4
    if kind == "ellipse":
        cv2.ellipse(canvas, (int(cx * 16), int(cy * 16)), (int(half_width * 16), int(half_height * 16)),
                    rng.uniform(-20, 20), 0, 360, 255, -1, cv2.LINE_AA, shift)
    elif kind in ("polygon", "box"):
        count = 4 if kind == "box" else int(rng.integers(5, 12))
        angles = np.sort(rng.uniform(0, 2 * np.pi, count)) if kind == "polygon" else \
            np.array([0.25, 0.75, 1.25, 1.75]) * np.pi + rng.uniform(-0.2, 0.2)
        radii = rng.uniform(0.6, 1.0, count) if kind == "polygon" else np.full(count, np.sqrt(2))
        pts = np.stack([cx + radii * half_width * np.cos(angles),
                        cy + radii * half_height * np.sin(angles)], axis=1)
        if kind == "box":
            pts = np.clip(pts, [cx - half_width, cy - half_height], [cx + half_width, cy + half_height])
        cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift)
    elif kind == "blob":
        y, x = np.mgrid[0:size, 0:size].astype(np.float32)
        envelope = 1 - np.hypot((y - cy) / max(half_height, 1), (x - cx) / max(half_width, 1))
        field_ = envelope + 0.25 * band_noise(rng, (size, size), max(half_width, half_height) / 2)
        return np.clip(field_ * max(half_width, half_height) / 2 + 0.5, 0, 1).astype(np.float32)
    else:
        raise ValueError(f"unknown shape {kind!r}; known: {', '.join(SHAPES)}")
    return canvas.astype(np.float32) / 255.0


def _texture_in_box(rng: np.random.Generator, kind: str, alpha: np.ndarray) -> np.ndarray:
    """Full-frame colour that is textured only where `alpha` covers (the rest stays black)."""
    rows, cols = np.nonzero(alpha)
    box = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
    color = np.zeros(alpha.shape + (3,), np.float32)
    color[box] = texture(rng, kind, (box[0].stop - box[0].start, box[1].stop - box[1].start))
    return color


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _pick_texture(rng: np.random.Generator) -> str:
    return str(rng.choice(TEXTURES, p=np.asarray(TEXTURE_WEIGHTS) / sum(TEXTURE_WEIGHTS)))


@dataclass
class _ObjectPlan:
    """An object before rasterisation: outline parameters, depth, and (on the ground) where it stands."""
    shape: str
    texture: str
    depth_m: float
    center: tuple[float, float]
    half_height: float
    aspect: float
    shape_seed: int
    height_m: float | None = None

    def alpha(self, size: int) -> np.ndarray:
        rng = np.random.default_rng(self.shape_seed)
        return shape_alpha(rng, self.shape, size, self.center, self.half_height, self.half_height * self.aspect)


def random_scene(rng: np.random.Generator, size: int, wide_dof: bool,
                 coc_threshold_px: float | None = None) -> tuple[list[Layer], Camera, dict]:
    """A random layered scene and a camera focused on one of its surfaces (all in focus if wide_dof).

    Blur is set relative to the image width (`BlurRange`): the most defocused surface gets a CoC of
    `max_share` x width, and every surface of constant depth is kept out of the ambiguous band
    between `sharp_share` and `blurred_share` x width, by moving it to the focal plane or away from
    it to `blurred_share`. Only the slanted ground plane crosses the band, as in real photos."""
    blur = BlurRange()
    threshold = blur.threshold_px(size) if coc_threshold_px is None else coc_threshold_px
    focal_mm = _log_uniform(rng, 24, 105)
    focal_px = focal_mm * size / SENSOR_WIDTH_MM
    backdrop_depth = _log_uniform(rng, 2.0, MAX_DEPTH_M)
    backdrop_kind = "flat" if rng.random() < 0.15 else _pick_texture(rng)
    backdrop = Layer(texture(rng, backdrop_kind, (size, size)), np.ones((size, size), np.float32),
                     backdrop_depth, {"kind": "backdrop", "texture": backdrop_kind})
    layers = [backdrop]
    ground = None
    if rng.random() < 0.5:
        horizon = rng.uniform(0.1, 0.55) * size
        camera_height = rng.uniform(0.4, 1.8)
        rows = np.arange(size, dtype=np.float64)[:, None] + 0.5
        depth = camera_height * focal_px / np.maximum(rows - horizon, 1e-3)
        depth = np.broadcast_to(np.minimum(depth, backdrop_depth), (size, size)).copy()
        alpha = np.broadcast_to((rows > horizon).astype(np.float32), (size, size)).copy()
        kind = _pick_texture(rng)
        ground = (horizon, camera_height)
        layers.append(Layer(texture(rng, kind, (size, size)), alpha, depth,
                            {"kind": "ground", "texture": kind, "horizon_row": horizon,
                             "camera_height_m": camera_height}))
    plans = []
    for _ in range(int(rng.integers(1, 6))):
        if ground is not None:
            horizon, camera_height = ground
            base_row = rng.uniform(horizon + 0.05 * size, 1.15 * size)
            depth = min(camera_height * focal_px / (base_row - horizon), backdrop_depth * 0.95)
            height_m = rng.uniform(0.3, 2.5)
            half_height = min(height_m * focal_px / depth, 1.2 * size) / 2
            center = (base_row - half_height, rng.uniform(0, size))
        else:
            depth, height_m = _log_uniform(rng, 0.5, 0.9 * backdrop_depth), None
            half_height = rng.uniform(0.08, 0.35) * size
            center = (rng.uniform(0.1, 0.9) * size, rng.uniform(0.1, 0.9) * size)
        plans.append(_ObjectPlan(str(rng.choice(SHAPES)), _pick_texture(rng), depth, center, half_height,
                                 rng.uniform(0.4, 1.3), int(rng.integers(2 ** 32)), height_m))
    alphas = [plan.alpha(size) for plan in plans]
    visible = [i for i, a in enumerate(alphas) if a.max() >= 0.5]
    if visible and rng.random() < 0.7:
        areas = np.array([alphas[i].sum() for i in visible])
        focus_plan = plans[visible[int(rng.choice(len(visible), p=areas / areas.sum()))]]
        focus_kind, focus = "object", focus_plan.depth_m
    else:
        focus_surface = layers[int(rng.integers(min(len(layers), 2)))]
        focus_kind = focus_surface.description["kind"]
        focus = (float(focus_surface.depth_m) if np.isscalar(focus_surface.depth_m)
                 else float(rng.choice(focus_surface.depth_m[focus_surface.alpha > 0.5])))
    target = (rng.uniform(0.3, 0.9) * threshold if wide_dof
              else _log_uniform(rng, *blur.max_share) * size)
    depths = [backdrop_depth] + [plan.depth_m for plan in plans]
    extra = [np.asarray(layer.depth_m) for layer in layers[1:]]
    spread = _defocus_spread(depths + extra, focus)
    if not wide_dof and spread > 0:
        backdrop.depth_m = _out_of_band(backdrop_depth, focus, spread, target, size, blur, math.inf)
        for plan in plans:
            moved = _out_of_band(plan.depth_m, focus, spread, target, size, blur, 0.95 * backdrop.depth_m)
            if moved != plan.depth_m and ground is not None:
                horizon, camera_height = ground
                plan.half_height = min(plan.height_m * focal_px / moved, 1.2 * size) / 2
                plan.center = (horizon + camera_height * focal_px / moved - plan.half_height, plan.center[1])
            plan.depth_m = moved
        if ground is not None:
            layers[1].depth_m = np.minimum(layers[1].depth_m, backdrop.depth_m)
    for plan in plans:
        alpha = plan.alpha(size)
        if alpha.max() < 0.5:
            continue
        layers.append(Layer(_texture_in_box(rng, plan.texture, alpha), alpha, plan.depth_m,
                            {"kind": "object", "shape": plan.shape, "texture": plan.texture}))
    scale = _miniature_scale(layers, focus, focal_mm, size, target)
    for layer in layers:
        layer.depth_m = quantise_depth(layer.depth_m * scale if np.isscalar(layer.depth_m)
                                       else np.asarray(layer.depth_m) * scale)
        if "camera_height_m" in layer.description:
            layer.description["camera_height_m"] *= scale
    focus = quantise_depth(focus * scale)
    camera = Camera(focal_mm, _f_number(layers, focus, focal_mm, size, target), focus, size)
    info = {"focus_on": focus_kind, "target_max_coc_px": target, "scene_scale": scale,
            "coc_threshold_px": threshold}
    return layers, camera, info


def _out_of_band(depth: float, focus: float, spread: float, target: float, size: int, blur: "BlurRange",
                 farthest: float) -> float:
    """`depth` moved out of the ambiguous CoC band: to the focal plane when it is nearer the sharp
    side, else away from focus until its CoC is `blurred_share` x width (staying nearer than
    `farthest`; if it cannot, to the focal plane)."""
    offset = 1.0 / depth - 1.0 / focus
    radius = target * abs(offset) / spread
    if radius <= blur.sharp_share * size or radius >= blur.blurred_share * size:
        return depth
    if radius < math.sqrt(blur.sharp_share * blur.blurred_share) * size:
        return focus
    inverse = 1.0 / focus + math.copysign(blur.blurred_share * size / target * spread, offset)
    if inverse <= 1.0 / farthest:
        return focus
    return 1.0 / inverse


def _defocus_spread(depths: list, focus: float) -> float:
    """max |1/z - 1/z_focus| over the given depths (scalars or arrays)."""
    return max(float(np.max(np.abs(1.0 / np.asarray(d) - 1.0 / focus))) for d in depths)


def _f_number(layers: list[Layer], focus: float, focal_mm: float, size: int, target: float) -> float:
    """Aperture giving the most defocused surface a CoC of `target` px, within [MIN, MAX]_F_NUMBER."""
    spread = _defocus_spread([la.depth_m for la in layers], focus)
    if spread == 0:
        return MAX_F_NUMBER
    unit = Camera(focal_mm, 1.0, focus, size).coc_scale_px
    return float(np.clip(unit * spread / target, MIN_F_NUMBER, MAX_F_NUMBER))


def _miniature_scale(layers: list[Layer], focus: float, focal_mm: float, size: int,
                     target: float) -> float:
    """Factor (<= 1) shrinking all depths when even f/1.4 would not blur enough: a closer, smaller
    scene looks the same to the camera and defocuses more. Keeps every surface beyond 3 focal lengths."""
    spread = _defocus_spread([la.depth_m for la in layers], focus)
    needed = Camera(focal_mm, 1.0, focus, size).coc_scale_px * spread / target
    if needed >= COMFORTABLE_F_NUMBER:
        return 1.0
    nearest = min(float(np.min(la.depth_m)) for la in layers)
    return max(needed / COMFORTABLE_F_NUMBER, 3 * focal_mm / 1000.0 / nearest)


def generate_image(seed: int, index: int, size: int = 320, wide_dof: bool = False,
                   coc_threshold_px: float | None = None) -> tuple[Rendering, dict]:
    """Image `index` of the set with `seed`: its rendering and its meta record (label threshold:
    `coc_threshold_px`, or 1 px per 320 px of width)."""
    rng = np.random.default_rng([seed, index])
    layers, camera, info = random_scene(rng, size, wide_dof, coc_threshold_px)
    noise_std, shot = rng.uniform(0.002, 0.01), rng.uniform(0.0, 4e-4)
    rendering = render(layers, camera, info["coc_threshold_px"], noise_std, shot, rng)
    meta = {"camera": camera.as_dict(), "wide_dof": wide_dof, **info,
            "noise_std": noise_std, "shot_noise": shot,
            "in_focus_share": float(rendering.in_focus.mean()),
            "layers": [{**la.description, "depth_m": [float(np.min(la.depth_m)), float(np.max(la.depth_m))],
                        "coc_radius_px": [float(np.min(camera.coc_radius_px(la.depth_m))),
                                          float(np.max(camera.coc_radius_px(la.depth_m)))]}
                       for la in layers]}
    meta["homogeneous_share"] = float(homogeneous_mask(rendering, meta["layers"]).mean())
    return rendering, meta


def homogeneous_mask(rendering: Rendering, layers_meta: list[dict]) -> np.ndarray:
    """Pixels whose front-most surface has the "flat" texture (a colour with 1.5 % shading)."""
    flat = [i for i, layer in enumerate(layers_meta) if layer["texture"] == "flat"]
    return np.isin(rendering.front_layer, flat)
