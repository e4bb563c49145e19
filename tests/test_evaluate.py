"""End to end: test.py / test.sh on a tiny resnest14d DFFNet over the DUT sample and a synthetic set."""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.synthetic import generate_dataset
from engine.evaluate import set_label
from engine.saved_maps import read_map
from metrics.report import markdown_table
from models import build_model
from utils.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("test_script", ROOT / "test.py")
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)
FAST = ["--img-size", "64", "--workers", "0", "--batch-size", "4"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    model = build_model("dffnet", backbone="resnest14d")
    checkpoint = tmp / "D-DFFNet.pth"
    save_checkpoint({"format": "ddffnet-checkpoint-v1", "model": model.state_dict(),
                     "model_config": model.config, "config": {}, "epoch": 0}, checkpoint)
    generate_dataset(tmp / "syn", n=3, seed=1, size=64)
    dut = f"folder:{shared_data / 'DUT-sample'}:white=in-focus"
    return tmp, checkpoint, dut, f"synthetic:{tmp / 'syn'}"


def run(args: list[str], script: str = "test.py", env: dict | None = None) -> subprocess.CompletedProcess:
    """test.py in this process (imports once), test.sh in a shell."""
    if script.endswith(".sh"):
        return subprocess.run(["bash", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=240,
                              env={**os.environ, **(env or {})})
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = test_script.main(args)
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="module")
def checkpoint_run(setup):
    tmp, checkpoint, dut, syn = setup
    out = tmp / "res"
    result = run(["--checkpoint", str(checkpoint), "--dataset", dut, syn, "--out", str(out), "--save-maps", *FAST])
    assert result.returncode == 0, result.stderr
    return out, json.loads((out / "results.json").read_text()), result.stdout


def test_checkpoint_run_writes_json_csv_maps_and_figure(checkpoint_run, shared_data):
    out, results, stdout = checkpoint_run
    entries = {e["dataset"]: e for e in results["results"]}
    assert set(entries) == {"DUT-sample", "syn"}
    dut = entries["DUT-sample"]
    assert dut["n_images"] == 5 and dut["protocol"] == "official" and dut["excluded"] == []
    assert 0 <= dut["mae"] <= 1 and 0 <= dut["fbeta"] <= 1 and 0 <= dut["iou"] <= 1
    with open(dut["per_image_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [f"{i}.jpg" for i in range(1, 6)]
    assert np.mean([float(r["mae"]) for r in rows]) == pytest.approx(dut["mae"], abs=1e-5)
    maps = sorted(Path(dut["maps"]).iterdir())
    assert [m.name for m in maps] == [f"{i}.png" for i in range(1, 6)]
    with Image.open(maps[0]) as grey, Image.open(shared_data / "DUT-sample/image/1.jpg") as image:
        assert grey.mode == "L" and grey.size == image.size  # original resolution
    assert (out / "pr_curves.png").stat().st_size > 0 and (out / "D-DFFNet/syn/grid.png").is_file()
    assert "| D-DFFNet (measured, official) |" in stdout
    assert "(paper, Table I" not in stdout  # the paper reports neither of these sets: no empty paper row


@pytest.mark.parametrize("protocol", ["official", "standard"])
def test_pred_dir_on_saved_maps_gives_the_checkpoint_numbers(setup, protocol):
    tmp, checkpoint, dut, _ = setup
    ours = tmp / f"ours-{protocol}"
    result = run(["--checkpoint", str(checkpoint), "--dataset", dut, "--out", str(ours), "--save-maps",
                  "--protocol", protocol, *FAST])
    assert result.returncode == 0, result.stderr
    entry = json.loads((ours / "results.json").read_text())["results"][0]
    inverted = tmp / f"inverted-{protocol}"  # the same maps stored white = blurred
    inverted.mkdir()
    for path in Path(entry["maps"]).iterdir():
        Image.fromarray(255 - np.asarray(Image.open(path))).save(inverted / path.name)
    for folder, polarity in ((entry["maps"], "white=in-focus"), (inverted, "white=blurred")):
        out = tmp / f"pred-{protocol}-{polarity}"
        result = run(["--pred-dir", str(folder), "--pred-polarity", polarity, "--dataset", dut, "--out", str(out),
                      "--protocol", protocol, *FAST])
        assert result.returncode == 0, result.stderr
        again = json.loads((out / "results.json").read_text())["results"][0]
        assert again["map_normalisation"] == entry["map_normalisation"] == \
            {"official": "none", "standard": "min-max"}[protocol]
        assert again["fbeta"] == pytest.approx(entry["fbeta"], abs=1e-9)
        assert again["iou"] == pytest.approx(entry["iou"], abs=1e-9)
        # official MAE uses the continuous map, saved maps are 8-bit: at most half a grey level apart
        assert again["mae"] == pytest.approx(entry["mae"], abs=0.5 / 255 if protocol == "official" else 1e-12)
        assert again["pr_curve"] == entry["pr_curve"]


def test_pred_dir_names_missing_maps(setup, checkpoint_run):
    tmp, _, dut, _ = setup
    partial = tmp / "partial"
    partial.mkdir()
    Image.new("L", (320, 320), 200).save(partial / "1.png")
    result = run(["--pred-dir", str(partial), "--dataset", dut, "--out", str(tmp / "p"), *FAST])
    assert result.returncode == 2 and "no map for 4 of 5 images" in result.stderr and "2.jpg" in result.stderr


def test_images_mode_writes_maps_and_overlays_without_gt(setup, shared_data):
    tmp, checkpoint, _, _ = setup
    photo = shared_data / "CUHK/image/out_of_focus0001.jpg"
    out = tmp / "photos"
    result = run(["--checkpoint", str(checkpoint), "--images", str(photo),
                  str(shared_data / "DUT-sample/image/2.jpg"), "--out", str(out), *FAST])
    assert result.returncode == 0, result.stderr
    with Image.open(photo) as image, Image.open(out / "maps/out_of_focus0001.png") as grey, \
            Image.open(out / "overlays/out_of_focus0001.jpg") as overlay:
        assert grey.size == image.size and overlay.size == (2 * image.width, image.height)
    assert (out / "maps/2.png").is_file()
    assert read_map(out / "maps/2.png").shape == (320, 320)


def test_images_with_clashing_names_get_distinct_outputs(setup, shared_data, tmp_path):
    """Issue 13 item 6: x.jpg in two folders and photo.jpg + photo.png in one give four maps, not one or none;
    the renamed and skipped files are reported."""
    _, checkpoint, _, _ = setup
    dut, cuhk = shared_data / "DUT-sample/image/1.jpg", shared_data / "CUHK/image/out_of_focus0001.jpg"
    for folder, name, image in (("dA", "x.jpg", dut), ("dB", "x.jpg", cuhk), ("dB", "photo.jpg", dut),
                                ("dB", "photo.png", cuhk)):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.open(image).save(tmp_path / folder / name)
    (tmp_path / "dB/notes.txt").write_text("not a photo")
    out = tmp_path / "out"
    result = run(["--checkpoint", str(checkpoint), "--images", str(tmp_path / "dA"), str(tmp_path / "dB"),
                  "--out", str(out), *FAST])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["dA-x.png", "dB-x.png", "photo-jpg.png",
                                                                "photo-png.png"]
    assert len(list((out / "overlays").iterdir())) == 4
    for name, photo in (("dA-x.png", dut), ("dB-x.png", cuhk), ("photo-jpg.png", dut), ("photo-png.png", cuhk)):
        with Image.open(out / "maps" / name) as grey, Image.open(photo) as image:
            assert grey.size == image.size  # each map belongs to its own photo
    assert "wrote 4 maps" in result.stdout
    assert f"{tmp_path / 'dA/x.jpg'} -> dA-x.png" in result.stdout and "photo.png -> photo-png.png" in result.stdout
    assert f"skipped 1 files: {tmp_path / 'dB/notes.txt'} (not a " in result.stdout


def test_images_writes_the_good_photos_and_names_the_corrupt_one(setup, shared_data, tmp_path):
    """Issue 13 item 8: one truncated photo among good ones: the good maps are written, the bad photo is
    named at the end, the exit code is 1."""
    _, checkpoint, _, _ = setup
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("1.jpg", "2.jpg"):
        (photos / name).write_bytes((shared_data / "DUT-sample/image" / name).read_bytes())
    (photos / "broken.jpg").write_bytes((shared_data / "DUT-sample/image/3.jpg").read_bytes()[:2000])
    out = tmp_path / "out"
    result = run(["--checkpoint", str(checkpoint), "--images", str(photos), "--out", str(out), *FAST])
    assert result.returncode == 1
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["1.png", "2.png"]
    assert "wrote 2 maps" in result.stdout
    message = result.stderr.rsplit("\r", 1)[-1]  # after the progress bar
    assert message.startswith("test.py: error: 1 photos could not be read") and message.count("\n") == 1
    assert f"{photos / 'broken.jpg'}: cannot decode image" in message


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "folder:a/test", "folder:b/test"],
     r"^--dataset: folder:a/test and folder:b/test would both be reported as 'test' and overwrite"),
    (["--dataset", "DUT-TE", "DUT-TE"], r"^--dataset: DUT-TE and DUT-TE would both be reported as 'DUT-TE'"),
    (["--raw-maps"], r"^--raw-maps applies to --protocol standard \(--protocol official never normalises\)$"),
])
def test_test_py_refuses_clashing_set_names_and_raw_maps_outside_standard(tmp_path, flags, message):
    """Issue 13 items 6 and 17: two sets with one results name, and --raw-maps without --protocol standard."""
    with pytest.raises(SystemExit, match=message):
        test_script.main(["--checkpoint", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()


def test_raw_maps_flag_reaches_results_json(setup, tmp_path):
    """Issue 13 item 17: --raw-maps scores the standard protocol without normalisation, and results.json says so."""
    _, checkpoint, _, syn = setup
    result = run(["--checkpoint", str(checkpoint), "--dataset", syn, "--protocol", "standard", "--raw-maps",
                  "--out", str(tmp_path), *FAST])
    assert result.returncode == 0, result.stderr
    entry = json.loads((tmp_path / "results.json").read_text())["results"][0]
    assert entry["protocol"] == "standard" and entry["map_normalisation"] == "none"


def test_results_json_is_never_written_with_nan(tmp_path):
    """Issue 13 item 18: a NaN metric stops the write with a message naming it, instead of invalid JSON."""
    from metrics.report import write_results

    entry = {"model": "DFFNet", "dataset": "CUHK-TE-1", "mae": 0.04, "s_measure": float("nan")}
    with pytest.raises(ValueError, match=r"not written, metrics that are not finite numbers: DFFNet on "
                                         r"CUHK-TE-1: s_measure$"):
        write_results([entry], tmp_path / "results.json", {})
    assert not (tmp_path / "results.json").exists()


def test_images_mode_follows_the_exif_orientation(setup, tmp_path):
    tmp, checkpoint, _, _ = setup
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64 wide x 40 high, shown 40 wide x 64 high
    Image.new("RGB", (64, 40), (200, 30, 30)).save(tmp_path / "phone.jpg", exif=exif.tobytes())
    result = run(["--checkpoint", str(checkpoint), "--images", str(tmp_path / "phone.jpg"), "--out",
                  str(tmp_path / "out"), *FAST])
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "out/maps/phone.png") as grey, \
            Image.open(tmp_path / "out/overlays/phone.jpg") as overlay:
        assert grey.size == (40, 64) and overlay.size == (80, 64)


def test_a_corrupt_test_image_is_left_out_named_and_counted(setup, shared_data, tmp_path):
    _, checkpoint, _, _ = setup
    copy = Path(shutil.copytree(shared_data / "DUT-sample", tmp_path / "dut"))
    broken = copy / "image" / "3.jpg"
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    out = tmp_path / "res"
    with pytest.warns(UserWarning, match=r"left out of the test set: files that do not decode: image/3\.jpg"):
        result = run(["--checkpoint", str(checkpoint), "--dataset", f"folder:{copy}:white=in-focus",
                      "--skip-missing", "--out", str(out), *FAST])
    assert result.returncode == 0, result.stderr
    entry = json.loads((out / "results.json").read_text())["results"][0]
    assert entry["n_images"] == 4 and entry["corrupt_left_out"] == ["image/3.jpg"]


def test_test_sh_prints_the_table_and_names_missing_sets(setup, checkpoint_run, tmp_path):
    tmp, checkpoint, _, syn = setup
    env = {"CHECKPOINTS": str(checkpoint), "DATASETS": f"CUHK-TE-1 EBD {syn}", "DATA_ROOT": str(tmp_path),
           "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    result = run(FAST, script="test.sh", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    missing = [line for line in lines if line.startswith("missing ")]
    assert [line.split(":")[0] for line in missing] == ["missing CUHK-TE-1", "missing EBD"]
    assert all(str(tmp_path) in line for line in missing)  # says where the set should be
    header = next(line for line in lines if line.startswith("| model |"))
    assert header.index("CUHK-TE-1") < header.index("EBD") < header.index("syn")
    assert "| D-DFFNet (paper, Table I, trained on CUHK-TR-1) | .036 / .973 / .951 |" in result.stdout
    assert (tmp_path / "out/pr_curves.png").is_file()
    by_region = result.stdout[result.stdout.index("By region"):].splitlines()  # only the synthetic set has masks
    split_rows = [line for line in by_region if line.startswith("| D-DFFNet |")]
    assert len(split_rows) == 1 and "| syn |" in split_rows[0]
    entry = json.loads((tmp_path / "out/results.json").read_text())["results"][0]
    assert set(entry["regions"]) == {"definition", "homogeneous", "textured"}


def test_test_sh_without_a_checkpoint_says_where_to_get_one(tmp_path):
    """A fresh clone has no checkpoint: name the file, where the authors' weights come from, and the demo."""
    missing = tmp_path / "checkpoint" / "D-DFFNet.pth"
    result = run([], script="test.sh", env={"CHECKPOINTS": str(missing)})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert f"{missing}: no such file" in result.stderr
    assert "checkpoint/README.md" in result.stderr and "`make demo` trains a small model offline" in result.stderr


def test_test_sh_without_the_projects_interpreter_says_which_one_it_needs(tmp_path):
    """No .venv beside test.sh and a python3 without torch: one line naming the interpreter to make."""
    shutil.copy(ROOT / "test.sh", tmp_path / "test.sh")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").write_text("#!/bin/sh\nexit 1\n")  # runs, but imports nothing
    (tmp_path / "bin" / "python3").chmod(0o755)
    (tmp_path / "D-DFFNet.pth").write_bytes(b"")
    env = {"PYTHON": "", "CHECKPOINTS": str(tmp_path / "D-DFFNet.pth"),
           "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    result = run([], script=str(tmp_path / "test.sh"), env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("test.sh: error: python3 does not run or has no torch; test.sh needs the "
                                    "project's interpreter .venv/bin/python (`make .venv/.installed` creates it)")


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], r"^--batch-size must be >= 1, got 0$"),
    (["--img-size", "0"], r"^--img-size 0 must be a positive multiple of 32$"),
    (["--device", "gpu"], r"^--device gpu: not a device; use auto, cpu, cuda or cuda:N$"),
])
def test_test_py_names_an_impossible_flag_at_start(tmp_path, flags, message):
    with pytest.raises(SystemExit, match=message):
        test_script.main(["--checkpoint", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "out"), *flags])
    assert not (tmp_path / "out").exists()


