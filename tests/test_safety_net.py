"""Behaviour a refactor must keep, checked against hand-computed values: the evaluated map (sigmoid,
nearest upsampling under the official protocol), the raw mask polarity of every registered set, the
element-wise gradient clamp of a training step and the R-DFFNet depth target."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from datasets import DatasetWarning, build_dataset, dataset_names
from datasets.registry import CUHK_VALIDATION_LIST
from engine.evaluate import EvalSettings, evaluate_model
from engine.config import TrainConfig
from engine.stages import dbd_validation
from engine.train import Stage, train_step
from losses import normalised_depth
from metrics.protocol import get_protocol
from models import DBDOutput
from utils.distributed import DistributedContext

CPU = DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))

# ---- evaluation: P(in-focus) = sigmoid(logits), nearest-upsampled to the image size (official protocol)

# The network's 2x2 map of P(in-focus); the image is 8x12, so nearest upsampling repeats each value
# over a 4x6 block. Its mask: top half in-focus (white), bottom half blurred.
PROBS = [[0.8, 0.6], [0.2, 0.4]]
GREY_BLOCKS = [[204, 153], [51, 102]]       # round(255 * p), white = in-focus
OFFICIAL_MAE = 0.3                          # top: |0.8-1|, |0.6-1|; bottom: |0.2-0|, |0.4-0|


class FixedMap(nn.Module):
    """A network whose logits are logit(probs) (a 2x2 map, PROBS by default) whatever the input."""

    def __init__(self, probs: list[list[float]] = PROBS) -> None:
        super().__init__()
        self.register_buffer("logits", torch.logit(torch.tensor(probs, dtype=torch.float64)).float()[None, None])

    def forward(self, images: torch.Tensor) -> DBDOutput:
        return DBDOutput(logits=self.logits.expand(images.shape[0], -1, -1, -1), sides=[], features=[])


def write_half_focus_set(folder: Path) -> str:
    """One 8x12 image under `folder` whose mask (white = in-focus) is in focus in its top half; its expression."""
    for sub in ("image", "gt"):
        (folder / sub).mkdir(parents=True)
    Image.new("RGB", (12, 8), (90, 120, 150)).save(folder / "image" / "a.png")
    mask = np.zeros((8, 12), np.uint8)
    mask[:4] = 255
    Image.fromarray(mask).save(folder / "gt" / "a.png")
    return f"folder:{folder}:white=in-focus"


@pytest.fixture
def half_focus_set(tmp_path: Path) -> str:
    return write_half_focus_set(tmp_path / "set")


def test_official_map_is_the_sigmoid_nearest_upsampled(half_focus_set: str, tmp_path: Path) -> None:
    """Guards the map polarity (not 1 - sigmoid) and nearest (not bilinear) upsampling of test.py."""
    settings = EvalSettings(protocol=get_protocol("official"), workers=0, batch_size=1, img_size=32, save_maps=True, grid=0)
    entry = evaluate_model(FixedMap(), "fixed", "none", half_focus_set, settings, tmp_path / "out")
    saved = np.asarray(Image.open(Path(entry["maps"]) / "a.png"))
    np.testing.assert_array_equal(saved, np.kron(np.array(GREY_BLOCKS, np.uint8), np.ones((4, 6), np.uint8)))
    assert entry["mae"] == pytest.approx(OFFICIAL_MAE, abs=1e-6)


def test_validation_scores_the_official_map(half_focus_set: str) -> None:
    """Guards the validation run during training: the same map and MAE as the official test protocol."""
    config = TrainConfig(val_set=half_focus_set, img_size=32, workers=0)
    validation = dbd_validation(FixedMap(), config, CPU, train_set=None)
    assert validation.best == "val_mae"
    assert validation.run()["val_mae"] == pytest.approx(OFFICIAL_MAE, abs=1e-6)


# ---- raw mask polarity of the registered sets, in the authors' folder layout

# Class of a white mask pixel after loading (1 = in-focus): the release conventions (CUHK and CTCUG
# store white = blurred, DUT and EBD white = in-focus).
WHITE_LOADS_AS = {"CUHK-TR-1": 0, "CUHK-TE-1": 0, "CUHK-TR-2": 0, "CUHK-TE-2": 0, "CUHK-TR-1-FIT": 0,
                  "CUHK-TR-1-VAL": 0, "DUT-TR": 1, "DUT-TE": 1, "CTCUG": 0, "EBD": 1, "EBD-1305": 1}
VALIDATION_NAMES = tuple(CUHK_VALIDATION_LIST.read_text().split())  # CUHK-TR-1-VAL: all must exist
AUTHORS_LAYOUT = {  # image folder, mask folder, image names (relative to the data root)
    "CUHK": ("shidatatset/image", "shidatatset/gt",
             ("out_of_focus0001.jpg", "out_of_focus0002.jpg", "out_of_focus0003.jpg") + VALIDATION_NAMES),
    "DUT-TR": ("DUT/DUT-DBD_Dataset/DUT600S_Training", "DUT/DUT-DBD_Dataset/DUT600GT_Training", ("1.jpg",)),
    "DUT-TE": ("DUT/DUT-DBD_Dataset/image", "DUT/DUT-DBD_Dataset/gt", ("1.jpg",)),
    "CTCUG": ("CTCUG/CTCUG_images", "CTCUG/CTCUG_gt", ("1.jpg",)),
    "EBD": ("EBD/image", "EBD/gt", ("1.jpg",)),
}
SPLIT_LISTS = {"split.txt": "1.bmp--out_of_focus0001.jpg\n", "cuhk_te2.txt": "out_of_focus0002.jpg\n",
               "EBD/ebd1305.txt": "1.jpg\n"}


@pytest.fixture(scope="module")
def authors_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every registered set as one 6x8 pair whose mask is white on its left half."""
    root = tmp_path_factory.mktemp("authors_data")
    mask = np.zeros((6, 8), np.uint8)
    mask[:, :4] = 255
    for image_dir, mask_dir, names in AUTHORS_LAYOUT.values():
        (root / image_dir).mkdir(parents=True)
        (root / mask_dir).mkdir(parents=True)
        for name in names:
            Image.new("RGB", (8, 6), (100, 100, 100)).save(root / image_dir / name)
            Image.fromarray(mask).save(root / mask_dir / f"{Path(name).stem}.png")
    for name, text in SPLIT_LISTS.items():
        (root / name).write_text(text)
    return root


