"""What `--resume` needs beyond the weights: the random generators of every process, and the training
checkpoint that holds them with the optimisers, the sampler and the gradient scaler."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn

from engine.config import ConfigError, DepthConfig, LoopConfig, flag
from utils.checkpoint import CheckpointError, model_checkpoint, read_training_checkpoint
from utils.distributed import DistributedContext, EpochShuffleSampler
from utils.schedule import poly_lr


class Resumable(Protocol):
    """What a checkpoint saves of a stage (engine.train.Stage): the model, its optimiser, and the stage's other
    optimisers and modules."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    extra_optimizers: dict[str, torch.optim.Optimizer]
    extra_modules: dict[str, nn.Module]


def rng_state(device: torch.device) -> dict[str, Any]:
    """Python, numpy, torch and (on a CUDA device) that device's generator states, as types
    torch.load(weights_only=True) accepts. Only this process's own GPU is saved: under torchrun every rank
    sees every GPU, and another rank's generator is that rank's to save."""
    version, mt_state, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": {"version": version, "state": torch.tensor(mt_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore the generators saved by `rng_state`; a saved CUDA state goes to `device` (this process's GPU)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if isinstance(state["cuda"], torch.Tensor) and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng_states(ctx: DistributedContext) -> list[dict[str, Any]]:
    """Every process's generator states, indexed by rank."""
    state = rng_state(ctx.device)
    if not ctx.enabled:
        return [state]
    states: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def training_checkpoint(stage: Resumable, config: LoopConfig, epoch: int, sampler: EpochShuffleSampler,
                        scaler: torch.amp.GradScaler, best_val_mae: float | None,
                        rng_states: list[dict[str, Any]]) -> dict[str, Any]:
    """Our checkpoint (utils.checkpoint) of the stage's model + everything `--resume` needs."""
    return model_checkpoint(
        stage.model, config.to_dict(), epoch,
        optimizers={"model": stage.optimizer.state_dict(),
                    **{name: opt.state_dict() for name, opt in stage.extra_optimizers.items()}},
        extra_modules={name: module.state_dict() for name, module in stage.extra_modules.items()},
        schedule={"epoch": epoch, "lr": poly_lr(epoch, config.lr, config.schedule_epochs, config.lr_power),
                  "schedule_epochs": config.schedule_epochs},
        sampler=sampler.state_dict(),
        grad_scaler=scaler.state_dict(),
        best_val_mae=best_val_mae,
        rng=rng_states,
    )


def read_resumable(path: Path, config: LoopConfig) -> dict[str, Any]:
    """The training checkpoint at `path`, refused (ConfigError naming --resume) when it belongs to another kind
    of run, predates resuming, or was trained with a setting of `config.resume_must_match` that differs."""
    try:
        state = read_training_checkpoint(path)
    except CheckpointError as e:
        raise ConfigError(f"--resume: {e}") from None
    is_depth_teacher = state.get("model_config", {}).get("name") == "midas"
    if is_depth_teacher and not isinstance(config, DepthConfig):
        raise ConfigError(f"--resume {path}: is a depth-teacher checkpoint (MiDaS, written by train_depth.py), not a "
                          "blur detector's run: resume the --save of a train_single.py / train_kd.py run")
    if isinstance(config, DepthConfig) and not is_depth_teacher:
        raise ConfigError(f"--resume {path}: is a blur detector's run, not a depth teacher's: resume the --save of a "
                          "train_depth.py run")
    if "rng" not in state:
        raise ConfigError(f"--resume {path}: written by a train_depth.py without --resume support (no random "
                          "generator states); start it afresh, or --init from it")
    for key in config.resume_must_match:
        if key in state["config"] and state["config"][key] != getattr(config, key):
            raise ConfigError(f"--resume {path}: {flag(key)} {getattr(config, key)!r} differs from the checkpoint's "
                              f"{state['config'][key]!r}")
    return state


def resume_from(path: Path, stage: Resumable, config: LoopConfig, scaler: torch.amp.GradScaler,
                ctx: DistributedContext) -> tuple[int, float | None]:
    """Load a training checkpoint into the stage; returns (last completed epoch, best validation MAE)."""
    state = read_resumable(path, config)
    stage.model.load_state_dict(state["model"])
    stage.optimizer.load_state_dict(state["optimizers"]["model"])
    for name, opt in stage.extra_optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    for name, module in stage.extra_modules.items():
        module.load_state_dict(state["extra_modules"][name])
    load_grad_scaler(scaler, state["grad_scaler"], path, ctx)
    if len(state["rng"]) == ctx.world_size:
        set_rng_state(state["rng"][ctx.rank], ctx.device)
    elif ctx.is_main:
        print(f"--resume {path}: saved with {len(state['rng'])} process(es), now {ctx.world_size}: "
              "random streams are reseeded, so the run is not bit-identical to an uninterrupted one")
    return int(state["epoch"]), state["best_val_mae"]


def load_grad_scaler(scaler: torch.amp.GradScaler, saved: dict[str, Any], path: Path, ctx: DistributedContext) -> None:
    """Restore the fp16 gradient scaler. A run saved without fp16 (--amp off or bf16) stored an empty state:
    resumed with --amp fp16 the scaler starts afresh (its initial scale), as a new fp16 run's does."""
    if scaler.is_enabled() and not saved:
        if ctx.is_main:
            print(f"--resume {path}: saved without --amp fp16, so the fp16 gradient scaler starts afresh")
        return
    scaler.load_state_dict(saved)