def test_markdown_table_difference_and_set_labels():
    entry = {"model": "DFFNet", "dataset": "CUHK-TE-1", "protocol": "official", "mae": 0.041, "fbeta": 0.970,
             "iou": 0.950}
    table = markdown_table([entry], ["CUHK-TE-1", "CTCUG"], "I", extra_paper_methods=["DD"])
    assert "| DFFNet (measured, official) | .041 / .970 / .950 | - |" in table
    assert "| difference (ours - paper) | +.002 / -.001 / +.003 | - |" in table
    assert "| DD (paper) | .045 / .966 / .941 | .155 / .797 / .775 |" in table
    assert set_label("folder:/x/DUT-sample:white=in-focus") == "DUT-sample" and set_label("EBD-1305") == "EBD-1305"


def test_pr_figure_draws_a_constant_map_as_one_point() -> None:
    from utils.plots import drawn_pr_points

    # a constant map: every threshold above 0 predicts nothing blurred (recall 0), threshold 0 everything
    recall = np.array([1.0] + [0.0] * 255)
    precision = np.array([0.55] + [1.0] * 255)
    r, p, is_curve = drawn_pr_points(recall, precision)
    assert not is_curve and r.tolist() == [1.0] and p.tolist() == [0.55]
    smooth_recall = np.linspace(1.0, 0.0, 256)
    r, p, is_curve = drawn_pr_points(smooth_recall, np.linspace(0.5, 1.0, 256))
    assert is_curve and len(r) == 255 and r.min() > 0


