"""The typed settings of a training run: built and checked once from the command line (engine.options) or in
code (bench/), passed to everything below the scripts, and stored in every checkpoint as a plain dict.

`LoopConfig` holds what the training loop needs whatever it trains; `TrainConfig` adds the blur detector's
model and data (train_single.py), `DistillConfig` stage 2's teachers and weights (train_kd.py), `DepthConfig`
the depth teacher's (train_depth.py). Defaults are the authors' effective run. `resolve` fills the derived
values (the device, the number of processes, the final-map weight) and raises `ConfigError`, naming the flag,
for settings that cannot run.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from losses.depth import DEPTH_LOSSES
from models import VARIANTS
from models.layers import INPUT_MULTIPLE
from utils.errors import RunError
from utils.runtime import check_amp, select_device
from utils.schedule import DISTILL_ALPHA_HOLD


class ConfigError(RunError):
    """A setting (or a file a setting names) cannot be used; the message names the flag."""


def flag(field: str) -> str:
    """The command-line flag of a config field: batch_size -> --batch-size."""
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class LoopConfig:
    """What engine.train's loop needs: schedule, batch, precision, outputs. `device` and `world_size` are
    resolved (this process's device, torchrun's process count)."""

    epochs: int = 74
    schedule_epochs: int = 75
    batch_size: int = 6
    accumulate: int = 1
    lr: float = 1e-4
    lr_power: float = 0.9
    clip: float | None = 0.5
    seed: int = 42
    workers: int = 2
    device: str = "auto"
    world_size: int = 1
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    save: str = "checkpoint/DFFNet.pth"
    resume: str | None = None
    overwrite: bool = False
    val_every: int = 1
    log_dir: str | None = None

    # settings a resumed run must share with the checkpoint it continues
    resume_must_match: ClassVar[tuple[str, ...]] = ("batch_size", "accumulate", "lr", "lr_power", "schedule_epochs",
                                                    "clip", "seed")

    @property
    def micro_batch_size(self) -> int:
        """Images per process and micro-batch: the global batch split over processes and accumulation steps."""
        return self.batch_size // (self.world_size * self.accumulate)

    @property
    def resume_path(self) -> Path | None:
        """The checkpoint --resume continues (its own path, or --save), or None for a new run."""
        return None if self.resume is None else Path(self.resume or self.save)

    def to_dict(self) -> dict[str, Any]:
        """The config as the plain dict a checkpoint stores."""
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Raise ConfigError for loop settings that cannot run."""
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"--lr must be a finite number > 0, got {self.lr}")
        if self.epochs >= self.schedule_epochs + 5:
            raise ConfigError(f"--epochs {self.epochs}: the poly schedule reaches 0 at --schedule-epochs + 5 = "
                              f"{self.schedule_epochs + 5}; raise --schedule-epochs")
        if self.batch_size % (self.world_size * self.accumulate):
            raise ConfigError(f"--batch-size {self.batch_size} must be divisible by processes x --accumulate = "
                              f"{self.world_size} x {self.accumulate}")
        if self.val_every < 1:
            raise ConfigError(f"--val-every must be >= 1, got {self.val_every}")
        check_amp(self.amp, select_device(self.device))


def check_img_size(img_size: int) -> None:
    """--img-size must be a positive multiple of the networks' coarsest stride."""
    if img_size < INPUT_MULTIPLE or img_size % INPUT_MULTIPLE:
        raise ConfigError(f"--img-size {img_size} must be a positive multiple of {INPUT_MULTIPLE}")


def check_pretrained(value: str) -> None:
    """--pretrained is imagenet, none or an existing file."""
    if value not in ("imagenet", "none") and not Path(value).is_file():
        raise ConfigError(f"--pretrained {value}: no such file (use imagenet, none or a weight file)")


def pretrained_weights(value: str) -> bool | str:
    """--pretrained imagenet|none|PATH as models.build_model's `pretrained`."""
    return {"imagenet": True, "none": False}.get(value, value)


