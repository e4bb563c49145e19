"""Scale-and-shift-invariant depth loss and the depth-teacher trainer."""
from __future__ import annotations

import pytest
import torch

from losses.depth import align_scale_shift, gradient_matching_loss, scale_shift_invariant_loss


def test_alignment_recovers_scale_and_shift():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 1, 16, 16, generator=g)
    pred = (target - 0.7) / 2.5
    valid = torch.ones_like(target, dtype=torch.bool)
    assert torch.allclose(align_scale_shift(pred, target, valid), target, atol=1e-5)
    assert scale_shift_invariant_loss(pred, target).item() < 1e-6


def test_loss_value_on_known_residual():
    target = torch.zeros(1, 1, 4, 4)
    target[..., :, 2:] = 1.0
    pred = torch.zeros(1, 1, 4, 4)  # constant prediction: best alignment is the mean, 0.5
    ssi = scale_shift_invariant_loss(pred, target, grad_weight=0.0)
    assert abs(ssi.item() - 0.5 * 0.25) < 1e-6  # residual is +-0.5 everywhere
    grad = gradient_matching_loss(torch.full((1, 1, 4, 4), 0.5) - target, torch.ones(1, 1, 4, 4, dtype=torch.bool), 1)
    assert abs(grad.item() - 4 / 16) < 1e-6  # one vertical edge of height 4, |step| = 1


def test_invalid_pixels_are_ignored():
    target = torch.rand(2, 1, 8, 8)
    pred = 3 * target + 1
    pred[..., 0, 0] = 100.0
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[..., 0, 0] = False
    assert scale_shift_invariant_loss(pred, target, valid).item() < 1e-6
    assert scale_shift_invariant_loss(pred, target).item() > 1e-3