def test_every_registered_set_has_a_polarity_expectation() -> None:
    assert sorted(dataset_names()) == sorted(WHITE_LOADS_AS)


@pytest.mark.parametrize("name", list(WHITE_LOADS_AS))
def test_white_mask_pixels_load_as_the_release_convention(authors_root: Path, name: str) -> None:
    """Guards each set's raw polarity: a white pixel of the file loads as WHITE_LOADS_AS[name]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)  # one pair instead of the paper's hundreds
        dataset = build_dataset(name, "test", root=authors_root, img_size=32)
    mask = dataset[0]["mask"]
    white = WHITE_LOADS_AS[name]
    assert mask.shape == (1, 6, 8)
    assert mask[..., :4].unique().tolist() == [white], f"{name}: white mask pixels should load as {white}"
    assert mask[..., 4:].unique().tolist() == [1 - white], f"{name}: black mask pixels should load as {1 - white}"


# ---- training step: element-wise clamp of the model's gradients before the optimiser step


class Weights(nn.Module):
    """Three weights and nothing else: the gradient of (w * slopes).sum() is `slopes`."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))


def test_train_step_clamps_each_gradient_element(tmp_path: Path) -> None:
    """Guards clip_grad_value_: gradients (2, -0.1, -5) clamped to +-0.5, then one SGD step of lr 1."""
    config = TrainConfig(clip=0.5, device="cpu", save=str(tmp_path / "m.pth"))
    model = Weights()
    slopes = torch.tensor([2.0, -0.1, -5.0])

    def loss_fn(batch: dict[str, torch.Tensor], epoch: int) -> tuple[torch.Tensor, dict]:
        return (model.w * slopes).sum(), {}

    stage = Stage(network=model, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                  loss_fn=loss_fn)
    batch = {"image": torch.zeros(1, 3, 2, 2), "mask": torch.zeros(1, 1, 2, 2)}
    train_step(stage, iter([batch]), 1, config, CPU, torch.amp.GradScaler("cpu", enabled=False))
    torch.testing.assert_close(model.w.detach(), torch.tensor([-0.5, 0.1, 0.5]), rtol=0, atol=1e-7)


# ---- R-DFFNet: the depth heads regress MiDaS's inverse depth, per image (d - median) / mean|d - median|


def test_normalised_depth_by_hand() -> None:
    """Guards the target's sign (near = large inverse depth = positive) and its per-image scale."""
    depth = torch.tensor([[[[0.0, 1.0, 3.0, 6.0, 10.0]]], [[[4.0, 4.0, 4.0, 4.0, 9.0]]]])
    expected = torch.tensor([[[[-1.0, -2 / 3, 0.0, 1.0, 7 / 3]]],   # median 3, mean |d - 3| = 3
                             [[[0.0, 0.0, 0.0, 0.0, 5.0]]]])        # median 4, mean |d - 4| = 1
    torch.testing.assert_close(normalised_depth(depth), expected)