def check_init(init: str | None) -> None:
    """--init, when given, names an existing file."""
    if init is not None and not Path(init).is_file():
        raise ConfigError(f"--init {init}: no such file")


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """Stage 1 (train_single.py): the blur detector, its data and its loss."""

    model: str = "dffnet"
    backbone: str = "resnest101e"
    pretrained: str = "imagenet"
    train_set: str = "CUHK-TR-1"
    split_file: str | None = None
    data_root: str = "data"
    img_size: int = 320
    no_augment: bool = False
    crop_scale: float = 1.0
    init: str | None = None
    encoder_lr_scale: float = 1.0
    loss: str = "bce+edge"
    edge_reduction: str = "sum"
    val_set: str | None = None
    workers: int = min(8, os.cpu_count() or 1)

    resume_must_match: ClassVar[tuple[str, ...]] = ("model", "backbone", "train_set", "img_size", "loss",
                                                    "edge_reduction", "encoder_lr_scale",
                                                    *LoopConfig.resume_must_match)

    def check(self) -> None:
        super().check()
        check_img_size(self.img_size)
        if not 0 < self.crop_scale <= 1:
            raise ConfigError(f"--crop-scale must be in (0, 1], got {self.crop_scale}")
        if not math.isfinite(self.encoder_lr_scale) or self.encoder_lr_scale <= 0:
            raise ConfigError(f"--encoder-lr-scale must be a finite number > 0, got {self.encoder_lr_scale}")
        check_init(self.init)
        check_pretrained(self.pretrained)


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """Stage 2 (train_kd.py): D-DFFNet by feature distillation, or R-DFFNet by response distillation.
    `final_weight` None resolves to the authors' 1.1 for a student with side outputs, 1.0 without."""

    distill: str = "feature"
    teachers: str = "both"
    teacher: str | None = "checkpoint/DFFNet.pth"
    depth_teacher: str = "depth_pretrained/midas_v21-f6b98070.pt"
    teacher_bn: str = "batch"
    final_weight: float | None = None
    projector_lr: float = 0.1
    projector_wd: float = 5e-4
    save: str = "checkpoint/D-DFFNet.pth"

    resume_must_match: ClassVar[tuple[str, ...]] = (*TrainConfig.resume_must_match, "distill")

    @property
    def uses_depth_teacher(self) -> bool:
        return self.distill == "response" or self.teachers in ("both", "depth")

    @property
    def uses_defocus_teacher(self) -> bool:
        return self.distill == "feature" and self.teachers in ("both", "defocus")

    def check(self) -> None:
        super().check()
        if self.distill == "feature" and self.epochs >= DISTILL_ALPHA_HOLD and \
                self.schedule_epochs <= DISTILL_ALPHA_HOLD:
            raise ConfigError(f"--schedule-epochs {self.schedule_epochs}: the alpha schedule ramps after epoch "
                              f"{DISTILL_ALPHA_HOLD} and needs more than {DISTILL_ALPHA_HOLD} (or --epochs below it)")
        if self.uses_defocus_teacher and not self.teacher:
            raise ConfigError(f"--teachers {self.teachers} needs --teacher (the stage-1 checkpoint, e.g. "
                              "checkpoint/DFFNet.pth)")


@dataclass(frozen=True)
class DepthConfig(LoopConfig):
    """The depth teacher (train_depth.py): MiDaS v2.1 on images with depth maps, relative-depth losses, a
    linear warm-up, no gradient clamp; the poly schedule runs over `epochs` unless schedule_epochs is set."""

    data: str = ""
    val_data: str | None = None
    encoder: str = "resnet18"
    features: int = 64
    pretrained: str = "none"
    init: str | None = None
    img_size: int = 320
    no_augment: bool = False
    warmup_steps: int = 0
    grad_weight: float = 0.5
    anchor_weight: float = 0.1
    loss: str = "ssi"
    epochs: int = 20
    schedule_epochs: int | None = None  # type: ignore[assignment]
    batch_size: int = 8
    lr: float = 3e-4
    clip: float | None = None
    save: str = "depth_pretrained/midas_small.pth"

    resume_must_match: ClassVar[tuple[str, ...]] = ("encoder", "features", "data", "img_size", "loss", "grad_weight",
                                                    "anchor_weight", "warmup_steps", *LoopConfig.resume_must_match)

    def check(self) -> None:
        super().check()
        check_img_size(self.img_size)
        if self.warmup_steps < 0:
            raise ConfigError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.loss not in DEPTH_LOSSES:
            raise ConfigError(f"--loss {self.loss}: choose one of {sorted(DEPTH_LOSSES)}")
        check_init(self.init)
        check_pretrained(self.pretrained)


Config = TypeVar("Config", bound=LoopConfig)


def resolve(config: Config) -> Config:
    """The config with its derived values filled (this process's device, torchrun's WORLD_SIZE, the depth
    teacher's schedule length, stage 2's final-map weight), checked: ConfigError names a flag that cannot run."""
    derived: dict[str, Any] = {"device": str(select_device(config.device)),
                               "world_size": int(os.environ.get("WORLD_SIZE", 1))}
    if isinstance(config, DepthConfig) and config.schedule_epochs is None:
        derived["schedule_epochs"] = config.epochs
    if isinstance(config, DistillConfig) and config.final_weight is None:
        variant = VARIANTS.get(config.model)
        derived["final_weight"] = 1.1 if variant is not None and variant.side_outputs else 1.0
    resolved = dataclasses.replace(config, **derived)
    resolved.check()
    return resolved
