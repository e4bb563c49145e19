"""Loading the authors' released state_dicts (synthetic, with the shapes of state_dicts/*.json), our own
checkpoints and DDP / torch.compile files; the clear errors for everything else."""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import stat
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from models import build_model, list_models, load_checkpoint, load_model
from models.weights import authors_key, stored_variant
from utils.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, model_checkpoint, read_training_checkpoint,
                              save_checkpoint)

SMALL_BACKBONE = {name: "resnest14d" for name in list_models()} | {"dffnet_vgg16": "vgg16"}
DEAD = {
    "dffnet": r"^resnest\.layer[34]_2\.",
    "dffnet_wo_dffm": r"^resnest\.layer[34]_2\.|^agg1\.conv_upsample[1236]\.",
    "dffnet_no_attention": r"^resnest\.layer[34]_2\.",
    "dffnet_no_side": r"^resnest\.layer[34]_2\.",
    "pdnet": r"^resnest\.layer[34]_2\.|^rfb[1-4]_1\.",
    "dffnet_vgg16": r"^$",
}


def manifest(spec_dir: Path, name: str) -> dict:
    return json.loads((spec_dir / "state_dicts" / f"{name}.json").read_text())


POOL = 1 << 23
NORMAL_POOL = torch.randn(2 * POOL, generator=torch.Generator().manual_seed(0))


class RandomSource:
    """Cheap distinct random tensors: slices at random offsets of one shared pool of normal samples."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def normal_like(self, shape: list[int]) -> torch.Tensor:
        n = math.prod(shape)
        assert n <= POOL
        offset = int(torch.randint(0, POOL, (1,), generator=self.generator))
        return NORMAL_POOL[offset:offset + n].reshape(shape).clone()

    def tensor(self, key: str, shape: list[int], dtype: str) -> torch.Tensor:
        """Values that keep a deep network finite: He-scaled conv weights, positive BN scales and variances."""
        if dtype == "int64":
            return torch.randint(0, 1000, shape, dtype=torch.int64, generator=self.generator)
        values = self.normal_like(shape)
        if key.endswith("running_var"):
            return values.abs_() * 0.5 + 0.5
        if len(shape) == 4:
            return values.mul_((2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5)
        if re.search(r"(bn\d?|conv1\.[14]|downsample\.2|\.bn)\.weight$", key):
            return values.abs_() * 0.25 + 0.5
        return values.mul_(0.1)


def synthetic_authors_state(entries: dict[str, dict], seed: int = 0) -> dict[str, torch.Tensor]:
    source = RandomSource(seed)
    return {k: source.tensor(k, v["shape"], v["dtype"]) for k, v in entries.items()}


def small_authors_state(spec_dir: Path, name: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """An authors'-layout file for a small backbone: the manifest's head keys exactly, the backbone in the
    authors' naming (layer3_1 / layer4_1, plus the dead layer3_2 / layer4_2 copies)."""
    entries = {k: v for k, v in manifest(spec_dir, name)["state_dict"].items() if not k.startswith("resnest.")}
    if name != "dffnet_vgg16":
        for key, value in model.encoder.model.state_dict().items():
            entry = {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}
            stage = re.match(r"layer([34])\.", key)
            if stage:
                entries[f"resnest.layer{stage[1]}_1.{key[7:]}"] = entry
                entries[f"resnest.layer{stage[1]}_2.{key[7:]}"] = entry
            else:
                entries[f"resnest.{key}"] = entry
    return synthetic_authors_state(entries, seed=len(name))


# ---------------------------------------------------------------- full size: DFFNet with ResNeSt-101e


@pytest.fixture(scope="module")
def big_dffnet() -> nn.Module:
    return build_model("dffnet", "resnest101e")


