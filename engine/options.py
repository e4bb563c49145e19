"""Command-line flags of the training scripts (train_single.py, train_kd.py, train_depth.py), their typed config,
and the checks of a run's outputs (--save, --log-dir) and of the files its flags name.

Defaults are the authors' effective run. Every check raises a RunError with one line naming the flag, before
any work starts; the scripts print it and exit.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from datasets import DatasetError
from engine.config import Config, ConfigError, LoopConfig, resolve
from losses.depth import DEPTH_LOSSES
from utils.checkpoint import CheckpointError
from utils.runlock import RunLockError, acquire, release
from utils.runtime import AMP_DTYPES, CUBLAS_WORKSPACE

LOG_OWNER = "save.txt"  # in a log folder: the absolute --save path of the run whose logs it holds
LOG_FILES = ("steps.csv", "epochs.csv")


def add_deterministic_argument(parser: argparse.ArgumentParser) -> None:
    """--deterministic, shared by the three training scripts."""
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic algorithms only (cudnn.benchmark off, CUBLAS_WORKSPACE_CONFIG="
                             f"{CUBLAS_WORKSPACE} unless set): on CUDA two runs with the same flags on the same GPU "
                             "model and software give the same weights, and --resume continues exactly; slower")


def add_common_arguments(parser: argparse.ArgumentParser, save: str) -> None:
    """Flags shared by train_single.py and train_kd.py; defaults are the authors' effective run."""
    parser.add_argument("--model", default="dffnet", help="registry name (models.list_models())")
    parser.add_argument("--backbone", default="resnest101e", help="timm backbone of the model")
    parser.add_argument("--pretrained", default="imagenet",
                        help="backbone initialisation: imagenet | none | PATH to an ImageNet weight file")
    parser.add_argument("--train-set", default="CUHK-TR-1", help="dataset expression, e.g. CUHK-TR-1+DUT-TR")
    parser.add_argument("--split-file", default=None, metavar="PATH",
                        help="split list of the CUHK / EBD-1305 set (one image name per line), when it is not "
                             "in the data folder (data/README.md)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--no-augment", action="store_true", help="no flip / colour jitter (tests, ablations)")
    parser.add_argument("--crop-scale", type=float, default=1.0,
                        help="random crops of at least this share of the image area before the resize (1 = none, "
                             "the authors'; the shipped CPU model's recipe uses less)")
    parser.add_argument("--init", default=None, metavar="PATH",
                        help="start from all the weights of this checkpoint of the same model and backbone (e.g. a "
                             "synthetic pre-training); optimiser and schedule start afresh")
    parser.add_argument("--epochs", type=int, default=74,
                        help="epochs actually run, numbered 1..N (the authors' `--epoch 75` ran 74)")
    parser.add_argument("--schedule-epochs", type=int, default=75,
                        help="the authors' --epoch value used by the schedules: poly denominator = this + 5 (80), "
                             "alpha ramp denominator = this - 15 (60)")
    parser.add_argument("--batch-size", type=int, default=6,
                        help="GLOBAL batch, split over torchrun processes and --accumulate steps")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimiser step")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam base learning rate (poly per epoch)")
    parser.add_argument("--encoder-lr-scale", type=float, default=1.0,
                        help="the encoder's learning rate as a multiple of --lr (1 = one rate for the whole network, "
                             "the authors'; 0.1 did worse on real photos: docs/release_recipes.md)")
    parser.add_argument("--lr-power", type=float, default=0.9, help="poly power")
    parser.add_argument("--clip", type=float, default=0.5, help="element-wise gradient clamp of the model")
    parser.add_argument("--loss", choices=["bce", "bce+edge"], default="bce+edge")
    parser.add_argument("--edge-reduction", choices=["sum", "mean"], default="sum",
                        help="DOF-edge dice over the batch: sum (the authors') or mean")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default="off")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the trained network")
    add_deterministic_argument(parser)
    parser.add_argument("--save", default=save, help="checkpoint written every epoch (atomically)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                        help="continue from PATH (default: the --save file)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even when the --save file exists (or --log-dir holds another run's logs)")
    parser.add_argument("--val-set", default=None,
                        help="optional test set scored (MAE, F-beta) during training; the best MAE is kept "
                             "as <save>_best.pth, e.g. CUHK-TE-1")
    parser.add_argument("--val-every", type=int, default=1, help="validate every N epochs (with --val-set)")
    parser.add_argument("--log-dir", default=None,
                        help="CSV / TensorBoard folder (default runs/<--save path without its extension>)")


def add_distillation_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of train_kd.py beyond the common ones: which distillation, its teachers and weights."""
    parser.add_argument("--distill", choices=["feature", "response"], default="feature")
    parser.add_argument("--teachers", choices=["both", "defocus", "depth"], default="both",
                        help="feature distillation from both teachers (the paper), or one of them (ablation)")
    parser.add_argument("--teacher", default="checkpoint/DFFNet.pth",
                        help="stage-1 checkpoint (ours or the authors' DFFNet.pth)")
    parser.add_argument("--depth-teacher", default="depth_pretrained/midas_v21-f6b98070.pt",
                        help="MiDaS weights (the authors' midas_v21-f6b98070.pt or our checkpoint)")
    parser.add_argument("--teacher-bn", choices=["eval", "batch"], default="batch",
                        help="teacher BatchNorm: batch statistics (the authors': teachers left in train mode, "
                             "targets depend on which images share a batch and the running statistics drift) "
                             "or eval (recommended: running statistics, the targets of each image fixed)")
    parser.add_argument("--final-weight", type=float, default=None,
                        help="weight of the final map's loss (default: the authors' 1.1 when the student has "
                             "side outputs, 1.0 without)")
    parser.add_argument("--projector-lr", type=float, default=0.1)
    parser.add_argument("--projector-wd", type=float, default=5e-4)


def add_depth_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of train_depth.py."""
    parser.add_argument("--data", required=True, help="folder with image/ and depth/ (tools/make_synthetic.py)")
    parser.add_argument("--val-data", default=None, help="held-out folder of the same layout, evaluated every epoch")
    parser.add_argument("--encoder", default="resnet18",
                        help="timm ResNet-family or EfficientNet-Lite encoder (e.g. tf_efficientnet_lite2)")
    parser.add_argument("--features", type=int, default=64, help="decoder width (MiDaS v2.1: 256)")
    parser.add_argument("--pretrained", default="none", help="encoder initialisation: imagenet | none | PATH")
    parser.add_argument("--init", default=None, metavar="PATH",
                        help="start from all the weights of this MiDaS checkpoint of the same encoder and width (e.g. "
                             "to train a teacher longer); optimiser, warm-up and schedule start afresh")
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--no-augment", action="store_true", help="no flips (tests, ablations)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--schedule-epochs", type=int, default=None,
                        help="length of the poly schedule (denominator this + 5; default: --epochs), so that a run "
                             "can stop early and be resumed on the same schedule")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="GLOBAL batch, split over torchrun processes and --accumulate steps")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimiser step")
    parser.add_argument("--lr", type=float, default=3e-4, help="Adam base learning rate, poly decay per epoch")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="linear learning-rate warm-up over the first N steps (keeps a network trained from "
                             "scratch out of its final ReLU's dead zone)")
    parser.add_argument("--grad-weight", type=float, default=0.5, help="weight of MiDaS's gradient-matching term")
    parser.add_argument("--anchor-weight", type=float, default=0.1,
                        help="weight of the mean-matching term that keeps the non-negative output alive "
                             "(losses.depth.mean_anchor_loss); 0 = the invariant loss alone")
    parser.add_argument("--loss", choices=list(DEPTH_LOSSES), default="ssi",
                        help="ssi: MiDaS's least-squares scale-and-shift-invariant MSE; normalised: its median-"
                             "normalised L1, which keeps the sign (losses.depth.normalised_depth_loss); ordinal: L1 "
                             "to the per-image mid-rank of inverse depth (losses.depth.ordinal_depth_loss)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=list(AMP_DTYPES), default="off")
    add_deterministic_argument(parser)
    parser.add_argument("--save", default="depth_pretrained/midas_small.pth")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                        help="continue from PATH (default: the --save file)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even when the --save file exists (or --log-dir holds another run's logs)")
    parser.add_argument("--log-dir", default=None,
                        help="CSV / TensorBoard folder (default runs/<--save path without its extension>)")


