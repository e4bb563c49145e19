"""Second round of the safety net: each test pins a behaviour that some one-line change of the code got
past the rest of the suite, with expectations worked out by hand (mask orientation, the projectors'
optimiser, the paper's CLI defaults, atomic checkpoints, delta < 1.25, GT-size resizing, the ImageNet
constants, flipped depth, rounded saved maps, the EBD IoU tie) and the one-way imports."""
from __future__ import annotations

import ast
import dataclasses
import io
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import engine.resume
import engine.stages
import train_kd
import train_single
from datasets import DepthDataset, MaskPolarity, build_dataset
from datasets.polarity import load_mask
from datasets.transforms import denormalise, normalise
from engine.config import DistillConfig, TrainConfig
from engine.evaluate import EvalSettings, evaluate_model
from engine.options import config_from_flags
from metrics.depth import relative_depth_errors
from metrics.protocol import OfficialMetrics, StandardMetrics, get_protocol
from models import build_midas, build_model, make_frozen_teacher
from utils.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from utils.distributed import DistributedContext
from tests.test_safety_net import FixedMap, write_half_focus_set

ROOT = Path(__file__).resolve().parents[1]
CPU = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def exif_tag(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# ---- 1. a mask tagged with an EXIF orientation is turned like its photo


def test_a_masks_exif_orientation_is_applied_to_its_pixels(tmp_path: Path) -> None:
    """Stored 64 wide x 40 high, white on its left half, tagged 6 (turn clockwise to view): upright it
    is 40 wide x 64 high and white on its top half."""
    stored = np.zeros((40, 64), np.uint8)
    stored[:, :32] = 255
    (tmp_path / "image").mkdir()
    (tmp_path / "gt").mkdir()
    Image.fromarray(stored).save(tmp_path / "gt" / "phone.png", exif=exif_tag(6))
    Image.new("RGB", (64, 40), (120, 90, 60)).save(tmp_path / "image" / "phone.jpg", exif=exif_tag(6))
    upright = np.zeros((64, 40), np.uint8)
    upright[:32] = 1
    np.testing.assert_array_equal(load_mask(tmp_path / "gt" / "phone.png", MaskPolarity.WHITE_IN_FOCUS), upright)
    test = build_dataset(f"folder:{tmp_path}:white=in-focus", "test", img_size=32)
    assert test.size_mismatch == []
    np.testing.assert_array_equal(test[0]["mask"][0].numpy(), upright)


# ---- 2. stage 2's two optimisers


def test_stage2_projectors_have_their_own_adam_with_weight_decay(tmp_path: Path) -> None:
    """Student: Adam lr 1e-4, no weight decay; projectors: Adam lr 0.1, weight decay 5e-4 (REPRODUCTION 5.1)."""
    config = config_from_flags(vars(train_kd.parse_args(["--backbone", "resnet18", "--pretrained", "none", "--save",
                                                   str(tmp_path / "m.pth")])), DistillConfig)
    teachers = {"defocus": make_frozen_teacher(build_model("dffnet", "resnet18")),
                "depth": make_frozen_teacher(build_midas("resnet18", features=16))}
    stage = engine.stages.build_feature_distill_stage(config, CPU, teachers)
    [student_group] = stage.optimizer.param_groups
    [projector_group] = stage.extra_optimizers["projectors"].param_groups
    assert (student_group["lr"], student_group["weight_decay"]) == (1e-4, 0.0)
    assert (projector_group["lr"], projector_group["weight_decay"]) == (0.1, 5e-4)
    projectors = [p for module in stage.extra_modules.values() for p in module.parameters()]
    assert {id(p) for p in projector_group["params"]} == {id(p) for p in projectors}
    assert {id(p) for p in student_group["params"]} == {id(p) for p in stage.model.parameters()}


# ---- 3. the paper's settings are the CLI defaults (docs/REPRODUCTION.md, sections 4 and 5.1)

STAGE1_DEFAULTS = {"model": "dffnet", "backbone": "resnest101e", "pretrained": "imagenet", "train_set": "CUHK-TR-1",
                   "img_size": 320, "no_augment": False, "batch_size": 6, "accumulate": 1, "epochs": 74,
                   "schedule_epochs": 75, "lr": 1e-4, "lr_power": 0.9, "clip": 0.5, "loss": "bce+edge",
                   "edge_reduction": "sum", "seed": 42, "amp": "off"}
STAGE2_DEFAULTS = {**STAGE1_DEFAULTS, "distill": "feature", "teachers": "both", "teacher": "checkpoint/DFFNet.pth",
                   "depth_teacher": "depth_pretrained/midas_v21-f6b98070.pt", "teacher_bn": "batch",
                   "final_weight": None, "projector_lr": 0.1, "projector_wd": 5e-4}


@pytest.mark.parametrize("script, config_type, save, expected", [
    (train_single, TrainConfig, "checkpoint/DFFNet.pth", STAGE1_DEFAULTS),
    (train_kd, DistillConfig, "checkpoint/D-DFFNet.pth", STAGE2_DEFAULTS),
])
def test_cli_defaults_are_the_papers_settings(script, config_type, save: str, expected: dict) -> None:
    """The flags' defaults and the config's own (what bench/ and code users get) are both the paper's."""
    for defaults in (vars(script.parse_args([])), dataclasses.asdict(config_type())):
        assert {key: defaults[key] for key in expected} == expected
        assert defaults["save"] == save


# ---- 4. a checkpoint write that fails midway leaves the previous file


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "model.pth"
    save_checkpoint({"epoch": 1, "weights": torch.ones(1000)}, path)
    real_save = torch.save

    def half_then_disk_full(obj, f) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        half = buffer.getvalue()[: buffer.tell() // 2]
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(half)
        else:
            f.write(half)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"epoch": 2, "weights": torch.zeros(1000)}, path)
    monkeypatch.undo()
    previous = read_checkpoint(path)
    assert previous["epoch"] == 1 and torch.equal(previous["weights"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]  # no temporary file left behind


def test_a_half_written_file_is_refused_in_one_line(tmp_path: Path) -> None:
    """What the previous test protects against: the half file itself does not load."""
    buffer = io.BytesIO()
    torch.save({"epoch": 2, "weights": torch.zeros(1000)}, buffer)
    path = tmp_path / "model.pth"
    path.write_bytes(buffer.getvalue()[: buffer.tell() // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(path)


# ---- 5. depth accuracy: delta < 1.25


def test_delta_counts_depth_ratios_below_1_25() -> None:
    """An inverted prediction gets scale 0, so the aligned map is the target's mean inverse depth 1.3
    (1/m). Depth ratios against 1/t: t = 1.0 -> 1.3, t = 1.3 -> 1, t = 1.6 -> 1.6/1.3 = 1.23: three of
    four below 1.25 (all four below 1.5). AbsRel = |t/1.3 - 1| averaged: (0.3 + 0 + 0 + 0.3)/1.3/4."""
    target = torch.tensor([[[[1.0, 1.3], [1.3, 1.6]]]])
    errors = relative_depth_errors(-target, target)
    assert errors["delta1"].item() == 0.75
    assert errors["abs_rel"].item() == pytest.approx(0.6 / 1.3 / 4, abs=1e-6)


# ---- 6. standard protocol: a map smaller than its GT is resized bilinearly


def test_standard_protocol_resizes_a_map_to_the_gt_bilinearly() -> None:
    """P(in-focus) [0, 1] at 1x2 -> 1x4 bilinear (half-pixel centres): [0, 0.25, 0.75, 1]; 8-bit codes
    0, 64, 191, 255. GT in-focus on the right half: the errors are 64/255 twice, MAE = 128/255/4
    (nearest would give [0, 0, 1, 1] and MAE 0)."""
    metrics = StandardMetrics(min_max=False)
    row = metrics.update(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]), "a")
    assert row["resized"] == "yes"
    assert row["mae"] == pytest.approx(128 / 255 / 4, abs=1e-9)


# ---- 7. the ImageNet normalisation constants


def test_normalise_uses_the_imagenet_mean_and_std() -> None:
    """Pixel (255, 0, 51): ((1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225)."""
    pixel = Image.new("RGB", (1, 1), (255, 0, 51))
    expected = torch.tensor([2.2489083, -2.0357143, -0.9155556]).view(3, 1, 1)
    torch.testing.assert_close(normalise(pixel), expected, rtol=0, atol=1e-6)
    # all ones back to RGB: mean + std = (0.485 + 0.229, 0.456 + 0.224, 0.406 + 0.225)
    torch.testing.assert_close(denormalise(torch.ones(3, 1, 1)), torch.tensor([0.714, 0.680, 0.631]).view(3, 1, 1),
                               rtol=0, atol=1e-6)


# ---- 8. a flipped depth sample flips its depth map too


def test_depth_augmentation_flips_image_and_depth_together(tmp_path: Path) -> None:
    """8x8 image bright on its left half, depth 1 m there and 4 m on the right: inverse depth 1.0 and
    0.25 (1/m) must stay on the bright side whichever way the sample is flipped."""
    (tmp_path / "image").mkdir()
    (tmp_path / "depth").mkdir()
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = 230
    depth_mm = np.full((8, 8), 4000, np.uint16)
    depth_mm[:, :4] = 1000
    Image.fromarray(image).save(tmp_path / "image" / "0.png")
    Image.fromarray(depth_mm).save(tmp_path / "depth" / "0.png")
    dataset = DepthDataset(tmp_path, img_size=8, augment=True)
    near, far = torch.full((1, 8, 4), 1.0), torch.full((1, 8, 4), 0.25)
    torch.manual_seed(0)
    flips = 0
    for _ in range(8):
        item = dataset[0]
        bright_left = item["image"][:, :, :4].mean() > item["image"][:, :, 4:].mean()
        left, right = (near, far) if bright_left else (far, near)
        assert torch.equal(item["depth"][..., :4], left) and torch.equal(item["depth"][..., 4:], right)
        flips += not bright_left
    assert 0 < flips < 8


# ---- 9. saved maps are rounded to 8 bits, not truncated

PROBS = [[0.999, 0.25], [0.003, 0.6]]
GREY = [[255, 64], [1, 153]]  # round(255 p): 254.745, 63.75, 0.765, 153.0


def test_saved_maps_are_rounded_to_the_nearest_grey_level(tmp_path: Path) -> None:
    """The 2x2 map nearest-upsampled to the 8x12 image: 4x6 blocks of GREY."""
    settings = EvalSettings(protocol=get_protocol("official"), workers=0, batch_size=1, img_size=32, save_maps=True,
                            grid=0)
    entry = evaluate_model(FixedMap(PROBS), "fixed", "none", write_half_focus_set(tmp_path / "set"), settings,
                           tmp_path / "out")
    saved = np.asarray(Image.open(Path(entry["maps"]) / "a.png"))
    np.testing.assert_array_equal(saved, np.kron(np.array(GREY, np.uint8), np.ones((4, 6), np.uint8)))


# ---- 10. EBD IoU: a pixel at exactly 0.5 is blurred (the authors' p <= 0.5)


def test_ebd_iou_counts_a_pixel_at_one_half_as_blurred() -> None:
    """Map [[0.5, 0], [1, 1]], GT blurred on the top row: both top pixels are predicted blurred, IoU 1
    (with p < 0.5 the 0.5 pixel would be in-focus: intersection 1 block, union 2, IoU 0.5)."""
    metrics = get_protocol("official").metrics("EBD-1305")
    assert isinstance(metrics, OfficialMetrics) and metrics.iou_size == (320, 320)
    row = metrics.update(torch.tensor([[0.5, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]]), "a")
    assert row["iou"] == 1.0 and metrics.summary()["iou"] == 1.0


# ---- 11. a resumed run gets back python's and numpy's generators, not only torch's


def test_rng_states_survive_a_checkpoint_for_python_numpy_and_torch(tmp_path: Path) -> None:
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    save_checkpoint({"rng": engine.resume.rng_state(torch.device("cpu"))}, tmp_path / "state.pth")
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    engine.resume.set_rng_state(read_checkpoint(tmp_path / "state.pth")["rng"], torch.device("cpu"))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == draws


# ---- imports go one way: no module of the project imports, even indirectly, one that imports it


def project_imports() -> dict[str, set[str]]:
    """{module: the project's modules it imports} over every .py file outside tests/ and .venv/."""
    files = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] not in ("tests", ".venv"):
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                             for alias in node.names)
        graph[name] = {module for module in found if module in files and module != name}
    return graph


def test_packages_import_down_the_layers_only() -> None:
    """utils is plumbing: it imports no other package of the project; metrics imports nothing of engine."""
    graph = project_imports()
    upward = {"utils": ("datasets", "engine", "losses", "metrics", "models"), "metrics": ("engine",)}
    for package, above in upward.items():
        found = sorted(f"{module} -> {imported}" for module, imports in graph.items()
                       if module.split(".")[0] == package for imported in imports if imported.split(".")[0] in above)
        assert found == []


def test_no_import_circle() -> None:
    graph = project_imports()
    assert "datasets.polarity" in graph["datasets.base"]  # the walk sees relative imports
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            assert module != start, f"{start} imports itself through {sorted(seen)}"
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
