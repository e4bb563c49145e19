"""Data sets on the real CUHK / DUT files: registry, splits, polarity, pairing rules, transforms."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import datasets.base
from datasets import (DatasetError, DatasetWarning, MaskPolarity, PhotoDataset, build_dataset,
                      collate_test, dataset_names)
from datasets.polarity import load_mask
from datasets.transforms import resize_image

# The authors' Normalize (spec/PROTOCOL.md, training step 4), typed here rather than read from datasets.transforms.
AUTHORS_MEAN = (0.485, 0.456, 0.406)
AUTHORS_STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def cuhk_split(spec_dir: Path) -> Path:
    return spec_dir / "splits" / "cuhk_te1.txt"


@pytest.fixture(scope="module")
def split_names(cuhk_split: Path) -> list[str]:
    return [line.split("--")[1].strip() for line in cuhk_split.read_text().splitlines() if line.strip()]


@pytest.fixture
def dut_copy(shared_data: Path, tmp_path: Path) -> Path:
    """A writable copy of the 5-pair DUT sample."""
    return Path(shutil.copytree(shared_data / "DUT-sample", tmp_path / "dut"))


def test_registry_lists_the_papers_sets() -> None:
    assert set(dataset_names()) >= {"CUHK-TR-1", "CUHK-TE-1", "CUHK-TR-2", "CUHK-TE-2", "DUT-TR",
                                    "DUT-TE", "CTCUG", "EBD", "EBD-1305"}


def test_cuhk_tr1_is_the_604_training_pairs(shared_data: Path, cuhk_split: Path,
                                            split_names: list[str]) -> None:
    ds = build_dataset("CUHK-TR-1", "train", root=shared_data, split_file=cuhk_split, img_size=64)
    assert len(ds) == 604 and ds.name == "CUHK-TR-1"
    names = {p.name for p in ds.pairs}
    assert not names & set(split_names)
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}


def test_cuhk_masks_are_inverted_to_one_is_in_focus(shared_data: Path, cuhk_split: Path) -> None:
    ds = build_dataset("CUHK-TR-1", "test", root=shared_data, split_file=cuhk_split)
    item = ds[3]
    raw = np.asarray(Image.open(shared_data / "CUHK" / "gt" / (Path(item["name"]).stem + ".png")).convert("L"))
    expected = (raw < 128).astype(np.float32)  # CUHK stores white = blurred
    assert np.array_equal(item["mask"][0].numpy(), expected)
    assert 0 < expected.mean() < 1
    assert item["image_size"] == raw.shape and ds.size_mismatch == []


def test_cuhk_te1_fails_naming_the_100_missing_files(shared_data: Path, cuhk_split: Path,
                                                     split_names: list[str]) -> None:
    with pytest.raises(DatasetError) as error:
        build_dataset("CUHK-TE-1", "test", root=shared_data, split_file=cuhk_split)
    message = str(error.value)
    assert "100 of the 100" in message
    assert all(name in message for name in split_names)


def test_split_list_is_found_under_the_root_in_the_authors_folder(shared_data: Path, cuhk_split: Path,
                                                                  tmp_path: Path) -> None:
    cuhk = tmp_path / "shidatatset"
    cuhk.mkdir()
    for sub in ("image", "gt"):
        (cuhk / sub).symlink_to(shared_data / "CUHK" / sub)
    with pytest.raises(DatasetError, match="needs the split list"):
        build_dataset("CUHK-TR-1", "train", root=tmp_path)
    shutil.copy(cuhk_split, cuhk / "split.txt")
    assert len(build_dataset("CUHK-TR-1", "train", root=tmp_path)) == 604


def test_rgba_masks_load_as_grey(shared_data: Path) -> None:
    rgba = [p for p in sorted((shared_data / "CUHK" / "gt").iterdir()) if Image.open(p).mode == "RGBA"]
    assert len(rgba) == 13
    for path in rgba[:3]:
        grey = np.asarray(Image.open(path).convert("L"))
        mask = load_mask(path, MaskPolarity.WHITE_BLURRED)
        assert mask.shape == grey.shape and np.array_equal(mask, (grey < 128).astype(np.uint8))


def test_dut_grey_masks_are_binarised_at_half(shared_data: Path) -> None:
    ds = build_dataset("folder:" + str(shared_data / "DUT-sample") + ":white=in-focus", "test", img_size=64)
    raws = [np.asarray(Image.open(shared_data / "DUT-sample" / "gt" / f"{i}.bmp")) for i in range(1, 6)]
    assert any(((raw > 0) & (raw < 255)).any() for raw in raws)  # anti-aliased grey levels exist
    for item in ds:
        raw = np.asarray(Image.open(shared_data / "DUT-sample" / "gt" / (Path(item["name"]).stem + ".bmp")))
        assert np.array_equal(item["mask"][0].numpy(), (raw >= 128).astype(np.float32))
        assert item["mask"].shape == (1, 320, 320) and item["image"].shape == (3, 64, 64)


def test_binarisation_threshold_is_the_authors_round(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 127, 128, 255]], np.uint8)).save(path)
    assert load_mask(path, MaskPolarity.WHITE_IN_FOCUS).tolist() == [[0, 0, 1, 1]]
    assert load_mask(path, MaskPolarity.WHITE_BLURRED).tolist() == [[1, 1, 0, 0]]


def test_folder_without_polarity_is_estimated_with_a_warning(shared_data: Path) -> None:
    with pytest.warns(DatasetWarning, match="estimated white=in-focus"):
        ds = build_dataset("folder:" + str(shared_data / "DUT-sample"), "test")
    assert ds.polarity is MaskPolarity.WHITE_IN_FOCUS


def test_unpaired_image_is_an_error_for_training_and_a_warning_for_testing(dut_copy: Path) -> None:
    shutil.copy(dut_copy / "image" / "1.jpg", dut_copy / "image" / "extra.jpg")
    expr = f"folder:{dut_copy}:white=in-focus"
    with pytest.raises(DatasetError, match="images without a mask: extra.jpg"):
        build_dataset(expr, "train")
    with pytest.warns(DatasetWarning, match=r"left out of the test set: images without a mask: extra\.jpg"):
        ds = build_dataset(expr, "test")
    assert len(ds) == 5


def test_size_mismatch_is_flagged_for_testing_and_refused_for_training(dut_copy: Path) -> None:
    Image.open(dut_copy / "gt" / "2.bmp").resize((300, 200)).save(dut_copy / "gt" / "2.bmp")
    expr = f"folder:{dut_copy}:white=in-focus"
    with pytest.raises(DatasetError, match=r"2\.jpg \(image 320x320, mask 200x300\)"):
        build_dataset(expr, "train")
    with pytest.warns(DatasetWarning, match=r"size_mismatch.*2\.jpg"):
        ds = build_dataset(expr, "test")
    assert ds.size_mismatch == ["2.jpg"] and len(ds) == 5
    item = ds[1]
    assert item["name"] == "2.jpg" and item["mask"].shape == (1, 200, 300) and item["image_size"] == (320, 320)


def test_split_list_naming_missing_files_fails_with_their_names(dut_copy: Path, tmp_path: Path) -> None:
    cuhk = tmp_path / "root" / "CUHK"
    shutil.copytree(dut_copy, cuhk)
    for folder in ("image", "gt"):
        for path in (cuhk / folder).iterdir():
            path.rename(path.with_name("out_of_focus000" + path.name))
    split = tmp_path / "te.txt"
    split.write_text("1.bmp--out_of_focus0001.jpg\n2.bmp--out_of_focus0009.jpg\n3.bmp--out_of_focus0008.JPG")
    with pytest.raises(DatasetError, match=r"2 of the 3 .*out_of_focus0009\.jpg, out_of_focus0008\.JPG"):
        build_dataset("CUHK-TE-1", "test", root=tmp_path / "root", split_file=split)
    split.write_text("1.bmp--out_of_focus0001.jpg\n2.bmp--out_of_focus0003.JPG")
    with pytest.warns(DatasetWarning, match="the paper's set has"):
        test = build_dataset("CUHK-TE-1", "test", root=tmp_path / "root", split_file=split)
        train = build_dataset("CUHK-TR-1", "train", root=tmp_path / "root", split_file=split)
    assert [p.name for p in test.pairs] == ["out_of_focus0001.jpg", "out_of_focus0003.jpg"]
    assert [p.name for p in train.pairs] == ["out_of_focus0002.jpg", "out_of_focus0004.jpg",
                                             "out_of_focus0005.jpg"]


def test_authors_dut_and_ctcug_layouts_and_polarities(dut_copy: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(dut_copy / "image", root / "DUT/DUT-DBD_Dataset/DUT600S_Training")
    shutil.copytree(dut_copy / "gt", root / "DUT/DUT-DBD_Dataset/DUT600GT_Training")
    shutil.copytree(dut_copy / "image", root / "CTCUG/CTCUG_images")
    shutil.copytree(dut_copy / "gt", root / "CTCUG/CTCUG_gt")
    with pytest.warns(DatasetWarning, match="DUT-TR: 5 pairs"):
        dut = build_dataset("DUT-TR", "test", root=root)
    with pytest.warns(DatasetWarning, match="CTCUG: 5 pairs"):
        ctcug = build_dataset("CTCUG", "test", root=root)
    assert torch.equal(dut[0]["mask"], 1 - ctcug[0]["mask"])  # DUT white = in-focus, CTCUG white = blurred


def _tiny_set(folder: Path, count: int) -> None:
    for sub in ("image", "gt"):
        (folder / sub).mkdir(parents=True)
    pixels = np.zeros((4, 4), np.uint8)
    for i in range(1, count + 1):
        Image.fromarray(pixels).convert("RGB").save(folder / "image" / f"{i}.png")
        Image.fromarray(pixels).save(folder / "gt" / f"{i}.png")


def test_ebd_1305_takes_the_first_1305_in_numeric_order_or_a_list(tmp_path: Path) -> None:
    _tiny_set(tmp_path / "EBD", 1605)
    ds = build_dataset("EBD-1305", "test", root=tmp_path)
    assert len(ds) == 1305 and ds.pairs[-1].name == "1305.png" and ds.pairs[0].name == "1.png"
    assert len(build_dataset("EBD", "test", root=tmp_path)) == 1605
    (tmp_path / "shallow.txt").write_text("7.png\n1600.png\n")
    with pytest.warns(DatasetWarning, match="the paper's set has 1305"):
        listed = build_dataset("EBD-1305", "test", root=tmp_path, split_file=tmp_path / "shallow.txt")
    assert [p.name for p in listed.pairs] == ["7.png", "1600.png"]
    (tmp_path / "EBD" / "image" / "2.png").unlink()
    (tmp_path / "EBD" / "gt" / "2.png").unlink()
    with pytest.raises(DatasetError, match="needs all 1605 EBD images"):
        build_dataset("EBD-1305", "test", root=tmp_path)


def test_expression_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown data set 'NOPE'"):
        build_dataset("NOPE", "test", root=tmp_path)
    with pytest.raises(DatasetError, match=r"DUT-TE: no data under .*DUT-TE/image \+ DUT-TE/gt"):
        build_dataset("DUT-TE", "test", root=tmp_path)
    with pytest.raises(DatasetError, match="evaluate test sets one at a time"):
        build_dataset("DUT-TE+CTCUG", "test", root=tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        build_dataset("DUT-TE", "val", root=tmp_path)


def test_plus_joins_training_sets(shared_data: Path, dut_copy: Path) -> None:
    expr = f"folder:{shared_data / 'DUT-sample'}:white=in-focus+folder:{dut_copy}:white=in-focus"
    ds = build_dataset(expr, "train", img_size=32)
    assert len(ds) == 10 and ds.name == expr and ds.size_mismatch == []
    assert ds[7]["mask"].shape == (1, 32, 32)


def test_resize_is_the_authors_pil_bilinear(shared_data: Path) -> None:
    path = shared_data / "CUHK" / "image" / "out_of_focus0001.jpg"
    image = Image.open(path).convert("RGB")
    ours = np.asarray(resize_image(image, 320))
    assert np.array_equal(ours, np.asarray(TF.resize(image, [320, 320])))
    assert np.array_equal(ours, np.asarray(image.resize((320, 320), Image.BILINEAR)))
    assert not np.array_equal(ours, np.asarray(image.resize((320, 320), Image.NEAREST)))
    ds = build_dataset(f"folder:{shared_data / 'CUHK'}:white=blurred", "test")
    authors = TF.normalize(TF.to_tensor(TF.resize(image, [320, 320])), AUTHORS_MEAN, AUTHORS_STD)
    assert torch.equal(ds[0]["image"], authors)


def test_training_masks_use_nearest_resize(shared_data: Path) -> None:
    ds = build_dataset(f"folder:{shared_data / 'CUHK'}:white=blurred", "train", augment=False, img_size=96)
    item = ds[0]
    raw = Image.open(shared_data / "CUHK" / "gt" / "out_of_focus0001.png").convert("L")
    expected = np.asarray(raw.resize((96, 96), Image.NEAREST)) < 128
    assert np.array_equal(item["mask"][0].numpy(), expected.astype(np.float32))


def test_augmentation_flips_image_and_mask_together(shared_data: Path) -> None:
    expr = f"folder:{shared_data / 'DUT-sample'}:white=in-focus"
    plain = build_dataset(expr, "train", augment=False, img_size=64)[0]
    augmented = build_dataset(expr, "train", augment=True, img_size=64)
    flips = 0
    torch.manual_seed(0)
    for _ in range(8):
        item = augmented[0]
        flipped = torch.equal(item["mask"], plain["mask"].flip(-1))
        assert flipped or torch.equal(item["mask"], plain["mask"])
        reference = plain["image"].flip(-1) if flipped else plain["image"]
        assert 0 < (item["image"] - reference).abs().mean() < 0.5  # jittered, same picture
        flips += flipped
    assert 0 < flips < 8


def test_cache_gives_the_same_items_without_touching_files(shared_data: Path, monkeypatch) -> None:
    expr = f"folder:{shared_data / 'DUT-sample'}:white=in-focus"
    cached = build_dataset(expr, "test", cache=True, img_size=64)
    plain = build_dataset(expr, "test", img_size=64)

    def no_files(path):
        raise AssertionError(f"cached data set opened {path}")

    monkeypatch.setattr(datasets.base, "load_rgb", no_files)
    monkeypatch.setattr(datasets.base, "load_mask", no_files)
    for index in range(len(plain.pairs)):
        a, b = cached[index], plain.pairs[index]
        assert a["name"] == b.name and a["image_size"] == b.image_size
    monkeypatch.undo()
    for a, b in zip(cached, plain):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_collate_test_keeps_masks_of_different_sizes(dut_copy: Path) -> None:
    Image.open(dut_copy / "gt" / "2.bmp").resize((300, 200)).save(dut_copy / "gt" / "2.bmp")
    with pytest.warns(DatasetWarning):
        ds = build_dataset(f"folder:{dut_copy}:white=in-focus", "test", img_size=32)
    batch = collate_test([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 32, 32)
    assert [m.shape for m in batch["mask"]] == [(1, 320, 320), (1, 200, 300)]
    assert batch["image_size"] == [(320, 320), (320, 320)] and batch["name"] == ["1.jpg", "2.jpg"]


def test_photo_dataset(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "DUT-sample" / "image"
    photos = PhotoDataset(folder, img_size=64)
    assert len(photos) == 5
    item = photos[0]
    assert item["image"].shape == (3, 64, 64) and item["image_size"] == (320, 320)
    assert item["name"] == "1.jpg" and item["path"] == str(folder / "1.jpg")
    twice = PhotoDataset([folder / "2.jpg", folder], img_size=32)
    assert len(twice) == 5 and twice.skipped == [f"{folder / '2.jpg'} (given twice)"]
    assert collate_test([photos[0], photos[1]])["name"] == ["1.jpg", "2.jpg"]
    with pytest.raises(DatasetError, match="no such file"):
        PhotoDataset(tmp_path / "missing.jpg")


def write_oriented_jpeg(path: Path, orientation: int, width: int = 64, height: int = 40) -> np.ndarray:
    """A JPEG whose stored pixel array is height x width, tagged with EXIF `orientation`; returns the
    decoded stored array (before orientation)."""
    pixels = np.random.default_rng(orientation).integers(0, 255, (height, width, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def truncate(path: Path) -> None:
    """Keep the first half of a file, as an interrupted download does."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("rotations", [(6, -1), (8, 1)])