def config_from_flags(flags: Mapping[str, Any], config_type: type[Config]) -> Config:
    """A script's parsed flags (vars of its argparse result) as its typed config, derived values resolved and
    checked (ConfigError names the flag)."""
    return resolve(config_type(**flags))


def check_save_is_new(config: LoopConfig) -> None:
    """A new run must not replace an existing --save file (e.g. the authors' downloaded weights) by accident."""
    if not Path(config.save).exists() or config.overwrite or config.resume is not None:
        return
    raise ConfigError(f"--save {config.save} already exists: pass --resume to continue it or --overwrite to replace "
                      "it, or choose another --save")


def check_writable(path: str | os.PathLike, flag: str, folder: bool = False) -> None:
    """Raise ConfigError naming `flag` unless a file can be created at `path` (a file path, or with folder=True a
    folder to write into). A probe file is created and removed, and any folder made for it is removed again: an
    unwritable output is found before the work instead of after it."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: is a file, expected a folder")
    if not folder and path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder, expected a file path")
    destination = path if folder else path.parent
    missing: list[Path] = []
    ancestor = destination
    while not ancestor.exists() and ancestor != ancestor.parent:
        missing.append(ancestor)
        ancestor = ancestor.parent
    made: list[Path] = []
    try:
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except OSError as e:
                raise ConfigError(f"{flag} {path}: cannot create the folder {directory} ({e.strerror})") from None
            made.append(directory)
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=destination)
        except OSError as e:
            raise ConfigError(f"{flag} {path}: cannot write in {destination} ({e.strerror})") from None
        os.close(fd)
        os.unlink(probe)
    finally:
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                directory.rmdir()


def check_outputs(config: LoopConfig) -> None:
    """--save and --log-dir must be writable (checked now, not after the first epoch), and a new run must not
    replace an existing --save."""
    check_writable(config.save, "--save")
    check_writable(log_dir(config), "--log-dir", folder=True)
    check_save_is_new(config)


def claim_log_dir(config: LoopConfig) -> Path:
    """The run's --log-dir, just before its logs are written: a new run (no --resume, no --overwrite) stops rather
    than replace the CSV logs a run with another --save left there; the --save is then recorded beside the logs.
    Logs without a recorded --save belong to this run when the folder is this --save's default one."""
    folder = log_dir(config)
    owner_file = folder / LOG_OWNER
    fresh = not config.overwrite and config.resume is None
    if fresh and any((folder / name).exists() for name in LOG_FILES):
        owner = owner_file.read_text().strip() if owner_file.is_file() else None
        if owner != os.path.abspath(config.save) and (owner is not None or config.log_dir):
            whose = f"the run with --save {owner}" if owner else "another run"
            raise ConfigError(f"--log-dir {folder} holds the logs of {whose}; choose another --log-dir, or pass "
                              "--overwrite to replace them")
    folder.mkdir(parents=True, exist_ok=True)
    owner_file.write_text(f"{os.path.abspath(config.save)}\n")
    return folder


