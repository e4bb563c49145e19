"""Synthetic defocus set: determinism, exact masks, physical consistency, loaders, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from datasets import DepthDataset, build_dataset
from datasets.optics import Camera, Layer, disc_kernel, render
from datasets.scenes import homogeneous_mask, texture
from datasets.synthetic import generate_dataset, is_wide_dof
from tools.make_synthetic import main

SIZE = 96


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("syn") / "set", n=9, seed=5, size=SIZE,
                            wide_dof=0.34, workers=1)


def test_same_seed_gives_identical_files_whatever_the_worker_count(small_set: Path, tmp_path: Path) -> None:
    again = generate_dataset(tmp_path / "again", n=9, seed=5, size=SIZE, wide_dof=0.34, workers=2)
    assert _files(again) == _files(small_set)
    other = generate_dataset(tmp_path / "other", n=2, seed=6, size=SIZE, wide_dof=0.34)
    assert _files(other)["image/00000.png"] != _files(small_set)["image/00000.png"]


def test_layout_and_meta(small_set: Path) -> None:
    for sub in ("image", "gt", "depth", "homogeneous"):
        assert sorted(p.name for p in (small_set / sub).iterdir()) == [f"{i:05d}.png" for i in range(9)]
    meta = json.loads((small_set / "meta.json").read_text())
    shares = [np.asarray(Image.open(small_set / "homogeneous" / f"{i:05d}.png")).mean() / 255 for i in range(9)]
    assert shares == pytest.approx([record["homogeneous_share"] for record in meta["images"]], abs=1e-12)
    assert 0 < np.mean(shares) < 0.6
    assert meta["mask_polarity"] == "white=in-focus" and len(meta["images"]) == 9
    assert Image.open(small_set / "depth" / "00000.png").mode.startswith("I")
    assert sum(record["wide_dof"] for record in meta["images"]) == 3  # floor(9 * 0.34)


def _two_planes(focus_m: float) -> tuple[list[Layer], Camera, np.ndarray]:
    rng = np.random.default_rng(0)
    square = np.zeros((SIZE, SIZE), np.float32)
    square[30:70, 20:60] = 1.0
    layers = [Layer(texture(rng, "noise", (SIZE, SIZE)), np.ones((SIZE, SIZE), np.float32), 10.0),
              Layer(texture(rng, "noise", (SIZE, SIZE)), square, 2.0)]
    return layers, Camera(100.0, 1.2, focus_m, SIZE), square.astype(bool)


def test_two_plane_scene_gives_the_exact_mask() -> None:
    layers, camera, square = _two_planes(focus_m=2.0)
    assert camera.coc_radius_px(10.0) > 3 and camera.coc_radius_px(2.0) == 0
    near_focus = render(layers, camera)
    assert np.array_equal(near_focus.in_focus, square)
    assert np.array_equal(near_focus.depth_m, np.where(square, 2.0, 10.0))
    far_focus = render(*_two_planes(focus_m=10.0)[:2])
    assert np.array_equal(far_focus.in_focus, ~square)


@pytest.mark.parametrize("flat_layer", [0, 1])
def test_homogeneous_mask_is_where_the_front_surface_is_flat(flat_layer: int) -> None:
    layers, camera, square = _two_planes(focus_m=2.0)
    kinds = ["noise", "noise"]
    kinds[flat_layer] = "flat"
    rendering = render(layers, camera)
    assert np.array_equal(rendering.front_layer, square.astype(np.int16))
    expected = square if flat_layer == 1 else ~square  # the near square hides the backdrop
    assert np.array_equal(homogeneous_mask(rendering, [{"texture": kind} for kind in kinds]), expected)


def _high_frequency(image: np.ndarray, region: np.ndarray) -> float:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.abs(cv2.Laplacian(grey, cv2.CV_32F))[region].mean())


def test_blurred_region_has_far_less_high_frequency_energy() -> None:
    layers, camera, square = _two_planes(focus_m=2.0)
    image = render(layers, camera).image
    inside = cv2.erode(square.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    outside = cv2.erode((~square).astype(np.uint8), np.ones((17, 17), np.uint8)).astype(bool)
    assert _high_frequency(image, outside) < 0.3 * _high_frequency(image, inside)
    swapped = render(*_two_planes(focus_m=10.0)[:2]).image
    assert _high_frequency(swapped, inside) < 0.3 * _high_frequency(swapped, outside)


def test_slanted_plane_mask_follows_the_circle_of_confusion() -> None:
    rng = np.random.default_rng(1)
    depth = np.repeat(np.linspace(1.0, 8.0, SIZE)[:, None], SIZE, axis=1)
    ground = Layer(texture(rng, "fractal", (SIZE, SIZE)), np.ones((SIZE, SIZE), np.float32), depth)
    camera = Camera(100.0, 1.4, 3.0, SIZE)
    result = render([ground], camera)
    radius = camera.coc_radius_px(np.round(depth * 1000) / 1000)
    assert np.array_equal(result.in_focus, radius < 1.0)
    assert 0.05 < result.in_focus.mean() < 0.5
    sharp_rows = result.in_focus.all(axis=1)
    assert _high_frequency(result.image, np.broadcast_to(~result.in_focus.any(axis=1)[:, None] & (radius > 3),
                                                         (SIZE, SIZE))) \
        < 0.5 * _high_frequency(result.image, np.broadcast_to(sharp_rows[:, None], (SIZE, SIZE)))


def test_masks_match_depth_and_camera_parameters(small_set: Path) -> None:
    meta = json.loads((small_set / "meta.json").read_text())
    for record in meta["images"]:
        name = record["name"]
        camera = record["camera"]
        depth_m = np.asarray(Image.open(small_set / "depth" / name), dtype=np.float64) / 1000.0
        radius = camera["coc_scale_px"] * np.abs(1.0 / depth_m - 1.0 / camera["focus_distance_m"])
        gt = np.asarray(Image.open(small_set / "gt" / name)) == 255
        assert np.array_equal(gt, radius < meta["coc_threshold_px"]), name
        rebuilt = Camera(camera["focal_length_mm"], camera["f_number"], camera["focus_distance_m"],
                         camera["width_px"], camera["sensor_width_mm"])
        assert rebuilt.coc_scale_px == pytest.approx(camera["coc_scale_px"], rel=1e-12)
        if record["wide_dof"]:
            assert gt.all()


def test_shallow_images_have_both_regions_on_average(small_set: Path) -> None:
    meta = json.loads((small_set / "meta.json").read_text())
    shares = [r["in_focus_share"] for r in meta["images"] if not r["wide_dof"]]
    assert 0.05 < np.mean(shares) < 0.9
    assert any(0.02 < s < 0.98 for s in shares)


def test_wide_dof_share_is_exact_and_spread() -> None:
    chosen = [i for i in range(100) if is_wide_dof(i, 0.1)]
    assert len(chosen) == 10 and chosen[0] == 9 and chosen[-1] == 99


def test_disc_kernel() -> None:
    kernel = disc_kernel(3.0)
    assert kernel.shape == (7, 7) and kernel.sum() == pytest.approx(1.0)
    assert kernel[3, 3] == kernel.max() and kernel[0, 0] == 0
    assert disc_kernel(0.2).max() == pytest.approx(1.0)


def test_synthetic_set_loads_as_pairs_and_depth(small_set: Path) -> None:
    pairs = build_dataset(f"synthetic:{small_set}", "train", img_size=SIZE, augment=False)
    assert len(pairs) == 9
    item = pairs[0]
    gt = np.asarray(Image.open(small_set / "gt" / "00000.png")) == 255
    assert np.array_equal(item["mask"][0].numpy().astype(bool), gt)
    depth = DepthDataset(small_set, img_size=SIZE, augment=False)
    sample = depth[0]
    raw = np.asarray(Image.open(small_set / "depth" / "00000.png"), dtype=np.float32)
    assert sample["depth"].shape == (1, SIZE, SIZE) and sample["image"].shape == (3, SIZE, SIZE)
    assert np.allclose(sample["depth"][0].numpy(), 1000.0 / raw)
    assert len(DepthDataset(small_set, img_size=32)[1]["depth"][0]) == 32


def test_cli_writes_a_set_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    assert main([str(out), "--n", "2", "--size", "48", "--seed", "1", "--workers", "1", "--format", "jpg"]) == 0
    assert sorted(p.name for p in (out / "image").iterdir()) == ["00000.jpg", "00001.jpg"]
    with pytest.raises(SystemExit) as stop:
        main([str(out), "--n", "2", "--size", "48"])
    assert stop.value.code == 2 and "not empty" in capsys.readouterr().err
