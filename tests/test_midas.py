"""MiDaS v2.1 teacher: the authors' state_dict layout, encoder-only features, depth output, small
encoders, frozen-teacher modes."""
from __future__ import annotations

import json
import math
import re

import pytest
import timm
import torch
from torch import nn

from models import MidasNet, build_midas, load_checkpoint, load_midas, load_model, make_frozen_teacher
from utils.checkpoint import CHECKPOINT_FORMAT, CheckpointError, save_checkpoint


def synthetic_state(entries: dict[str, dict], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the manifest's shapes: He-scaled convs, positive BN scales and variances."""
    generator = torch.Generator().manual_seed(seed)
    pool = torch.randn(1 << 24, generator=generator)
    state = {}
    for key, entry in entries.items():
        shape = entry["shape"]
        if entry["dtype"] == "int64":
            state[key] = torch.randint(0, 1000, shape, dtype=torch.int64, generator=generator)
            continue
        offset = int(torch.randint(0, 1 << 23, (1,), generator=generator))
        values = pool[offset:offset + math.prod(shape)].reshape(shape).clone()
        if key.endswith("running_var"):
            values = values.abs() * 0.5 + 0.5
        elif len(shape) == 4:
            values *= (2.0 / math.prod(shape[1:])) ** 0.5
        elif re.search(r"bn\d?\.weight$|layer1\.1\.weight$|downsample\.1\.weight$", key):
            values = values.abs() * 0.25 + 0.5
        else:
            values *= 0.1
        state[key] = values
    return state


@pytest.fixture(scope="module")
def midas_manifest(spec_dir) -> dict:
    return json.loads((spec_dir / "state_dicts" / "midas_v21.json").read_text())


@pytest.fixture(scope="module")
def authors_midas(midas_manifest, tmp_path_factory) -> tuple[MidasNet, dict[str, torch.Tensor]]:
    """The synthetic midas_v21-f6b98070.pt, loaded with load_midas (the only ResNeXt-101 build here)."""
    state = synthetic_state(midas_manifest["state_dict"])
    path = tmp_path_factory.mktemp("midas") / "midas_v21-f6b98070.pt"
    torch.save(state, path)
    return load_midas(path), state


def test_authors_midas_file_loads_strictly(authors_midas, midas_manifest):
    model, state = authors_midas
    ours = model.state_dict()
    assert list(ours) == list(midas_manifest["state_dict"])          # same keys, same order
    assert sum(p.numel() for p in model.parameters()) == midas_manifest["num_parameters"] == 105_362_945
    for key, value in state.items():
        assert torch.equal(ours[key], value), key
    assert model.config == {"name": "midas", "encoder": "resnext101_32x8d", "features": 256,
                            "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    assert model.feature_channels == [2048, 1024, 512, 256]


def test_features_run_the_encoder_only_and_equal_torchvision_resnext(authors_midas, spec_dir):
    """features() returns the ResNeXt-101 stage outputs (checked against timm's torchvision-layout model
    loaded through key_maps/midas_encoder.json) without calling any decoder module."""
    model, state = authors_midas
    key_map = json.loads((spec_dir / "key_maps" / "midas_encoder.json").read_text())["midas_to_torchvision"]
    reference = timm.create_model("resnext101_32x8d", features_only=True, out_indices=(1, 2, 3, 4))
    reference.load_state_dict({tv: state[midas] for midas, tv in key_map.items()}, strict=True)
    model.eval(), reference.eval()
    decoder_calls = []
    hooks = [m.register_forward_hook(lambda *_: decoder_calls.append(1)) for m in model.scratch.modules()]
    x = torch.randn(1, 3, 64, 32)
    try:
        with torch.no_grad():
            features = model.features(x)
            expected = reference(x)[::-1]
    finally:
        for hook in hooks:
            hook.remove()
    assert decoder_calls == []
    assert [tuple(f.shape) for f in features] == [(1, 2048, 2, 1), (1, 1024, 4, 2), (1, 512, 8, 4),
                                                  (1, 256, 16, 8)]
    for a, b in zip(features, expected):
        assert torch.isfinite(a).all() and a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_forward_returns_depth_and_the_same_features():
    torch.manual_seed(0)
    model = build_midas("resnet18", features=32).eval()
    decoder_calls = []
    model.scratch.output_conv.register_forward_hook(lambda *_: decoder_calls.append(1))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
        features = model.features(x)
    assert decoder_calls == [1]
    assert out.depth.shape == (1, 1, 64, 96) and (out.depth >= 0).all() and out.depth.max() > 0
    for a, b in zip(out.features, features):
        assert torch.equal(a, b)


def test_decoder_intermediate_shapes_match_the_manifest(midas_manifest):
    """Shapes of every scratch stage at the authors' 320x320 (meta device: no arithmetic)."""
    with torch.device("meta"):
        model = build_midas().eval()
    seen = {}
    for name in ("layer1_rn", "layer2_rn", "layer3_rn", "layer4_rn", "refinenet4", "refinenet3", "refinenet2",
                 "refinenet1", "output_conv"):
        model.scratch.get_submodule(name).register_forward_hook(
            lambda module, args, output, name=name: seen.__setitem__(f"scratch.{name}", list(output.shape)))
    out = model(torch.empty(1, 3, 320, 320, device="meta"))
    expected = {k: v for k, v in midas_manifest["intermediate_shapes"].items() if k.startswith("scratch.")}
    assert seen == expected
    assert [list(f.shape) for f in out.features] == midas_manifest["forward_outputs_eval_mode"]["feat"]


def test_residual_conv_unit_adds_the_rectified_input():
    """MiDaS' in-place ReLU makes the skip connection add relu(x), not x."""
    torch.manual_seed(0)
    model = build_midas("resnet18", features=8)
    unit = model.scratch.refinenet1.resConfUnit2
    x = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        zeroed = [p.zero_() for p in unit.parameters()]
        assert zeroed and torch.equal(unit(x), torch.relu(x))


@pytest.mark.parametrize("encoder, channels", [("resnet18", [512, 256, 128, 64]),
                                               ("resnest14d", [2048, 1024, 512, 256])])
def test_small_encoders(encoder, channels, tmp_path):
    model = build_midas(encoder, features=64)
    assert model.feature_channels == channels
    assert model.scratch.layer4_rn.weight.shape == (64, channels[0], 3, 3)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.depth.shape == (2, 1, 64, 64)
    assert [f.shape[1] for f in out.features] == channels
    out.depth.mean().backward()
    assert all(p.grad is not None for p in model.pretrained.layer1.parameters())
    path = save_checkpoint({"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                            "model_config": model.config, "epoch": 1}, tmp_path / "midas_small.pth")
    loaded = load_midas(path) if encoder == "resnet18" else load_model(path)
    assert isinstance(loaded, MidasNet) and loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_midas_errors(tmp_path):
    with pytest.raises(ValueError, match="must be a timm ResNet-family model"):
        build_midas("mobilenetv3_small_100")
    small = build_midas("resnet18", features=32)
    state = dict(small.state_dict())
    del state["scratch.refinenet4.resConfUnit1.conv1.weight"]
    torch.save(state, tmp_path / "partial.pt")
    missing = r"(?s)partial\.pt: .*1 missing keys:\n    scratch\.refinenet4\.resConfUnit1"
    with pytest.raises(CheckpointError, match=missing):
        load_checkpoint(small, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="divisible by 32"):
        small.features(torch.randn(1, 3, 48, 64))


def test_frozen_teacher_modes():
    teacher = make_frozen_teacher(build_midas("resnet18", features=32), bn="eval")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    teacher = make_frozen_teacher(build_midas("resnet18", features=32), bn="batch")
    assert teacher.training and not any(p.requires_grad for p in teacher.parameters())
    bn = teacher.pretrained.layer1[1]
    before = bn.running_mean.clone()
    with torch.no_grad():
        teacher.features(torch.randn(2, 3, 64, 64))
    assert not torch.equal(bn.running_mean, before)        # the authors' quirk: statistics keep moving
    with pytest.raises(ValueError, match="must be one of"):
        make_frozen_teacher(nn.Linear(2, 2), bn="frozen")