def lock_outputs(config: LoopConfig) -> None:
    """Take the locks of --save and --log-dir for this run (utils.runlock); RunLockError when another run holds
    either."""
    try:
        acquire(config.save, "--save")
        acquire(log_dir(config), "--log-dir", folder=True)
    except RunLockError:
        release_outputs(config)
        raise


def release_outputs(config: LoopConfig) -> None:
    """Release the locks lock_outputs took (those this process holds)."""
    release(log_dir(config), folder=True)
    release(config.save)


@contextlib.contextmanager
def bad_input(flags: str) -> Iterator[None]:
    """Turn an error about a user-supplied file or name into a one-line ConfigError naming the flag(s)."""
    try:
        yield
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{flags}: {e}") from None


def log_dir(config: LoopConfig) -> Path:
    """--log-dir, by default runs/<the --save path without its extension> (runs/checkpoint/DFFNet for
    checkpoint/DFFNet.pth), so that two runs log apart whenever they save apart; a --save outside the working
    folder logs to runs/<file stem>-<hash of its absolute path>."""
    if config.log_dir:
        return Path(config.log_dir)
    save = Path(os.path.abspath(config.save))
    try:
        return Path("runs") / save.relative_to(Path.cwd()).with_suffix("")
    except ValueError:
        return Path("runs") / f"{save.stem}-{hashlib.sha1(str(save).encode()).hexdigest()[:8]}"
