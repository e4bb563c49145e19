"""The data-set checker: counts, problem files by name, polarity from sharpness."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.check import check_folder
from tools.check_dataset import main


def test_cuhk_polarity_is_white_blurred(shared_data: Path) -> None:
    report = check_folder(shared_data / "CUHK", max_images=30)
    assert report["pairs"] == 604 and report["unpaired"] == [] and report["size_mismatch"] == []
    assert report["mask_modes"] == {"L": 591, "RGBA": 13}
    assert report["polarity"]["label"] == "white=blurred" and report["polarity"]["confidence"] >= 0.9


def test_dut_sample_polarity_is_white_in_focus(shared_data: Path, capsys) -> None:
    assert main([str(shared_data / "DUT-sample")]) == 0
    text = capsys.readouterr().out
    assert "pairs:            5" in text and "white=in-focus (confidence 1.00" in text


def test_json_names_unpaired_and_mismatched_files(shared_data: Path, tmp_path: Path, capsys) -> None:
    copy = Path(shutil.copytree(shared_data / "DUT-sample", tmp_path / "dut"))
    shutil.copy(copy / "image" / "1.jpg", copy / "image" / "no_mask.jpg")
    Image.open(copy / "gt" / "4.bmp").resize((160, 160)).save(copy / "gt" / "4.bmp")
    (copy / "gt" / "notes.txt").write_text("not an image")
    (copy / "image" / "broken.png").write_bytes(b"not a png")
    shutil.copy(copy / "gt" / "1.bmp", copy / "gt" / "broken.bmp")
    assert main([str(copy), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"] == 5
    assert report["unpaired"] == ["image/no_mask.jpg"]
    assert report["size_mismatch"] == ["4.jpg"]
    assert report["size_mismatch_detail"] == [{"name": "4.jpg", "image_size": [320, 320],
                                               "mask_size": [160, 160]}]
    assert report["unreadable"] == ["broken.png"] and report["other_files"] == ["gt/notes.txt"]
    assert report["polarity"]["label"] == "white=in-focus"


def test_inverted_masks_flip_the_estimate(shared_data: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(shared_data / "DUT-sample", tmp_path / "dut"))
    for path in (copy / "gt").iterdir():
        Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    assert check_folder(copy)["polarity"]["label"] == "white=blurred"


def test_not_a_data_set(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    assert "expected an image folder" in capsys.readouterr().err


def test_one_class_and_zero_one_masks_are_named(shared_data: Path, tmp_path: Path, capsys) -> None:
    copy = Path(shutil.copytree(shared_data / "DUT-sample", tmp_path / "dut"))
    Image.fromarray(np.zeros((320, 320), np.uint8)).save(copy / "gt" / "2.bmp")
    Image.fromarray(np.full((320, 320), 255, np.uint8)).save(copy / "gt" / "3.bmp")
    raw = np.asarray(Image.open(copy / "gt" / "5.bmp"))
    (copy / "gt" / "5.bmp").unlink()
    Image.fromarray((raw >= 128).astype(np.uint8)).save(copy / "gt" / "5.png")
    assert main([str(copy)]) == 0
    text = capsys.readouterr().out
    assert "one-class masks:  2" in text
    assert "one-class mask: gt/2.bmp (all black)" in text and "one-class mask: gt/3.bmp (all white)" in text
    assert "mask values:      0-255 4, 0/1 1" in text
    report = check_folder(copy)
    assert report["one_class_masks"] == {"gt/2.bmp": "all black", "gt/3.bmp": "all white"}


def test_a_set_of_one_class_masks_is_a_problem(shared_data: Path, tmp_path: Path, capsys) -> None:
    copy = Path(shutil.copytree(shared_data / "DUT-sample", tmp_path / "dut"))
    for path in (copy / "gt").iterdir():
        Image.fromarray(np.zeros((320, 320), np.uint8)).save(path)
    assert main([str(copy)]) == 1
    assert "one-class masks:  5" in capsys.readouterr().out


def test_truncated_files_are_reported_with_every_other_problem(shared_data: Path, tmp_path: Path,
                                                               capsys) -> None:
    copy = Path(shutil.copytree(shared_data / "DUT-sample", tmp_path / "dut"))
    for path in (copy / "image" / "2.jpg", copy / "gt" / "3.bmp"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    shutil.copy(copy / "image" / "1.jpg", copy / "image" / "no_mask.jpg")
    Image.open(copy / "gt" / "4.bmp").resize((160, 160)).save(copy / "gt" / "4.bmp")
    assert main([str(copy), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert list(report["corrupt"]) == ["image/2.jpg", "gt/3.bmp"]
    assert all(reason.startswith("image file is truncated") for reason in report["corrupt"].values())
    assert report["unpaired"] == ["image/no_mask.jpg"] and report["size_mismatch"] == ["4.jpg"]
    assert report["pairs"] == 3 and report["polarity"]["label"] == "white=in-focus"
    assert main([str(copy)]) == 1
    assert "    corrupt: image/2.jpg (image file is truncated" in capsys.readouterr().out