@pytest.fixture(scope="module")
def authors_dffnet_file(spec_dir, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = synthetic_authors_state(manifest(spec_dir, "dffnet")["state_dict"])
    path = tmp_path_factory.mktemp("authors") / "DFFNet.pth"
    torch.save(state, path)
    return path, state


def test_dffnet_resnest101e_has_no_dead_weights(big_dffnet, spec_dir):
    assert sum(p.numel() for p in big_dffnet.parameters()) == 47_808_677
    assert manifest(spec_dir, "dffnet")["params_receiving_grad_in_forward"] == 47_808_677


@pytest.fixture(scope="module")
def loaded_big_dffnet(big_dffnet, authors_dffnet_file) -> tuple[nn.Module, dict]:
    metadata = load_checkpoint(big_dffnet, authors_dffnet_file[0])
    return big_dffnet, metadata


def test_authors_dffnet_checkpoint_loads(loaded_big_dffnet, authors_dffnet_file):
    model, metadata = loaded_big_dffnet
    _, state = authors_dffnet_file
    assert metadata == {}
    ours = model.state_dict()
    dead = [k for k in state if re.match(DEAD["dffnet"], k)]
    assert len(dead) == 714                        # exactly resnest.layer3_2.* and resnest.layer4_2.*
    loaded = [k for k in state if k not in dead]
    assert len(loaded) == len(ours) == 1373
    for key in loaded:
        assert torch.equal(ours[authors_key(key)], state[key]), key


def test_backbone_equals_timm_resnest101e_loaded_through_the_key_map(loaded_big_dffnet, authors_dffnet_file,
                                                                     spec_dir):
    model, _ = loaded_big_dffnet
    _, state = authors_dffnet_file
    key_map = json.loads((spec_dir / "key_maps" / "resnest101e.json").read_text())["official_to_timm"]
    reference = timm.create_model("resnest101e", features_only=True, out_indices=(1, 2, 3, 4))
    mapped = {timm_key: state[f"resnest.{official}"] for official, timm_key in key_map.items()
              if not re.match(r"layer[34]_2\.", official)}
    reference.load_state_dict(mapped, strict=True)
    model.eval(), reference.eval()
    x = torch.randn(1, 3, 64, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model.encoder(x)
        expected = reference(x)[::-1]
    assert [f.shape[1] for f in ours] == [2048, 1024, 512, 256]
    for a, b in zip(ours, expected):
        assert torch.isfinite(a).all() and a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- every variant, small backbones


@pytest.fixture(scope="module")
def small_models() -> dict[str, nn.Module]:
    return {name: build_model(name, SMALL_BACKBONE[name]) for name in list_models()}


@pytest.fixture(scope="module")
def small_authors_files(spec_dir, small_models, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    folder = tmp_path_factory.mktemp("small_authors")
    files = {}
    for name, model in small_models.items():
        state = small_authors_state(spec_dir, name, model)
        torch.save(state, folder / f"{name}.pth")
        files[name] = folder / f"{name}.pth", state
    return files


@pytest.mark.parametrize("name", list_models())
def test_each_variant_loads_a_file_of_its_own_manifest(small_models, small_authors_files, name):
    model = small_models[name]
    path, state = small_authors_files[name]
    assert load_checkpoint(model, path) == {}
    ours = model.state_dict()
    loaded = [k for k in state if not re.match(DEAD[name], k)]
    assert len(loaded) == len(ours)
    for key in loaded:
        assert torch.equal(ours[authors_key(key)], state[key]), key


INDISTINGUISHABLE = {frozenset({"dffnet", "dffnet_wo_dffm"})}  # NG has DFFNet's exact key set


@pytest.mark.parametrize("model_name", list_models())
def test_a_file_of_another_variant_is_rejected(small_models, small_authors_files, model_name):
    for file_name, (path, _) in small_authors_files.items():
        if file_name == model_name or frozenset({file_name, model_name}) in INDISTINGUISHABLE:
            continue
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            load_checkpoint(small_models[model_name], path)


def test_wrong_variant_error_lists_the_mismatch(small_models, small_authors_files):
    path, _ = small_authors_files["dffnet"]
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(small_models["dffnet_no_attention"], path)
    message = str(error.value)
    assert message.startswith(f"{path}: does not fit the model")
    assert "4 unexpected keys" in message and "agg1.spatial_attention1.0.weight" in message
    assert "missing keys" not in message


def test_shape_mismatch_is_listed(small_authors_files, small_models, tmp_path):
    _, state = small_authors_files["dffnet"]
    state = dict(state, **{"agg1.conv5.weight": torch.zeros(1, 64, 1, 1)})
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"1 keys with a different shape:\n    agg1\.conv5\.weight: "
                                              r"file \(1, 64, 1, 1\), model \(1, 128, 1, 1\)"):
        load_checkpoint(small_models["dffnet"], tmp_path / "bad.pth")


def test_the_variant_of_an_authors_file_is_recognised(spec_dir):
    expected = {name: name for name in list_models()} | {"dffnet_wo_dffm": "dffnet"}
    for name in list_models():
        assert stored_variant(manifest(spec_dir, name)["state_dict"]) == expected[name]
    assert stored_variant(manifest(spec_dir, "midas_v21")["state_dict"]) == "midas"


def test_load_model_builds_the_recognised_variant(small_authors_files):
    path, state = small_authors_files["pdnet"]
    model = load_model(path, backbone="resnest14d")
    assert model.config == {"name": "pdnet", "backbone": "resnest14d", "depth_heads": False,
                            "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    assert model.training
    assert torch.equal(model.state_dict()["reducers.0.weight"], state["agg1.conv11.weight"])


# ---------------------------------------------------------------- unreadable files


def test_missing_truncated_and_foreign_files(small_models, small_authors_files, tmp_path):
    model = small_models["dffnet"]
    with pytest.raises(CheckpointError, match=r"nothere\.pth: no such file"):
        load_checkpoint(model, tmp_path / "nothere.pth")
    data = small_authors_files["dffnet"][0].read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: not a readable PyTorch checkpoint"):
        load_checkpoint(model, tmp_path / "truncated.pth")
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a PyTorch checkpoint$"):
        load_checkpoint(model, tmp_path / "notes.txt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match=r"foreign\.pth: neither a state_dict nor a"):
        load_checkpoint(model, tmp_path / "foreign.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match=r"tensor\.pth: expected a state_dict .* found Tensor"):
        load_model(tmp_path / "tensor.pth")


@pytest.mark.parametrize("name, text", [("notes.txt", "epoch 12: MAE 0.041\n"), ("config.json", '{"lr": 1e-4}'),
                                        ("D-DFFNet.pth", "<!DOCTYPE html><html><body>Sign in</body></html>")])
def test_text_json_and_html_files_are_not_checkpoints(tmp_path, name, text):
    """A saved web page or a config passed as a checkpoint: one line, never torch's weights_only=False advice."""
    (tmp_path / name).write_text(text)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(tmp_path / name))}: not a PyTorch checkpoint$"):
        load_model(tmp_path / name)


def test_an_unsafe_pickle_is_refused_without_the_weights_only_advice(tmp_path):
    torch.save({"model": {}, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match=r"pickled\.pth: refused: .*could run code .*\(argparse\.Namespace\)$") \
            as error:
        load_model(tmp_path / "pickled.pth")
    assert "weights_only" not in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_checkpoints_get_the_permissions_of_the_umask(tmp_path, umask):
    """Written atomically (temporary file + rename) yet with the mode any new file gets, not mkstemp's 0600."""
    previous = os.umask(umask)
    try:
        for epoch in (1, 2):  # a new file, then a replaced one
            path = save_checkpoint({"epoch": epoch}, tmp_path / "model.pth")
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    finally:
        os.umask(previous)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


# ---------------------------------------------------------------- our format, DDP and torch.compile files


def _randomised(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=generator) + 0.5 if v.is_floating_point() else v + seed
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_ddp_and_compile_prefixes(small_models, tmp_path, prefix):
    model = small_models["dffnet_no_side"]
    state = _randomised(model, seed=5)
    torch.save({prefix + k: v for k, v in state.items()}, tmp_path / "wrapped.pth")
    assert load_checkpoint(model, tmp_path / "wrapped.pth") == {}
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_our_checkpoint_round_trip(tmp_path):
    model = build_model("dffnet", "resnest14d", depth_heads=True)
    state = _randomised(model, seed=7)
    model.load_state_dict(state)
    optimizer = torch.optim.Adam(model.decoder.parameters())
    path = save_checkpoint({"format": CHECKPOINT_FORMAT, "model": {"module." + k: v for k, v in state.items()},
                            "model_config": model.config, "config": {"lr": 1e-4, "amp": "off"}, "epoch": 12,
                            "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()},
                           tmp_path / "DFFNet.pth")
    loaded = load_model(path)
    assert loaded.config == model.config and loaded.training
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    metadata = load_checkpoint(build_model(**model.config), path)
    assert metadata["epoch"] == 12 and metadata["config"] == {"lr": 1e-4, "amp": "off"}
    assert metadata["model_config"] == model.config
    assert metadata["optimizer"] == optimizer.state_dict()             # no tensors in it before a step
    assert "model" not in metadata and "rng" not in metadata           # entries holding tensors are left out
    with pytest.raises(CheckpointError, match=r"holds a model built with .*'depth_heads': True"):
        load_checkpoint(build_model("dffnet", "resnest14d"), path)
    with pytest.raises(CheckpointError, match=r"holds a 'dffnet' model, but 'pdnet' was asked for"):
        load_model(path, name="pdnet")


# ---------------------------------------------------------------- non-finite weights, bare files in our layout


@pytest.mark.parametrize("value, kind", [(float("inf"), "inf"), (float("nan"), "NaN")])
def test_a_checkpoint_with_non_finite_weights_is_refused_in_one_line(tmp_path, value, kind):
    """A diverged run's file (e.g. an inf BatchNorm variance) is named at loading, not by a metric's traceback."""
    model = build_model("dffnet_no_side", "resnest14d")
    model.decoder.refine.bn.running_var[3] = value
    ours = save_checkpoint(model_checkpoint(model, {}, 1, optimizers={"model": {}}), tmp_path / "diverged.pth")
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)
    for path, load in ((ours, load_model), (bare, load_model), (ours, read_training_checkpoint)):
        with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: holds non-finite weights, first "
                                                  rf"decoder\.refine\.bn\.running_var \({kind}\): the run that wrote "
                                                  r"it diverged; use an earlier checkpoint or train again with a "
                                                  r"lower --lr$"):
            load(path)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("depth_heads", [False, True])
def test_a_bare_state_dict_in_our_layout_builds_its_own_variant(tmp_path, name, depth_heads):
    """`torch.save(model.state_dict())` of any variant loads without --model (not only the authors' layout)."""
    model = build_model(name, SMALL_BACKBONE[name], depth_heads=depth_heads)
    state = _randomised(model, seed=3)
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "bare.pth")
    loaded = load_model(tmp_path / "bare.pth", backbone=SMALL_BACKBONE[name])
    assert loaded.config == {"name": name, "backbone": SMALL_BACKBONE[name], "depth_heads": depth_heads,
                              "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
