"""DFFNet family: registry, output shapes, fidelity of the decoder to the authors' equations, pretrained
initialisation. CPU, small backbones."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import DBDOutput, build_model, list_models, pretrained_available
from models.layers import RFB
from models.weights import authors_key
from utils.checkpoint import CheckpointError

SMALL_BACKBONE = {name: "resnest14d" for name in list_models()} | {"dffnet_vgg16": "vgg16"}
RESNEST_CHANNELS = [2048, 1024, 512, 256]
# side-output strides (coarse -> fine) and feature (channels, stride) per variant, from state_dicts/*.json
SIDE_STRIDES = {
    "dffnet": [16, 16, 8, 4],
    "dffnet_wo_dffm": [32, 16, 8, 4],
    "dffnet_no_attention": [16, 16, 8, 4],
    "dffnet_no_side": [],
    "pdnet": [],
    "dffnet_vgg16": [8, 8, 4, 2],
}
FEATURES = {name: list(zip(RESNEST_CHANNELS, [32, 16, 8, 4])) for name in list_models()}
FEATURES["dffnet_vgg16"] = [(512, 16), (512, 8), (256, 4), (128, 2)]


@pytest.fixture(scope="module")
def small_models() -> dict[str, nn.Module]:
    """One eval-mode model per registry entry, with randomised BN statistics."""
    torch.manual_seed(0)
    built = {}
    for name in list_models():
        model = build_model(name, SMALL_BACKBONE[name])
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.2, 0.2)
        built[name] = model.eval()
    return built


def test_registry_names():
    assert list_models() == ["dffnet", "dffnet_wo_dffm", "dffnet_no_attention", "dffnet_no_side", "pdnet",
                             "dffnet_vgg16"]
    with pytest.raises(ValueError, match="unknown model 'dfnet'"):
        build_model("dfnet")


@pytest.fixture(scope="module")
def meta_models() -> dict[str, nn.Module]:
    """Every registry entry on the meta device: shape propagation without arithmetic (numerics are
    checked at small sizes below)."""
    with torch.device("meta"):
        return {name: build_model(name, SMALL_BACKBONE[name]).eval() for name in list_models()}


@pytest.mark.parametrize("size", [(320, 320), (256, 384)], ids=["320x320", "256x384"])
@pytest.mark.parametrize("name", list_models())
def test_output_shapes(meta_models, name, size):
    model = meta_models[name]
    h, w = size
    out = model(torch.empty(2, 3, h, w, device="meta"))
    assert isinstance(out, DBDOutput)
    assert out.logits.shape == (2, 1, h, w)
    assert [tuple(s.shape) for s in out.sides] == [(2, 1, h // s, w // s) for s in SIDE_STRIDES[name]]
    assert [tuple(f.shape) for f in out.features] == [(2, c, h // s, w // s) for c, s in FEATURES[name]]
    assert model.feature_channels == [c for c, _ in FEATURES[name]]
    assert out.depth == []


def test_real_forward_at_a_non_square_size(small_models):
    with torch.no_grad():
        out = small_models["dffnet"](torch.randn(1, 3, 64, 96))
    assert out.logits.shape == (1, 1, 64, 96)
    assert [tuple(s.shape) for s in out.sides] == [(1, 1, 4, 6), (1, 1, 4, 6), (1, 1, 8, 12), (1, 1, 16, 24)]
    assert torch.isfinite(out.logits).all() and out.logits.std() > 0


def test_features_runs_the_encoder_only(small_models):
    model = small_models["dffnet"]
    calls = []
    hook = model.decoder.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.features(x)
        assert not calls
        reference = model(x).features
    hook.remove()
    assert calls == [1]
    assert all(torch.equal(a, b) for a, b in zip(features, reference))
    with pytest.raises(ValueError, match="divisible by 32"):
        model.features(torch.zeros(1, 3, 48, 40))


def test_input_size_must_be_divisible_by_32(small_models):
    with pytest.raises(ValueError, match=r"divisible by 32, got 330x320"):
        small_models["dffnet"](torch.randn(1, 3, 330, 320))


def test_config_rebuilds_the_same_network(meta_models):
    for model in meta_models.values():
        with torch.device("meta"):
            rebuilt = build_model(**model.config)
        assert rebuilt.config == model.config
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
               {k: v.shape for k, v in model.state_dict().items()}


def test_depth_heads_r_dffnet():
    model = build_model("dffnet", "resnest14d", depth_heads=True).eval()
    assert model.config["depth_heads"] is True
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    # final layer (1/4) first, then the four decoder branches (1/16, 1/16, 1/8, 1/4)
    assert [tuple(d.shape) for d in out.depth] == [(1, 1, 16, 24), (1, 1, 4, 6), (1, 1, 4, 6),
                                                    (1, 1, 8, 12), (1, 1, 16, 24)]
    assert all(torch.isfinite(d).all() for d in out.depth)
    assert len(out.sides) == 4
    plain = build_model("dffnet", "resnest14d")
    extra = set(model.state_dict()) - set(plain.state_dict())
    assert extra == {f"decoder.depth_heads.{i}.{p}" for i in range(5) for p in ("weight", "bias")}


# ---- fidelity: the decoder against docs/REPRODUCTION.md section 3, with modules looked up by the AUTHORS' names


def _authors_module(model: nn.Module, authors_name: str) -> nn.Module:
    """Our module holding the authors' `authors_name` (e.g. 'agg1.conv_upsample2'), via the key map."""
    ours = authors_key(authors_name + ".weight")
    return model.get_submodule(ours.rsplit(".", 1)[0])


