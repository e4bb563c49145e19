"""Split metrics on homogeneous / textured pixels: a hand-made case, checked against values computed by
hand, directly and through test.py on a folder set with a homogeneous/ folder."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import DatasetError, build_dataset
from metrics.regions import RegionMetrics

ROOT = Path(__file__).resolve().parents[1]

# Three 4x4 images; GT 1 = in-focus. The prediction is right on the textured pixels and wrong on the
# homogeneous ones (A: inverted; C: P = 0.2 everywhere, i.e. all called blurred).
GT_A = np.array([[0, 0, 1, 1]] * 4, np.float32)            # left half blurred
PRED_A = GT_A.copy()
PRED_A[0] = 1 - GT_A[0]                                     # top row inverted ...
HOMOGENEOUS_A = np.zeros((4, 4), bool)
HOMOGENEOUS_A[0] = True                                     # ... and the top row is homogeneous
GT_B = np.ones((4, 4), np.float32)                          # all in focus, all textured
PRED_B = np.full((4, 4), 0.8, np.float32)
HOMOGENEOUS_B = np.zeros((4, 4), bool)
GT_C = np.array([[0] * 4] * 2 + [[1] * 4] * 2, np.float32)  # top half blurred, all homogeneous
PRED_C = np.full((4, 4), 0.2, np.float32)
HOMOGENEOUS_C = np.ones((4, 4), bool)
CASES = {"a": (PRED_A, GT_A, HOMOGENEOUS_A), "b": (PRED_B, GT_B, HOMOGENEOUS_B), "c": (PRED_C, GT_C, HOMOGENEOUS_C)}

# By hand. Homogeneous: A's 4 pixels (errors 1, TP 0, predicted blur 2, GT blur 2) and C's 16 (errors
# 8 x 0.2 + 8 x 0.8 = 8, TP 8, predicted 16, GT 8): MAE 12 / 20; P = 8 / 18, R = 8 / 10;
# F = 1.3 P R / (0.3 P + R); IoU = 8 / (18 + 10 - 8).
P, R = 8 / 18, 8 / 10
HOMOGENEOUS = {"mae": 0.6, "fbeta": 1.3 * P * R / (0.3 * P + R), "iou": 0.4, "pixels": 20, "images": 2,
               "share": 20 / 48}
# Textured: A's 12 pixels (no error, TP 6, predicted 6, GT 6) and B's 16 (errors 0.2, nothing blurred).
TEXTURED = {"mae": 16 * 0.2 / 28, "fbeta": 1.0, "iou": 1.0, "pixels": 28, "images": 2, "share": 28 / 48}
ROWS = {"a": (1.0, 0.0), "b": (None, 0.2), "c": (0.6 / 1.2, None)}  # per image MAE (homogeneous, textured)


def check(summary: dict) -> None:
    assert HOMOGENEOUS["fbeta"] == pytest.approx(0.4952381, abs=1e-7)
    for region, expected in (("homogeneous", HOMOGENEOUS), ("textured", TEXTURED)):
        for key, value in expected.items():
            assert summary[region][key] == pytest.approx(value, abs=1e-6), (region, key)


def test_split_metrics_by_hand():
    metrics = RegionMetrics()
    for name, (pred, gt, homogeneous) in CASES.items():
        row = metrics.update(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(homogeneous), name)
        expected = ROWS[name]
        for key, value in zip(("mae_homogeneous", "mae_textured"), expected):
            assert (row[key] is None) if value is None else row[key] == pytest.approx(value, abs=1e-6)
    check(metrics.summary())


def test_a_region_without_pixels_has_no_scores():
    metrics = RegionMetrics()
    metrics.update(torch.from_numpy(PRED_B), torch.from_numpy(GT_B), torch.from_numpy(HOMOGENEOUS_B), "b")
    summary = metrics.summary()
    assert summary["homogeneous"] == {"mae": None, "fbeta": None, "iou": None, "pixels": 0, "share": 0.0, "images": 0}
    # nothing blurred, nothing predicted blurred: a perfect score on the blur class
    assert summary["textured"]["fbeta"] == 1.0 and summary["textured"]["iou"] == 1.0


def write_case(root: Path) -> None:
    for sub in ("image", "gt", "homogeneous", "maps"):
        (root / sub).mkdir(parents=True)
    for name, (pred, gt, homogeneous) in CASES.items():
        Image.fromarray(np.full((4, 4, 3), 128, np.uint8)).save(root / "image" / f"{name}.png")
        Image.fromarray((gt * 255).astype(np.uint8)).save(root / "gt" / f"{name}.png")
        Image.fromarray(homogeneous.astype(np.uint8) * 255).save(root / "homogeneous" / f"{name}.png")
        Image.fromarray(np.round(pred * 255).astype(np.uint8)).save(root / "maps" / f"{name}.png")


@pytest.mark.parametrize("protocol", ["official", "standard"])
def test_test_py_reports_the_split_in_results_json_and_the_table(tmp_path: Path, protocol: str):
    write_case(tmp_path / "set")
    spec = importlib.util.spec_from_file_location("test_script", ROOT / "test.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = script.main(["--pred-dir", str(tmp_path / "set" / "maps"), "--label", "handmade", "--dataset",
                            f"folder:{tmp_path / 'set'}:white=in-focus", "--out", str(tmp_path / "out"),
                            "--protocol", protocol, "--workers", "0"])
    assert code == 0
    entry = json.loads((tmp_path / "out" / "results.json").read_text())["results"][0]
    check(entry["regions"])
    assert "pooled" in entry["regions"]["definition"]
    assert "| .600 / .495 / .400 (41.7%) | .114 / 1.000 / 1.000 |" in stdout.getvalue()
    csv_text = (tmp_path / "out" / "handmade" / "set" / "per_image.csv").read_text().splitlines()
    assert csv_text[0].endswith("mae_homogeneous,mae_textured")
    assert csv_text[1].endswith("1.000000,0.000000") and csv_text[2].endswith(",0.200000")


def test_missing_or_mis_sized_region_masks_are_named(tmp_path: Path):
    write_case(tmp_path / "set")
    (tmp_path / "set" / "homogeneous" / "b.png").unlink()
    expr = f"folder:{tmp_path / 'set'}:white=in-focus"
    with pytest.raises(DatasetError, match=r"homogeneous: no homogeneous-region mask for 1 of 3 .*b\.png"):
        build_dataset(expr, "test")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "set" / "homogeneous" / "b.png")
    with pytest.raises(DatasetError, match=r"homogeneous: region masks whose size differs from their GT mask: "
                                           r"b\.png \(4x5, GT 4x4\)"):
        build_dataset(expr, "test")
    (tmp_path / "set" / "homogeneous" / "b.png").write_text("not a PNG")
    with pytest.raises(DatasetError, match=r"b\.png: not a readable image"):
        build_dataset(expr, "test")
