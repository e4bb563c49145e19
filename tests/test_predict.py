"""models.predict, the one inference path of test.py --images, app.py and torch.hub users; hubconf.py's entries."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from datasets.decoding import load_rgb
from datasets.transforms import normalise, resize_image
from engine.evaluate import to_8bit
from models import build_model, load_model, predict
from models.inference import DEFAULT_IMG_SIZE, input_spec, predict_batch
from models.shipped import SHIPPED_CHECKPOINT
from utils.checkpoint import CheckpointError, model_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_MAPS = ROOT / "tests" / "fixtures" / "photo_maps"
_spec = importlib.util.spec_from_file_location("test_script", ROOT / "test.py")
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)


def write_reference_photos(folder: Path) -> Path:
    """The photos the maps in tests/fixtures/photo_maps/ were made from: RGB, RGB turned by EXIF (orientation 6),
    16-bit grey."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage.data.chelsea()[40:200, 100:340]).save(folder / "chelsea.png")
    coffee = Image.fromarray(skimage.data.coffee()[100:300, 150:450])
    exif = coffee.getexif()
    exif[0x0112] = 6
    coffee.save(folder / "coffee_exif6.png", exif=exif)
    Image.fromarray(skimage.data.camera()[100:260, 150:370].astype(np.uint16) * 257).save(folder / "camera16.png")
    return folder


def reference_detector(path: Path) -> Path:
    """The detector the maps in tests/fixtures/photo_maps/ come from, saved at `path`: DFFNet / resnet10t drawn with
    seed 0, its BatchNorm statistics those of one batch of seeded noise (so that its maps are not flat), 96 px."""
    torch.manual_seed(0)
    model = build_model("dffnet", "resnet10t")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(1)))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    return save_checkpoint(model_checkpoint(model, {"img_size": 96}, 1), path)


