"""Our checkpoint format, in one place: what a file holds, writing it atomically, reading untrusted files safely,
unpacking the weights and metadata, and the shipping form of a trained model.

A checkpoint of this code is a dict tagged `"format": CHECKPOINT_FORMAT` with the network's state_dict
("model"), the arguments that rebuild it ("model_config"), the run's resolved config ("config") and the last
completed "epoch"; training adds what `--resume` needs (engine.resume: optimiser states, sampler, RNG states,
...); the shipping form drops those and stores the weights in fp16. Mapping weights into a network (foreign
key layouts, strict loading) is models.weights'.
"""
from __future__ import annotations

import glob
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_FORMAT = "ddffnet-checkpoint-v1"
# First bytes of every torch.save file: a zip archive (PyTorch >= 1.6) or the legacy pickle (protocol >= 2).
TORCH_SAVE_MAGICS = (b"PK", b"\x80")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # added to the keys by DistributedDataParallel and torch.compile
MAX_LISTED_KEYS = 12


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


class _RecordingFile:
    """A binary file that remembers the OSError of a failed write: torch.save reports it as an opaque
    RuntimeError ('enforce fail at inline_container.cc'), losing e.g. 'No space left on device'."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def _temp_prefix(path: Path) -> str:
    """Temporary files of `path` are named .<name>.<pid>.<random>.tmp."""
    return f".{path.name}."


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (possibly another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files of `path` left by a save whose process is gone (killed during the write);
    returns them. Temporaries of live processes are kept."""
    removed = []
    for tmp in path.parent.glob(f"{glob.escape(_temp_prefix(path))}*.tmp"):
        pid = tmp.name[len(_temp_prefix(path)):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """Write `obj` with torch.save to a temporary file beside `path`, fsync it, then rename.

    A crash at any moment leaves either the previous file or the new one, never a partial file; the temporary
    file's name carries the writer's pid, and the next save removes those of writers that are gone. A failed
    write raises its OSError (e.g. ENOSPC). The file gets the permissions of any new file under the user's
    umask (mkstemp alone would make it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            recording = _RecordingFile(f)
            try:
                torch.save(obj, recording)
            except RuntimeError:
                if recording.error is not None:
                    raise recording.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """torch.load(weights_only=True) with errors that name the file and say what is wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    with path.open("rb") as f:
        if not f.read(2).startswith(TORCH_SAVE_MAGICS):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        if "Weights only load failed" in str(e):  # torch's text would advise the unsafe weights_only=False
            found = re.search(r"GLOBAL (\S+)", str(e))
            what = found[1] if found else "unsafe pickle"
            raise CheckpointError(f"{path}: refused: it holds Python objects beyond tensors and plain containers, "
                                  f"which could run code when loaded ({what})") from None
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated, corrupt, or not a weights file): {first_line}"
        ) from None


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """'name (NaN)' or 'name (inf)' of the first floating-point tensor holding a NaN or an infinity, else None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"{name} ({'NaN' if torch.isnan(tensor).any() else 'inf'})"
    return None


def check_finite(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose weights hold NaN or inf (written by a diverged run) in one line."""
    bad = first_non_finite(state)
    if bad is not None:
        raise CheckpointError(f"{path}: holds non-finite weights, first {bad}: the run that wrote it diverged; "
                              "use an earlier checkpoint or train again with a lower --lr")


def last_good_checkpoint(path: str | os.PathLike, last_saved_epoch: int | None) -> str:
    """What a stopped run leaves behind, for its closing message: 'PATH (epoch N)' or that there is none."""
    return f"{path} (epoch {last_saved_epoch})" if last_saved_epoch else "none: no epoch completed"


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def model_checkpoint(model: nn.Module, config: dict[str, Any], epoch: int, **state: Any) -> dict[str, Any]:
    """Our checkpoint of `model` (which has a `config`) after `epoch`, plus any `state` kept for resuming."""
    return {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "model_config": model.config,
            "config": config, "epoch": epoch, **state}


def is_model_checkpoint(obj: Any) -> bool:
    """True for a loaded checkpoint of our format (as opposed to a bare state_dict)."""
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _holds_tensor(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, dict):
        return any(_holds_tensor(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_tensor(v) for v in obj)
    return False


def _strip_wrappers(key: str) -> str:
    """Remove the prefixes DistributedDataParallel ('module.') and torch.compile ('_orig_mod.') add."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def unpack_checkpoint(obj: Any, path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict without wrapper prefixes, metadata) from a loaded file: our format or a bare state_dict."""
    if _is_state_dict(obj):
        state, metadata = obj, {}
    elif is_model_checkpoint(obj):
        state = obj.get("model")
        if not _is_state_dict(state):
            raise CheckpointError(f"{path}: '{CHECKPOINT_FORMAT}' checkpoint without a state_dict under 'model'")
        metadata = {k: v for k, v in obj.items() if k != "model" and not _holds_tensor(v)}
    elif isinstance(obj, dict):
        keys = ", ".join(map(str, list(obj)[:MAX_LISTED_KEYS]))
        raise CheckpointError(f"{path}: neither a state_dict nor a '{CHECKPOINT_FORMAT}' checkpoint (top-level keys: "
                              f"{keys})")
    else:
        raise CheckpointError(f"{path}: expected a state_dict or a '{CHECKPOINT_FORMAT}' checkpoint, found "
                              f"{type(obj).__name__}")
    return {_strip_wrappers(k): v for k, v in state.items()}, metadata


def read_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by training, with the optimiser states that resuming needs."""
    state = read_checkpoint(path, map_location="cpu")
    if not is_model_checkpoint(state) or "optimizers" not in state:
        raise CheckpointError(f"{path}: not a training checkpoint of this code (no optimiser state)")
    check_finite(state["model"], path)
    return state


def shipping_checkpoint(training_checkpoint: str | os.PathLike, description: str,
                        inference_img_size: int | None = None) -> dict[str, Any]:
    """The model of a training checkpoint for shipping: weights stored in fp16 (they load into float32), the model
    and training configuration, the epoch, a one-line description and, when given, the input size to run it at
    (else its training size); no optimiser state."""
    state, metadata = unpack_checkpoint(read_checkpoint(training_checkpoint), training_checkpoint)
    if "model_config" not in metadata:
        raise ValueError(f"{training_checkpoint}: not a checkpoint of this code (no model configuration)")
    check_finite(state, training_checkpoint)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    shipped: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "model": half, "model_config": metadata["model_config"],
                               "config": metadata.get("config", {}), "epoch": metadata.get("epoch"),
                               "description": description, "storage": "float16 weights, load into float32"}
    if inference_img_size is not None:
        shipped["inference_img_size"] = inference_img_size
    return shipped