# The authors' RFB names, coarse -> fine, and the final upsampling factor (docs/REPRODUCTION.md section 3
# and its variant table: the VGG16 model, tapped at strides 2-16, predicts at H/2 from its RFBs rfb4_1,
# rfb3_1, rfb2_1 and rfb5_1).
AUTHORS_RFBS = {"dffnet_vgg16": ("rfb4_1", "rfb3_1", "rfb2_1", "rfb5_1")}
FINAL_UPSAMPLING = {"dffnet_vgg16": 2}


def _basic_conv(model: nn.Module, name: str, x: torch.Tensor, padding: int | tuple[int, int],
                dilation: int = 1) -> torch.Tensor:
    """The authors' BasicConv2d `name`: conv without bias, then eval-mode BatchNorm, no activation."""
    conv, bn = _authors_module(model, f"{name}.conv"), _authors_module(model, f"{name}.bn")
    y = F.conv2d(x, conv.weight, padding=padding, dilation=dilation)
    return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=1e-5)


def _reference_rfb(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """The authors' RFB `name` (docs/REPRODUCTION.md section 3): ReLU(conv_cat(cat[b0..b3]) + conv_res(x))."""
    branches = [_basic_conv(model, f"{name}.branch0.0", x, 0)]
    for b, k in ((1, 3), (2, 5), (3, 7)):
        y = _basic_conv(model, f"{name}.branch{b}.0", x, 0)
        y = _basic_conv(model, f"{name}.branch{b}.1", y, (0, k // 2))
        y = _basic_conv(model, f"{name}.branch{b}.2", y, (k // 2, 0))
        branches.append(_basic_conv(model, f"{name}.branch{b}.3", y, k, dilation=k))
    fused = _basic_conv(model, f"{name}.conv_cat", torch.cat(branches, 1), 1)
    return F.relu(fused + _basic_conv(model, f"{name}.conv_res", x, 0))


def _reference_forward(model: nn.Module, name: str, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The authors' forward written from docs/REPRODUCTION.md section 3, one equation per line."""
    m = lambda n: _authors_module(model, n)  # noqa: E731
    up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
    final_up = nn.Upsample(scale_factor=FINAL_UPSAMPLING.get(name, 4), mode="bilinear", align_corners=True)
    layer4, layer3, layer2, layer1 = model.encoder(x)
    if name == "pdnet":
        x1, x2, x3, x4 = (m("agg1.conv11")(layer4), m("agg1.conv22")(layer3), m("agg1.conv33")(layer2),
                          m("agg1.conv44")(layer1))
        x2_2 = m("agg1.conv_concat2")(torch.cat([x2, m("agg1.conv_upsample4")(up(x1))], 1))
        x3_2 = m("agg1.conv_concat3")(torch.cat([x3, m("agg1.conv_upsample5")(up(x2_2))], 1))
        x4_2 = m("agg1.conv_concat4")(torch.cat([x4, m("agg1.conv_upsample7")(up(x3_2))], 1))
        y = m("agg1.conv5")(m("agg1.conv4")(x4_2))
        return final_up(y), []
    rfbs = AUTHORS_RFBS.get(name, ("rfb4_1", "rfb3_1", "rfb2_1", "rfb1_1"))
    r4, r3, r2, r1 = (_reference_rfb(model, rfb, f) for rfb, f in zip(rfbs, (layer4, layer3, layer2, layer1)))
    cu = lambda k: m(f"agg1.conv_upsample{k}")  # noqa: E731
    if name == "dffnet_wo_dffm":
        g3, g2, g1, top = r3, r2, r1, r4
    else:
        g3 = cu(1)(up(r4)) * r3
        g2 = cu(2)(up(up(r4))) * cu(3)(up(r3)) * r2
        g1 = cu(2)(up(up(up(r4)))) * cu(3)(up(up(r3))) * cu(6)(up(r2)) * r1
        top = cu(4)(up(r4))
    sides = []
    if name != "dffnet_no_side":
        sides = [m(f"agg1.side{k}")(f) for k, f in zip(range(1, 5), (top, g3, g2, g1))]
    if name in ("dffnet", "dffnet_wo_dffm"):
        top, g3, g2, g1 = (m(f"agg1.spatial_attention{k}")(s) * f
                           for k, s, f in zip(range(1, 5), sides, (top, g3, g2, g1)))
    if name == "dffnet_wo_dffm":
        top = cu(4)(up(top))
    a2 = m("agg1.conv_concat2")(torch.cat([g3, top], 1))
    a3 = m("agg1.conv_concat3")(torch.cat([g2, cu(5)(up(a2))], 1))
    a4 = m("agg1.conv_concat4")(torch.cat([g1, cu(7)(up(a3))], 1))
    y = m("agg1.conv5")(m("agg1.conv4")(a4))
    return final_up(y), sides


@pytest.mark.parametrize("name", list_models())
def test_forward_matches_the_authors_equations(small_models, name):
    model = small_models[name]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        ref_logits, ref_sides = _reference_forward(model, name, x)
    torch.testing.assert_close(out.logits, ref_logits, rtol=0, atol=0)
    assert len(out.sides) == len(ref_sides)
    for side, ref in zip(out.sides, ref_sides):
        torch.testing.assert_close(side, ref, rtol=0, atol=0)


def test_rfb_output_is_rectified():
    """RFB ends in a ReLU, its only nonlinearity: no negative output, and a share of exact zeros."""
    torch.manual_seed(0)
    rfb = RFB(16, 8).eval()
    with torch.no_grad():
        out = rfb(torch.randn(2, 16, 12, 12))
    assert out.shape == (2, 8, 12, 12)
    assert out.min() == 0 and 0.1 < (out == 0).float().mean() < 0.9


# ---- ImageNet initialisation: the local cache, else timm's download (stubbed: no network in tests)


@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    return tmp_path / "hf"


@pytest.fixture()
def downloads(monkeypatch):
    """Stands in for the network: records each download asked for and runs `downloads.serve(repo_id, filename,
    path)` for it (by default: raise, as an offline machine does)."""
    import huggingface_hub

    class Network:
        calls: list[str] = []

        @staticmethod
        def serve(repo_id: str, filename: str) -> str:
            raise huggingface_hub.errors.LocalEntryNotFoundError(
                "An error happened while trying to locate the file on the Hub and we cannot find the requested "
                "files in the local cache.\nPlease check your connection and try again.")

    def hf_hub_download(repo_id, filename, revision=None, **_):
        Network.calls.append(f"{repo_id}/{filename}")
        return Network.serve(repo_id, filename)

    def download_url_to_file(url, dst, *args, **kwargs):
        Network.calls.append(url)
        raise OSError("[Errno 101] Network is unreachable")

    Network.calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", download_url_to_file)
    return Network


def _put_in_hf_cache(cache, repo_id: str, filename: str, state: dict[str, torch.Tensor]) -> str:
    """Write `state` where huggingface_hub keeps `filename` of `repo_id` (a snapshot named by refs/main)."""
    from safetensors.torch import save_file
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / "abc123").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text("abc123")
    path = repo / "snapshots" / "abc123" / filename
    if filename.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return str(path)


def _imagenet_state(backbone: str) -> dict[str, torch.Tensor]:
    """A timm full-model state_dict (with classifier) of random values: the layout of ImageNet files."""
    import timm
    torch.manual_seed(1)
    return {k: torch.randn_like(v) if v.is_floating_point() else v
            for k, v in timm.create_model(backbone).state_dict().items()}


def test_pretrained_from_the_hf_cache_makes_no_network_call(empty_caches, downloads):
    state = _imagenet_state("resnest14d")
    _put_in_hf_cache(empty_caches, "timm/resnest14d.gluon_in1k", "pytorch_model.bin", state)
    assert pretrained_available("resnest14d")
    model = build_model("dffnet", "resnest14d", pretrained=True)
    torch.testing.assert_close(model.encoder.model.layer3[0].conv2.fc1.weight, state["layer3.0.conv2.fc1.weight"])
    assert model.config == {"name": "dffnet", "backbone": "resnest14d", "depth_heads": False,
                            "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    assert downloads.calls == []


def test_pretrained_not_cached_is_downloaded_as_timm_does(empty_caches, downloads):
    state = _imagenet_state("resnet10t")
    downloads.serve = lambda repo_id, filename: _put_in_hf_cache(empty_caches, repo_id, filename, state)
    assert not pretrained_available("resnet10t")
    model = build_model("dffnet", "resnet10t", pretrained=True)
    assert downloads.calls == ["timm/resnet10t.c3_in1k/model.safetensors"]
    torch.testing.assert_close(model.encoder.model.layer4[0].conv2.weight, state["layer4.0.conv2.weight"])
    assert pretrained_available("resnet10t")  # cached for the next run, which asks the network nothing
    build_model("pdnet", "resnet10t", pretrained=True)
    assert len(downloads.calls) == 1


def test_pretrained_whose_download_fails_says_which_file_to_provide_in_one_line(empty_caches, downloads):
    assert not pretrained_available("resnest101e")
    with pytest.raises(FileNotFoundError) as error:
        build_model("dffnet", pretrained=True)
    message = str(error.value)
    assert downloads.calls == ["timm/resnest101e.in1k/model.safetensors"]
    assert "\n" not in message and "the download failed (An error happened while trying to locate" in message
    assert re.search(r"--pretrained PATH\): 'model\.safetensors' of https://huggingface\.co/timm/resnest101e\.in1k "
                     r"or the resnest package's resnest101-22405ba7\.pth; or train from scratch with "
                     r"--pretrained none$", message)


def test_pretrained_from_a_file_in_the_resnest_package_layout(tmp_path):
    state = _imagenet_state("resnest14d")  # conv1.*, bn1.*, layer1-4.*, fc.*: also the resnest package layout
    path = tmp_path / "resnest14-imagenet.pth"
    torch.save(state, path)
    model = build_model("pdnet", "resnest14d", pretrained=str(path))
    torch.testing.assert_close(model.encoder.model.conv1[0].weight, state["conv1.0.weight"])
    torch.testing.assert_close(model.encoder.model.layer4[0].bn3.running_var, state["layer4.0.bn3.running_var"])


def test_pretrained_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="nothere.pth: no such file"):
        build_model("dffnet", "resnest14d", pretrained=str(tmp_path / "nothere.pth"))
    wrong = tmp_path / "vgg_weights.pth"
    torch.save(_imagenet_state("resnet18"), wrong)
    with pytest.raises(CheckpointError, match=r"vgg_weights\.pth: cannot initialise timm backbone 'resnest14d'"):
        build_model("dffnet", "resnest14d", pretrained=str(wrong))