def test_exif_orientation_is_applied_to_photos_and_test_images(tmp_path: Path, rotations) -> None:
    orientation, quarter_turns = rotations
    (tmp_path / "image").mkdir()
    (tmp_path / "gt").mkdir()
    stored = write_oriented_jpeg(tmp_path / "image" / "phone.jpg", orientation)
    shown = np.rot90(stored, quarter_turns)  # 6: turn clockwise, 8: counter-clockwise, as viewers do
    assert shown.shape == (64, 40, 3)
    photo = PhotoDataset(tmp_path / "image" / "phone.jpg", img_size=32)[0]
    assert photo["image_size"] == (64, 40)
    expected = TF.normalize(TF.to_tensor(resize_image(Image.fromarray(np.ascontiguousarray(shown)), 32)),
                            AUTHORS_MEAN, AUTHORS_STD)
    assert torch.equal(photo["image"], expected)
    mask = np.zeros((64, 40), np.uint8)
    mask[:32] = 255
    Image.fromarray(mask).save(tmp_path / "gt" / "phone.png")
    test = build_dataset(f"folder:{tmp_path}:white=in-focus", "test", img_size=32)
    assert test.size_mismatch == [] and test[0]["image_size"] == (64, 40)
    assert torch.equal(test[0]["image"], expected)