def assert_same_map(ours: np.ndarray, expected: np.ndarray, name: str) -> None:
    """Equal 8-bit maps, up to one grey level on at most 0.1 % of the pixels: another batch size or thread count
    sums in another order on the CPU, which moves a few values across a rounding boundary."""
    difference = np.abs(ours.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() <= 0.001, (name, difference.max(), (difference > 0).mean())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return reference_detector(tmp_path_factory.mktemp("reference") / "seeded.pth")


@pytest.fixture(scope="module")
def detector(reference) -> torch.nn.Module:
    return load_model(reference).eval()


def test_images_writes_the_maps_of_the_code_before_predict(tmp_path, reference):
    """tests/fixtures/photo_maps/ holds the maps test.py --images wrote at commit 84367fb (before models.predict),
    with the reference detector and --batch-size 2 (two batches)."""
    photos = write_reference_photos(tmp_path / "photos")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = test_script.main(["--checkpoint", str(reference), "--images", str(photos), "--out", str(tmp_path / "out"),
                                 "--workers", "0", "--batch-size", "2"])
    assert code == 0
    references = sorted(REFERENCE_MAPS.glob("*.png"))
    assert [p.name for p in references] == ["camera16.png", "chelsea.png", "coffee_exif6.png"]
    for reference in references:  # made on one thread; more threads sum in another order
        assert_same_map(np.asarray(Image.open(tmp_path / "out/maps" / reference.name)),
                        np.asarray(Image.open(reference)), reference.name)


def test_predict_takes_a_path_a_pil_image_or_an_array_upright(tmp_path, detector):
    photos = write_reference_photos(tmp_path)
    for path in sorted(photos.glob("*.png")):
        expected = np.asarray(Image.open(REFERENCE_MAPS / path.name))
        from_path = predict(detector, path)
        assert from_path.dtype == np.float32 and from_path.shape == expected.shape
        assert_same_map(to_8bit(torch.from_numpy(from_path)), expected, path.name)  # references: batches of 2
        upright = load_rgb(path)
        for same in (str(path), Image.open(path), upright, np.asarray(upright)):  # load_rgb's output: not turned twice
            np.testing.assert_array_equal(predict(detector, same), from_path, err_msg=f"{path.name} {type(same)}")
    assert predict(detector, photos / "coffee_exif6.png").shape == (300, 200)  # stored 300 wide, shown sideways


def test_predict_batch_runs_each_photo_as_predict_does(tmp_path, detector):
    photos = write_reference_photos(tmp_path)
    paths = sorted(photos.glob("*.png"))
    for batched, path in zip(predict_batch(detector, paths), paths):
        assert_same_map(to_8bit(torch.from_numpy(batched)), to_8bit(torch.from_numpy(predict(detector, path))), path.name)


def test_the_input_size_and_normalisation_come_from_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    model = build_model("dffnet", backbone="resnet10t", normalisation={"mean": mean, "std": std})
    path = save_checkpoint(model_checkpoint(model, {"img_size": 64}, 1), tmp_path / "m.pth")
    loaded = load_model(path).eval()
    assert input_spec(loaded) == input_spec(loaded, 64) != input_spec(loaded, 96)
    seen = []
    loaded.encoder.model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    photo = Image.fromarray(skimage.data.astronaut()[::8, ::8])
    for size in (64, 96):
        predict(loaded, photo, img_size=None if size == 64 else size)
        rgb = torch.from_numpy(np.array(resize_image(photo, size))).permute(2, 0, 1).float() / 255
        expected = (rgb - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        torch.testing.assert_close(seen[-1][0], expected, atol=1e-5, rtol=0)
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)  # an authors'-style file records no input size
    assert input_spec(load_model(bare, backbone="resnet10t")).img_size == DEFAULT_IMG_SIZE


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 5, 2), np.uint8), "image array, got shape (4, 5, 2)"),
    (np.zeros((0, 5, 3), np.uint8), "got shape (0, 5, 3)"),
    (np.full((4, 5, 3), 1.5), "values in [0, 1], this one holds [1.5, 1.5]"),
    (np.zeros((4, 5, 3), np.int32), "got int32"),
])
def test_an_unusable_array_is_refused_in_one_line(detector, array, message):
    with pytest.raises(ValueError) as error:
        predict(detector, array)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_unreadable_file_is_named(tmp_path, detector):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ValueError, match=r"notes\.png: cannot decode image"):
        predict(detector, tmp_path / "notes.png")


def test_torch_hub_loads_the_shipped_model_and_predicts_a_photo():
    model = torch.hub.load(str(ROOT), "dffnet_cpu", source="local")
    assert not model.training
    chelsea = skimage.data.chelsea()
    in_focus = predict(model, chelsea)
    assert in_focus.shape == chelsea.shape[:2] and in_focus.dtype == np.float32
    assert 0 <= in_focus.min() < 0.2 and 0.8 < in_focus.max() <= 1  # both classes present
    np.testing.assert_array_equal(in_focus, predict(load_model(SHIPPED_CHECKPOINT).eval(), chelsea))


def test_torch_hub_loads_the_papers_models_from_a_file(tmp_path):
    torch.manual_seed(0)
    model = build_model("dffnet", backbone="resnet10t")
    path = save_checkpoint(model_checkpoint(model, {"img_size": 64}, 1), tmp_path / "D-DFFNet.pth")
    for entry in ("dffnet", "d_dffnet"):
        loaded = torch.hub.load(str(ROOT), entry, source="local", checkpoint=path)
        assert not loaded.training
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(CheckpointError, match=r"^d_dffnet: give checkpoint=PATH, the authors' D-DFFNet\.pth"):
        torch.hub.load(str(ROOT), "d_dffnet", source="local")
    pdnet = build_model("pdnet", backbone="resnet10t")
    other = save_checkpoint(model_checkpoint(pdnet, {"img_size": 64}, 1), tmp_path / "pdnet.pth")
    with pytest.raises(CheckpointError, match="holds a 'pdnet' model, but 'dffnet' was asked for"):
        torch.hub.load(str(ROOT), "dffnet", source="local", checkpoint=other)