def test_train_depth_writes_a_teacher_that_loads(tmp_path):
    from datasets.synthetic import generate_dataset
    from models import load_midas
    from train_depth import main

    data = generate_dataset(tmp_path / "syn", n=4, seed=3, size=64)
    save = tmp_path / "midas_small.pth"
    main(["--data", str(data), "--val-data", str(data), "--img-size", "64", "--epochs", "1", "--batch-size", "2",
          "--features", "16", "--workers", "0", "--device", "cpu", "--save", str(save),
          "--log-dir", str(tmp_path / "log")])
    teacher = load_midas(save)
    assert teacher.config == {"name": "midas", "encoder": "resnet18", "features": 16,
                              "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    features = teacher.features(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == teacher.feature_channels == [512, 256, 128, 64]
    assert (tmp_path / "log" / "epochs.csv").read_text().count("\n") == 2

    longer = tmp_path / "longer.pth"
    common = ["--data", str(data), "--img-size", "64", "--epochs", "1", "--batch-size", "2", "--workers", "0",
              "--device", "cpu", "--loss", "ordinal", "--anchor-weight", "0", "--warmup-steps", "2",
              "--init", str(save), "--log-dir", str(tmp_path / "log2")]
    main([*common, "--features", "16", "--save", str(longer)])
    assert load_midas(longer).config == teacher.config
    with pytest.raises(SystemExit, match=f"--init: .*{save.name}"):
        main([*common, "--features", "32", "--save", str(tmp_path / "wrong.pth")])


def test_train_depth_names_a_folder_without_depth(tmp_path):
    from train_depth import main

    (tmp_path / "image").mkdir()
    with pytest.raises(SystemExit, match="--data: .*missing folder depth"):
        main(["--data", str(tmp_path), "--device", "cpu", "--save", str(tmp_path / "x.pth")])


def test_a_fresh_midas_starts_with_a_nonzero_depth_map_and_gradients():
    from models import build_midas

    torch.manual_seed(0)
    midas = build_midas("resnet18", features=16)
    depth = midas(torch.randn(2, 3, 64, 64)).depth
    assert (depth > 0).float().mean() > 0.5
    scale_shift_invariant_loss(depth, torch.rand(2, 1, 64, 64)).backward()
    assert midas.pretrained.layer1[0].weight.grad.abs().sum() > 0



def test_a_midas_on_an_imagenet_encoder_keeps_its_depth_map_alive_while_it_learns():
    """ImageNet features are large: with PyTorch's default init of the last convolution the map started half zero
    and the depth loss pushed the rest into the final ReLU's dead zone within ten steps (a constant map for
    good). The head starts near 1 everywhere instead."""
    from datasets.scenes import generate_image
    from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
    from losses.depth import ordinal_depth_loss
    from models import build_midas

    torch.manual_seed(0)
    midas = build_midas("tf_efficientnet_lite0", features=32, pretrained=True).train()
    scenes = [generate_image(0, index, 96)[0] for index in range(4)]
    images = torch.stack([torch.as_tensor(scene.image).permute(2, 0, 1).float() / 255 for scene in scenes])
    images = (images - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    inverse_depth = torch.stack([1 / torch.as_tensor(scene.depth_m).float()[None] for scene in scenes])
    optimiser = torch.optim.Adam(midas.parameters(), lr=3e-4)
    for _ in range(15):
        depth = midas(images).depth
        loss = ordinal_depth_loss(depth, inverse_depth)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert (midas(images).depth > 0).float().mean() > 0.9

def test_mean_anchor_loss_value_and_gradient_to_the_offset():
    from losses.depth import mean_anchor_loss

    target = torch.stack([torch.full((1, 4, 4), 2.0), torch.full((1, 4, 4), 1.0)])
    pred = torch.zeros(2, 1, 4, 4, requires_grad=True)
    loss = mean_anchor_loss(pred, target)
    assert abs(loss.item() - (4 + 1) / 2) < 1e-6
    loss.backward()
    assert (pred.grad < 0).all()  # pushes a collapsed (zero) map back up; the invariant loss alone cannot
    assert scale_shift_invariant_loss(pred, target).item() == 0.0


def test_train_depth_stops_on_non_finite_weights_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A BatchNorm running variance turning inf in epoch 2: no save, the epoch-1 file survives byte for byte."""
    import engine.depth
    import engine.train
    from datasets.synthetic import generate_dataset
    from train_depth import main

    data = generate_dataset(tmp_path / "syn", n=4, seed=3, size=64)
    save = tmp_path / "midas_small.pth"
    built, epoch1_file = [], []
    real_build, real_set_lr = engine.depth.build_midas, engine.train.set_lr

    def build_and_keep(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    def set_lr_then_diverge(optimizer, lr):
        if epoch1_file == [] and save.exists():  # the start of epoch 2
            epoch1_file.append(save.read_bytes())
            built[0].get_submodule(first_bn).running_var.fill_(float("inf"))
        real_set_lr(optimizer, lr)

    first_bn = next(name for name, m in real_build("resnet18", features=16).named_modules()
                    if isinstance(m, torch.nn.BatchNorm2d))
    monkeypatch.setattr(engine.depth, "build_midas", build_and_keep)
    monkeypatch.setattr(engine.train, "set_lr", set_lr_then_diverge)
    with pytest.raises(SystemExit, match=rf"^non-finite weights after epoch 2: {first_bn}\.running_var \(inf\); "
                                         r"stopping without saving .* Last good checkpoint: .*midas_small\.pth "
                                         r"\(epoch 1\)$"):
        main(["--data", str(data), "--img-size", "64", "--epochs", "3", "--batch-size", "2", "--features", "16",
              "--workers", "0", "--device", "cpu", "--save", str(save), "--log-dir", str(tmp_path / "log")])
    assert save.read_bytes() == epoch1_file[0]


def test_train_depth_stops_when_the_depth_map_dies(tmp_path, monkeypatch):
    """A final ReLU that outputs zero everywhere gets no gradient back: training stops with the remedy named
    instead of running to the end on a constant map (what lr 2e-3 did to a 5,120-step run)."""
    import engine.depth
    from datasets.synthetic import generate_dataset
    from train_depth import main

    data = generate_dataset(tmp_path / "syn", n=4, seed=3, size=64)
    real_build = engine.depth.build_midas

    def build_dead(*args, **kwargs):
        model = real_build(*args, **kwargs)
        with torch.no_grad():
            model.scratch.output_conv[-2].bias.fill_(-1e3)  # the last conv before the ReLU: always negative
        return model

    monkeypatch.setattr(engine.depth, "build_midas", build_dead)
    monkeypatch.setattr(engine.depth, "DEAD_STEPS", 3)
    with pytest.raises(SystemExit, match=r"zero at 99% of its pixels or more for 3 steps .*lower --lr, raise --anchor-weight or warm up"):
        main(["--data", str(data), "--img-size", "64", "--epochs", "2", "--batch-size", "2", "--features", "16",
              "--workers", "0", "--device", "cpu", "--save", str(tmp_path / "m.pth"), "--log-dir", str(tmp_path / "l")])


def test_normalised_loss_is_zero_for_a_positive_affine_map_and_penalises_an_inverted_one():
    """Any s * target + t with s > 0 scores 0 under both losses. An inverted map (s < 0) also scores 0 under
    the least-squares fit, which flips it back; the median normalisation keeps the sign and penalises it."""
    from losses.depth import normalised_depth_loss

    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 1, 16, 16, generator=g) + 0.1
    assert normalised_depth_loss(3 * target + 0.5, target).item() < 1e-5
    inverted = 2.0 - target
    assert scale_shift_invariant_loss(inverted, target).item() < 1e-6
    assert normalised_depth_loss(inverted, target, grad_weight=0.0).item() > 1.0
    pred = torch.rand(2, 1, 16, 16, generator=g, requires_grad=True)
    normalised_depth_loss(pred, target).backward()
    assert pred.grad.abs().sum() > 0


def test_score_depth_reports_the_teacher_beside_a_constant_map_and_names_bad_files(tmp_path, capsys):
    import json

    from datasets.synthetic import generate_dataset
    from models import build_midas
    from tools.score_depth import main
    from utils.checkpoint import model_checkpoint, save_checkpoint

    data = generate_dataset(tmp_path / "syn", n=3, seed=3, size=64)
    teacher = save_checkpoint(model_checkpoint(build_midas("resnet18", features=16), {}, 1), tmp_path / "m.pth")
    main([str(teacher), str(data), "--img-size", "64", "96", "--device", "cpu", "--json", str(tmp_path / "s.json")])
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert [(r["img_size"], r["images"]) for r in rows] == [(64, 3), (96, 3)]
    assert all(0 < r["constant_abs_rel"] < 1 and 0 <= r["delta1"] <= 1 for r in rows)
    assert capsys.readouterr().out.count(f"| {data} |") == 2
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="checkpoint: .*bad.pth"):
        main([str(tmp_path / "bad.pth"), str(data), "--img-size", "64", "--device", "cpu"])


def test_ordinal_target_is_the_mid_rank_and_ignores_any_increasing_transform():
    """Ties share the middle of their ranks; 1 is the nearest pixel; exp / affine maps of the inverse depth give
    the same target, an inverted map a different one, and the loss of the target itself is 0."""
    from losses.depth import ordinal_depth, ordinal_depth_loss

    inverse_depth = torch.tensor([0.5, 0.5, 2.0, 8.0]).view(1, 1, 1, 4)
    assert torch.allclose(ordinal_depth(inverse_depth).flatten(), torch.tensor([0.375, 0.375, 0.75, 1.0]))
    g = torch.Generator().manual_seed(2)
    target = torch.rand(2, 1, 12, 12, generator=g) + 0.05
    for transformed in (3 * target + 1, target.exp()):
        assert torch.equal(ordinal_depth(transformed), ordinal_depth(target))
    assert not torch.equal(ordinal_depth(-target), ordinal_depth(target))
    assert ordinal_depth_loss(ordinal_depth(target), target).item() < 1e-6
    pred = torch.rand(2, 1, 12, 12, generator=g, requires_grad=True)
    ordinal_depth_loss(pred, target).backward()
    assert pred.grad.abs().sum() > 0


def test_warmup_factor_ramps_linearly_then_holds():
    from utils.schedule import warmup_factor

    assert [warmup_factor(s, 4) for s in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    assert warmup_factor(1, 0) == 1.0


def test_depth_oracles_rank_the_maps_as_the_metric_should(tmp_path):
    """bench/depth_oracles.py on a few tiny scenes: the true order is nearly perfect, a constant map is the
    worst, noise on the true depth costs more as it grows, and the JSON holds every row."""
    import json

    from bench.depth_oracles import main

    main(["--n", "6", "--seed", "7", "--size", "48", "--json", str(tmp_path / "o.json")])
    table = json.loads((tmp_path / "o.json").read_text())["oracles"]
    assert table["true order (per-image rank)"]["abs_rel"] < 0.15
    assert max(row["abs_rel"] for row in table.values()) == table["constant"]["abs_rel"]
    noisy = [table[f"true depth x layer noise, sigma {s}"]["abs_rel"] for s in (0.1, 0.5)]
    assert noisy[0] < noisy[1]
    assert {"figure / ground (objects near, backdrop far)", "defocus magnitude, abs(1/z - 1/z_focus)"} <= set(table)