@pytest.mark.parametrize("dtype, white", [(np.uint8, 1), (np.uint16, 1), (np.uint16, 255), (np.uint16, 65535),
                                          (np.uint8, 255)])
def test_masks_are_read_by_their_value_range(tmp_path: Path, dtype, white: int) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, white], [white, 0]], dtype)).save(path)
    assert load_mask(path, MaskPolarity.WHITE_IN_FOCUS).tolist() == [[0, 1], [1, 0]]
    assert load_mask(path, MaskPolarity.WHITE_BLURRED).tolist() == [[1, 0], [0, 1]]


def test_sixteen_bit_masks_are_binarised_at_half_of_65535(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(np.array([[0, 32767, 32768, 65535]], np.uint16)).save(path)
    assert load_mask(path, MaskPolarity.WHITE_IN_FOCUS).tolist() == [[0, 0, 1, 1]]


def test_zero_one_masks_train_with_both_classes(dut_copy: Path) -> None:
    for path in (dut_copy / "gt").iterdir():
        Image.fromarray((np.asarray(Image.open(path)) >= 128).astype(np.uint8)).save(path.with_suffix(".png"))
        path.unlink()
    ds = build_dataset(f"folder:{dut_copy}:white=in-focus", "train", augment=False, img_size=32)
    assert all(0 < item["mask"].mean() < 1 for item in ds)


def test_training_refuses_a_set_whose_masks_are_all_one_class(dut_copy: Path) -> None:
    for path in (dut_copy / "gt").iterdir():
        Image.fromarray(np.zeros((320, 320), np.uint8)).save(path)
    expr = f"folder:{dut_copy}:white=in-focus"
    with pytest.raises(DatasetError, match=r"cannot be used for training: every one of the 5 masks is a single "
                                           r"class \(all black: 5\)"):
        build_dataset(expr, "train")
    with pytest.warns(DatasetWarning, match=r"every one of the 5 masks is a single class \(all black: 5\)"):
        build_dataset(expr, "test")


def test_truncated_files_are_refused_for_training_and_left_out_of_a_test_set(dut_copy: Path) -> None:
    truncate(dut_copy / "image" / "2.jpg")
    truncate(dut_copy / "gt" / "4.bmp")
    expr = f"folder:{dut_copy}:white=in-focus"
    with pytest.raises(DatasetError, match=r"cannot be used for training: files that do not decode: image/2\.jpg "
                                           r"\(image file is truncated.*\), gt/4\.bmp \(image file is truncated"):
        build_dataset(expr, "train")
    with pytest.warns(DatasetWarning, match=r"left out of the test set: files that do not decode: image/2\.jpg "
                                            r"\(image file is truncated.*\), gt/4\.bmp"):
        ds = build_dataset(expr, "test", img_size=32)
    assert [p.name for p in ds.pairs] == ["1.jpg", "3.jpg", "5.jpg"]
    assert ds.corrupt == ["image/2.jpg", "gt/4.bmp"]
    assert [item["name"] for item in ds] == ["1.jpg", "3.jpg", "5.jpg"]


@pytest.mark.parametrize("cache", [False, True])
def test_flipped_sample_mask_is_flip_then_resize(shared_data: Path, cache: bool) -> None:
    """The authors flip the full-size mask, then resize it nearest-neighbour (data.py)."""
    size = 96
    ds = build_dataset(f"folder:{shared_data / 'CUHK'}:white=blurred", "train", augment=True, img_size=size,
                       cache=cache)
    with Image.open(shared_data / "CUHK" / "gt" / "out_of_focus0001.png") as raw:
        grey = raw.convert("L")
    plain = np.asarray(grey.resize((size, size), Image.NEAREST)) < 128  # CUHK white = blurred
    flipped = np.asarray(grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((size, size), Image.NEAREST)) < 128
    assert not np.array_equal(flipped, plain[:, ::-1])  # the two orders differ on this image
    torch.manual_seed(0)
    masks = [ds[0]["mask"][0].numpy().astype(bool) for _ in range(8)]
    assert all(np.array_equal(m, plain) or np.array_equal(m, flipped) for m in masks)
    assert 0 < sum(np.array_equal(m, flipped) for m in masks) < 8