def test_flip_average_is_the_mean_of_the_logits_of_a_photo_and_its_mirror_image(detector):
    """predict(flip_average=True) is sigmoid of the mean logit of the photo and of its mirror image, mirrored back:
    not the plain map, and the same for the mirrored photo (mirrored back)."""
    photo = skimage.data.chelsea()[40:200, 100:340]
    plain, mirrored = predict(detector, photo), predict(detector, photo[:, ::-1].copy())
    averaged = predict(detector, photo, flip_average=True)
    # the network's map is resized to the photo before both are read back: logits average at the network's size
    image = normalise(resize_image(Image.fromarray(photo), 96))[None]
    with torch.inference_mode():
        expected = torch.sigmoid((detector(image).logits + detector(image.flip(-1)).logits.flip(-1)) / 2)
    expected = F.interpolate(expected, size=photo.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(averaged, expected, atol=1e-5)
    assert np.abs(averaged - plain).max() > 0.01
    np.testing.assert_allclose(predict(detector, photo[:, ::-1].copy(), flip_average=True)[:, ::-1], averaged,
                               atol=1e-5)
    assert np.abs(mirrored[:, ::-1] - plain).max() > 0.01  # the network alone is not mirror-symmetric


def test_test_py_flip_average_scores_sets_and_maps_photos_and_records_it(tmp_path, reference, detector):
    """test.py --flip-average: a test set's maps are the averaged ones (a photo and its mirror image get mirrored
    maps, which the network alone does not give), its scores come from them and results.json says so (entry and
    run); --images writes predict(flip_average=True)'s maps; saved maps (--pred-dir) refuse it."""
    for folder in ("image", "gt"):
        (tmp_path / "set" / folder).mkdir(parents=True)
    photo = skimage.data.chelsea()[40:200, 100:340]
    Image.fromarray(photo).save(tmp_path / "set/image/a.png")
    Image.fromarray(photo[:, ::-1].copy()).save(tmp_path / "set/image/b.png")
    mask = np.where(np.random.default_rng(0).random(photo.shape[:2]) > 0.5, 255, 0).astype(np.uint8)
    for name in ("a", "b"):
        Image.fromarray(mask).save(tmp_path / f"set/gt/{name}.png")
    dataset = f"folder:{tmp_path / 'set'}:white=in-focus"
    results, mirror_gap = {}, {}
    for flip in (False, True):  # the standard protocol resizes bilinearly: nearest resizing is not mirror-symmetric
        out = tmp_path / f"out{flip}"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert test_script.main(["--checkpoint", str(reference), "--dataset", dataset, "--out", str(out),
                                     "--workers", "0", "--save-maps", "--protocol", "standard"]
                                    + ["--flip-average"] * flip) == 0
        results[flip] = json.loads((out / "results.json").read_text())
        assert results[flip]["run"]["flip_average"] is flip
        assert [entry["flip_average"] for entry in results[flip]["results"]] == [flip]
        a, b = (np.asarray(Image.open(out / f"seeded/set/maps/{name}.png")).astype(int) for name in "ab")
        mirror_gap[flip] = np.abs(a - b[:, ::-1]).max()
    assert mirror_gap[True] <= 1 < mirror_gap[False]
    assert results[True]["results"][0]["mae"] != results[False]["results"][0]["mae"]

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert test_script.main(["--checkpoint", str(reference), "--images", str(tmp_path / "set/image"),
                                 "--out", str(tmp_path / "photos"), "--workers", "0", "--flip-average"]) == 0
    for name in "ab":
        assert_same_map(np.asarray(Image.open(tmp_path / f"photos/maps/{name}.png")), to_8bit(torch.from_numpy(
            predict(detector, tmp_path / f"set/image/{name}.png", flip_average=True))), name)

    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr), pytest.raises(SystemExit):
        test_script.main(["--pred-dir", str(tmp_path / "photos/maps"), "--dataset", dataset, "--flip-average"])
    assert "--flip-average runs a network twice per photo: it does not apply to --pred-dir's saved maps" in \
        stderr.getvalue()