def test_figure_shows_the_textureless_pixels_where_the_set_has_them(setup, monkeypatch, tmp_path):
    import engine.figures
    tmp, checkpoint, dut, syn = setup
    drawn = {}
    monkeypatch.setattr(engine.figures, "labelled_grid", lambda rows, labels, out: drawn.setdefault(out, (rows, labels)))
    for name, expr in {"syn": syn, "dut": dut}.items():
        engine.figures.comparison_figure(expr, {"D-DFFNet": str(checkpoint)}, tmp_path / name, count=2, img_size=64,
                                         device="cpu")
    rows, labels = drawn[tmp_path / "syn"]
    assert labels == ["image", "ground truth (white = in-focus)", "textureless (white)", "D-DFFNet"]
    region = np.array(Image.open(tmp / "syn" / "homogeneous" / "00000.png")) > 127
    assert np.array_equal(rows[0][2], region.astype(np.float32))
    assert drawn[tmp_path / "dut"][1] == ["image", "ground truth (white = in-focus)", "D-DFFNet"]


def test_figure_draws_one_column_per_depth_teacher_then_the_true_depth(setup, monkeypatch, tmp_path):
    import engine.figures
    from models import build_midas
    from utils.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    tmp, checkpoint, dut, syn = setup
    teachers = {}
    for seed, label in enumerate(("ours", "lite")):
        torch.manual_seed(seed)
        model = build_midas("resnet18", features=8)
        teachers[label] = str(save_checkpoint({"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                                               "model_config": model.config, "epoch": 1}, tmp_path / f"{label}.pth"))
    drawn = {}
    monkeypatch.setattr(engine.figures, "labelled_grid", lambda rows, labels, out: drawn.setdefault(out, (rows, labels)))
    engine.figures.comparison_figure(syn, {"D-DFFNet": str(checkpoint)}, tmp_path / "grid", teachers, count=2,
                                     img_size=64, device="cpu")
    rows, labels = drawn[tmp_path / "grid"]
    assert labels[-3:] == ["ours (near = bright)", "lite (near = bright)", "true depth (near = bright)"]
    assert not np.allclose(rows[0][-3], rows[0][-2])  # each teacher's own map


def test_figures_tool_draws_depth_teachers_without_a_detector_and_needs_something_to_draw(setup, tmp_path, capsys):
    import importlib.util
    from models import build_midas
    from utils.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    spec = importlib.util.spec_from_file_location("figures_tool", Path(__file__).resolve().parents[1] / "tools/figures.py")
    figures_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures_tool)
    _, _, _, syn = setup
    model = build_midas("resnet18", features=8)
    midas = save_checkpoint({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": model.config,
                             "epoch": 1}, tmp_path / "midas.pth")
    figures_tool.main(["--dataset", syn, "--depth-teacher", f"ours={midas}", "--count", "2", "--img-size", "64",
                       "--device", "cpu", "--out", str(tmp_path / "depth.png")])
    with Image.open(tmp_path / "depth.png") as grid:
        assert grid.height == 18 + 2 * 160 + 4  # a header and two rows
    with pytest.raises(SystemExit):
        figures_tool.main(["--dataset", syn, "--out", str(tmp_path / "nothing.png")])
    assert "--dataset needs a --checkpoint or a --depth-teacher to draw" in capsys.readouterr().err


def test_photo_figure_draws_each_detector_beside_the_photo(setup, monkeypatch, tmp_path, capsys):
    """--photos with two detectors: per photo its picture, then each detector's map and overlay, titled by label
    (one detector keeps the demo's three untitled columns); a repeated label or a depth teacher is refused."""
    import importlib.util
    import engine.figures
    from utils.checkpoint import save_checkpoint
    tmp, checkpoint, _, _ = setup
    torch.manual_seed(1)
    other = build_model("dffnet", backbone="resnest14d")
    second = save_checkpoint({"format": "ddffnet-checkpoint-v1", "model": other.state_dict(),
                              "model_config": other.config, "config": {"img_size": 64}, "epoch": 0},
                             tmp_path / "other.pth")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    drawn = {}
    monkeypatch.setattr(engine.figures, "labelled_grid", lambda rows, labels, out: drawn.setdefault(out, (rows, labels)))
    engine.figures.photo_figure([tmp_path / "p.png"], {"old": checkpoint, "new": second}, tmp_path / "two",
                                img_size=64, device="cpu")
    rows, labels = drawn[tmp_path / "two"]
    assert labels == ["photo", "old: P(in-focus)", "old: blur", "new: P(in-focus)", "new: blur"]
    assert len(rows) == 1 and len(rows[0]) == 5 and not np.allclose(rows[0][1], rows[0][3])  # each its own map
    engine.figures.photo_figure([tmp_path / "p.png"], {"old": checkpoint}, tmp_path / "one", img_size=64, device="cpu")
    assert drawn[tmp_path / "one"][1] == ["photo", "P(in-focus), white = sharp", "predicted blur (red)"]

    spec = importlib.util.spec_from_file_location("figures_tool", Path(__file__).resolve().parents[1] / "tools/figures.py")
    figures_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures_tool)
    for extra, message in ((["--checkpoint", f"a={checkpoint}", f"a={second}"], "give each file its own LABEL"),
                           (["--checkpoint", f"a={checkpoint}", "--depth-teacher", str(second)],
                            "--depth-teacher draws depth beside ground truth: use it with --dataset")):
        with pytest.raises(SystemExit):
            figures_tool.main(["--photos", str(tmp_path / "p.png"), *extra, "--out", str(tmp_path / "x.png")])
        assert message in capsys.readouterr().err


def test_grid_columns_line_up_when_a_row_is_narrower(tmp_path):
    """A square photo among landscape ones is centred in its column, so every column starts where its title
    does and the white margins of the narrow row are on both sides."""
    from utils.plots import labelled_grid
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    square = np.zeros((20, 20, 3), dtype=np.uint8)
    path = labelled_grid([[wide, wide], [square, square]], ["a", "b"], tmp_path / "grid.png", height=20, gap=4)
    canvas = np.asarray(Image.open(path))
    assert canvas.shape[1] == 40 + 4 + 40  # each column as wide as its widest picture
    wide_row, square_row = canvas[18 + 10], canvas[18 + 24 + 10]
    assert (wide_row[:40] == 0).all() and (wide_row[44:] == 0).all()
    for start in (0, 44):  # the square sits in the middle of its column
        assert (square_row[start:start + 10] == 255).all()
        assert (square_row[start + 10:start + 30] == 0).all()
        assert (square_row[start + 30:start + 40] == 255).all()
