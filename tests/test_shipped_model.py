"""The real-photo DFFNet shipped in checkpoint/release/: the file itself, that it learnt, how test.py picks it,
and the pieces of its recipe (validation split, random crops, --init, fp16 export)."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train_single
from datasets import build_dataset
from datasets.registry import CUHK_VALIDATION_LIST
from datasets.transforms import crop_pair, draw_crop
from engine.baselines import write_baseline_maps
from engine.config import ConfigError, TrainConfig
from engine.evaluate import EvalSettings, evaluate_model
from engine.saved_maps import evaluate_saved_maps
from engine.stages import build_student
from datasets.polarity import MaskPolarity
from metrics.protocol import PROTOCOLS
from models import build_model, load_model
from models.encoders import input_normalisation
from models.inference import input_spec
from models.shipped import SHIPPED_CHECKPOINT, SHIPPED_SHA256, shipped_files, export_release, sha256
from utils.checkpoint import read_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("test_script", ROOT / "test.py")
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)
MAX_BYTES = 25_000_000


def test_the_shipped_file_is_small_recorded_and_loads_strictly():
    assert SHIPPED_CHECKPOINT.is_file(), f"{SHIPPED_CHECKPOINT} is missing from the repository"
    assert SHIPPED_CHECKPOINT.stat().st_size <= MAX_BYTES
    assert sha256(SHIPPED_CHECKPOINT) == SHIPPED_SHA256
    model = load_model(SHIPPED_CHECKPOINT)  # weights_only=True, strict, finite (utils.checkpoint / models.weights)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.state_dict().values()
               if p.is_floating_point())
    config = model.training_config
    assert config["img_size"] % 32 == 0 and config["backbone"] == model.config["backbone"]
    assert model.config["normalisation"] == input_normalisation(model.config["backbone"])  # its weights' own
    assert "CUHK" in read_checkpoint(SHIPPED_CHECKPOINT)["description"]


def test_the_shipped_model_beats_the_training_set_prior_on_dut(shared_data, tmp_path):
    """DUT photos were never trained on: the shipped model must beat the CUHK-TR-1 mean mask by a wide margin."""
    dut = f"folder:{shared_data / 'DUT-sample'}:white=in-focus"
    cuhk = f"folder:{shared_data / 'CUHK'}:white=blurred"
    model = load_model(SHIPPED_CHECKPOINT).eval()
    size = input_spec(model).img_size
    settings = EvalSettings(protocol=PROTOCOLS["official"], workers=0, img_size=size)
    shipped = evaluate_model(model, "shipped", str(SHIPPED_CHECKPOINT), dut, settings, tmp_path)
    prior_maps = write_baseline_maps("prior", dut, tmp_path / "prior", train_set=cuhk, img_size=size)
    prior = evaluate_saved_maps(prior_maps, MaskPolarity.WHITE_IN_FOCUS, dut, settings, tmp_path, "prior")
    assert shipped["mae"] < 0.6 * prior["mae"], (shipped["mae"], prior["mae"])
    assert shipped["iou"] > prior["iou"] + 0.1, (shipped["iou"], prior["iou"])


def _run_test_py(args: list[str]) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        code = test_script.main(args)
    return code, stdout.getvalue()


def _photo(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_test_py_without_checkpoint_uses_the_shipped_model_and_names_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoint/D-DFFNet.pth here
    code, stdout = _run_test_py(["--images", str(_photo(tmp_path / "p.png")), "--out", "out", "--workers", "0"])
    assert code == 0
    first = stdout.splitlines()[0]
    assert first.startswith("test.py: no --checkpoint: using checkpoint/release/dffnet_cuhk_cpu.pth: ")
    assert "checkpoint/D-DFFNet.pth is absent" in first and "MODEL_CARD.md" in first
    with Image.open(tmp_path / "out/maps/p.png") as grey:
        assert grey.size == (80, 48)


def test_test_py_without_checkpoint_prefers_the_authors_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = build_model("dffnet", backbone="resnest14d")
    save_checkpoint({"format": "ddffnet-checkpoint-v1", "model": model.state_dict(), "model_config": model.config,
                     "config": {"img_size": 64}, "epoch": 1}, tmp_path / "checkpoint/D-DFFNet.pth")
    code, stdout = _run_test_py(["--images", str(_photo(tmp_path / "p.png")), "--out", "out", "--workers", "0"])
    assert code == 0
    assert stdout.splitlines()[0] == "test.py: no --checkpoint: using checkpoint/D-DFFNet.pth (the authors' D-DFFNet, as found)"


def test_fp16_export_loads_into_float32_with_the_same_maps(tmp_path):
    torch.manual_seed(0)
    model = build_model("dffnet", backbone="resnest14d").eval()
    trained = tmp_path / "trained.pth"
    save_checkpoint({"format": "ddffnet-checkpoint-v1", "model": model.state_dict(), "model_config": model.config,
                     "config": {"img_size": 64, "backbone": "resnest14d"}, "epoch": 3,
                     "optimizers": [{"state": {}}]}, trained)
    shipped = export_release(trained, tmp_path / "shipped.pth", "a test model")
    stored = read_checkpoint(shipped)
    assert "optimizers" not in stored and stored["epoch"] == 3 and stored["description"] == "a test model"
    assert {v.dtype for v in stored["model"].values() if v.is_floating_point()} == {torch.float16}
    loaded = load_model(shipped).eval()
    assert {v.dtype for v in loaded.state_dict().values() if v.is_floating_point()} == {torch.float32}
    assert loaded.training_config["img_size"] == 64 and input_spec(loaded).img_size == 64
    assert input_spec(load_model(export_release(trained, tmp_path / "at96.pth", "run at 96", 96))).img_size == 96
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before, after = torch.sigmoid(model(x).logits), torch.sigmoid(loaded(x).logits)
    assert (before - after).abs().max() < 2e-3


def test_the_validation_split_is_100_cuhk_training_images_held_out_of_fit(shared_data, spec_dir, tmp_path):
    names = CUHK_VALIDATION_LIST.read_text().split()
    assert len(names) == len(set(names)) == 100
    test_names = {line.split("--")[-1].rsplit(".", 1)[0] for line in (spec_dir / "splits/cuhk_te1.txt").read_text().split()}
    assert not test_names & {n.rsplit(".", 1)[0] for n in names}  # never a CUHK-TE-1 image
    root = tmp_path / "root"
    (root / "splits").mkdir(parents=True)
    (root / "CUHK").symlink_to(shared_data / "CUHK")
    (root / "splits/cuhk_te1.txt").symlink_to(spec_dir / "splits/cuhk_te1.txt")
    fit = build_dataset("CUHK-TR-1-FIT", "train", root=root, img_size=64)
    val = build_dataset("CUHK-TR-1-VAL", "test", root=root)
    assert len(fit) == 504 and len(val) == 100
    assert sorted(p.image.name for p in val.pairs) == sorted(names)
    assert not {p.name for p in fit.pairs} & {p.name for p in val.pairs}


def test_random_crops_cover_the_asked_share_and_cut_image_and_mask_alike():
    torch.manual_seed(0)
    for _ in range(200):
        left, top, right, bottom = draw_crop(640, 427, 0.5)
        assert 0 <= left < right <= 640 and 0 <= top < bottom <= 427
        assert 0.45 <= (right - left) * (bottom - top) / (640 * 427) <= 1.0
    assert draw_crop(640, 427, 1.0) == (0, 0, 640, 427)
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[2, 3] = 200
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[2, 3] = 1
    image, cut = crop_pair(Image.fromarray(pixels), mask, (2, 1, 5, 4))
    assert image.size == (3, 3) and cut.shape == (3, 3)
    assert np.asarray(image)[1, 1, 0] == 200 and cut[1, 1] == 1 and cut.sum() == 1


def test_crop_scale_and_init_are_checked_and_init_loads_every_weight(tmp_path):
    base = ["--train-set", "folder:x", "--pretrained", "none", "--save", str(tmp_path / "m.pth")]
    with pytest.raises(SystemExit, match=r"^--crop-scale must be in \(0, 1\], got 0.0$"):
        train_single.main([*base, "--crop-scale", "0"])
    with pytest.raises(SystemExit, match=rf"^--init {tmp_path}/none.pth: no such file$"):
        train_single.main([*base, "--init", str(tmp_path / "none.pth")])
    torch.manual_seed(1)
    source = build_model("dffnet", backbone="resnest14d")
    save_checkpoint({"format": "ddffnet-checkpoint-v1", "model": source.state_dict(), "model_config": source.config,
                     "config": {}, "epoch": 2}, tmp_path / "pre.pth")
    config = TrainConfig(backbone="resnest14d", pretrained="none", init=str(tmp_path / "pre.pth"))
    student = build_student(config)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), source.state_dict().values()))
    with pytest.raises(ConfigError, match=r"^--init: .*pre.pth: holds a model built with"):
        build_student(dataclasses.replace(config, backbone="resnet18"))


def test_release_recipe_names_missing_data_before_training(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    no_data = subprocess.run(["bash", str(ROOT / "tools/train_release.sh")], capture_output=True, text=True,
                             env={**env, "CUHK_DIR": str(tmp_path / "absent")}, cwd=tmp_path)
    assert no_data.returncode == 2
    assert no_data.stderr.strip() == (f"train_release.sh: no CUHK data set (image/ and gt/) at '{tmp_path / 'absent'}'; "
                                      "see data/README.md")
    (tmp_path / "cuhk/image").mkdir(parents=True)
    (tmp_path / "cuhk/gt").mkdir()
    no_list = subprocess.run(["bash", str(ROOT / "tools/train_release.sh")], capture_output=True, text=True,
                             env={**env, "CUHK_DIR": str(tmp_path / "cuhk"), "SPLIT_LIST": str(tmp_path / "none.txt")})
    assert no_list.returncode == 2 and "no CUHK-TE-1 list (cuhk_te1.txt)" in no_list.stderr
    assert not (tmp_path / "out").exists()


def command_flags(argv: list[str]) -> dict[str, str]:
    """--flag value pairs of a command line (a flag without a value maps to '')."""
    flags, key = {}, None
    for word in argv:
        if word.startswith("--"):
            key = word
            flags[key] = ""
        elif key is not None:
            flags[key] = (flags[key] + " " + word).strip()
    return flags


def _release_calls(tmp_path: Path, train_set: str | None, **settings: str) -> list[list[str]]:
    """The commands train_release.sh runs (its Python replaced by a stub that records them)."""
    (tmp_path / "cuhk/image").mkdir(parents=True, exist_ok=True)
    (tmp_path / "cuhk/gt").mkdir(exist_ok=True)
    (tmp_path / "cuhk_te1.txt").write_text("a.jpg\n")
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    stub = tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n')
    stub.chmod(0o755)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": str(stub), "CUHK_DIR": str(tmp_path / "cuhk"),
           "SPLIT_LIST": str(tmp_path / "cuhk_te1.txt"), "DUT_DIR": str(tmp_path / "absent")}
    if train_set is not None:
        env["TRAIN_SET"] = train_set
    env.update(settings)
    run = subprocess.run(["bash", str(ROOT / "tools/train_release.sh")], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    return [line.split() for line in calls.read_text().splitlines()]


def test_release_recipe_is_the_distillation_studys_control_and_refits_on_all_of_cuhk_tr1(tmp_path):
    """The shipped file (the default) is the stage-2 study's teacher + control: the same flags as
    bench/real_photo_distillation.py (paths aside), exported at 288 px. TRAIN_SET=CUHK-TR-1 runs exactly those
    flags on all 604 photos, without validation, and scores only the DUT folder."""
    from bench import real_photo_distillation as study
    first, continued, export, *_ = _release_calls(tmp_path, None)
    out = tmp_path / "study"
    for recipe, model in ((first, study.TEACHER), (continued, study.CONTROL)):
        bench = study.command(model, 43, out, str(tmp_path / "out/data_root"), {})
        assert recipe[0] == "train_single.py" and bench[1] == "train_single.py"
        ours, theirs = command_flags(recipe[1:]), command_flags(bench[2:])
        for path_flag in ("--save", "--log-dir", "--init", "--overwrite"):
            ours.pop(path_flag, None), theirs.pop(path_flag, None)
        assert ours == theirs
    assert command_flags(continued)["--init"] == str(tmp_path / "out/dffnet_release_train.pth")
    assert export[:2] == ["tools/export_model.py", str(tmp_path / "out/dffnet_release_continued.pth")]
    assert command_flags(export)["--img-size"] == "288"

    *refit, scores = _release_calls(tmp_path, "CUHK-TR-1")
    assert scores[0] == "test.py" and "CUHK-TR-1-VAL" not in scores  # its training photos: only DUT is scored
    for validated, all_photos in zip((first, continued, export), refit, strict=True):
        validated_flags, refit_flags = command_flags(validated), command_flags(all_photos)
        if all_photos[0] == "train_single.py":
            assert validated_flags.pop("--train-set") == "CUHK-TR-1-FIT"
            assert refit_flags.pop("--train-set") == "CUHK-TR-1"
            assert validated_flags.pop("--val-set") == "CUHK-TR-1-VAL" and validated_flags.pop("--val-every")
        validated_flags.pop("--description", None), refit_flags.pop("--description", None)
        assert refit_flags == validated_flags


def test_release_recipe_trains_both_runs_at_train_size_and_says_so_in_the_export(tmp_path):
    first, continued, export, *_ = _release_calls(tmp_path, None)
    at_320 = _release_calls(tmp_path, None, TRAIN_SIZE="320")
    assert [command_flags(run)["--img-size"] for run in (first, continued, export)] == ["224", "224", "288"]
    assert [command_flags(run)["--img-size"] for run in at_320[:3]] == ["320", "320", "288"]
    assert "trained at 224 px" in command_flags(export)["--description"]
    assert "trained at 320 px" in command_flags(at_320[2])["--description"]
    for default, changed in zip((first, continued), at_320[:2], strict=True):
        default_flags, changed_flags = command_flags(default), command_flags(changed)
        default_flags.pop("--img-size"), changed_flags.pop("--img-size")
        assert changed_flags == default_flags


@pytest.mark.parametrize("path", sorted(shipped_files()), ids=lambda p: p.name)
def test_each_shipped_file_has_its_recorded_digest_in_its_model_card(path):
    cards = "\n".join(card.read_text() for card in path.parent.glob("MODEL_CARD*.md"))
    assert f"`{shipped_files()[path]}`" in cards, f"no model card beside {path.name} gives its recorded SHA-256"
    assert f"`{path.name}`" in cards


@pytest.mark.parametrize("card_path", ["checkpoint/release/MODEL_CARD.md", "depth_pretrained/MODEL_CARD.md",
                                       "depth_pretrained/MODEL_CARD_lite2.md"])
def test_each_card_states_its_recipe_time_without_amx_and_with_amx_where_known(card_path: str):
    card = (ROOT / card_path).read_text()
    row = next(line for line in card.splitlines() if line.startswith("| training time |"))
    kinds = ("without AMX", "with AMX") if "MODEL_CARD_lite2" not in card_path else ("without AMX",)
    for kind in kinds:
        assert re.search(rf"\*\*{kind}\*\* [^;|]*\d+ min", row), f"{card_path}'s training time says nothing {kind}"


def test_results_json_records_the_size_each_network_ran_at(tmp_path):
    """An exported file runs at the size it names (here 96 px, trained at 64), --img-size overrides it; each
    results.json entry says which size its scores come from."""
    torch.manual_seed(0)
    model = build_model("dffnet", backbone="resnest14d")
    trained = tmp_path / "trained.pth"
    save_checkpoint({"format": "ddffnet-checkpoint-v1", "model": model.state_dict(), "model_config": model.config,
                     "config": {"img_size": 64, "backbone": "resnest14d"}, "epoch": 1}, trained)
    exported = export_release(trained, tmp_path / "at96.pth", "run at 96", 96)
    for folder in ("image", "gt"):
        (tmp_path / "set" / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / f"set/image/{name}.png")
        Image.fromarray(np.where(rng.random((40, 56)) > 0.5, 255, 0).astype(np.uint8)).save(
            tmp_path / f"set/gt/{name}.png")
    dataset = f"folder:{tmp_path / 'set'}:white=in-focus"
    for extra, expected in (([], 96), (["--img-size", "64"], 64)):
        out = tmp_path / f"out{expected}"
        code, _ = _run_test_py(["--checkpoint", str(exported), "--dataset", dataset, "--out", str(out),
                                "--workers", "0", *extra])
        assert code == 0
        results = json.loads((out / "results.json").read_text())
        assert [entry["img_size"] for entry in results["results"]] == [expected]
        assert results["run"]["img_size"] == (int(extra[1]) if extra else "each network's own (its result's img_size)")
