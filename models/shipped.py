"""The files this project trained on a CPU and ships in the repository: the real-photo DFFNet (checkpoint/release/)
and the two synthetic-depth MiDaS teachers (depth_pretrained/), each described in a MODEL_CARD*.md beside it; and
the choice of the default detector."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from utils.checkpoint import CheckpointError, read_checkpoint, save_checkpoint, shipping_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CHECKPOINT = ROOT / "checkpoint" / "release" / "dffnet_cuhk_cpu.pth"
AUTHORS_CHECKPOINT = Path("checkpoint") / "D-DFFNet.pth"  # under the working folder, else under ROOT
# the recorded digests of the committed files, checked whenever they are loaded (change one only with its file and
# its card)
SHIPPED_SHA256 = "9e54e527014481007946bec071dbe74712cbe2963f058e27bf68845611b3c804"
SHIPPED_DEPTH_TEACHER = ROOT / "depth_pretrained" / "midas_synthetic_cpu.pth"
SHIPPED_DEPTH_TEACHER_SHA256 = "4c7e86acde565798dc3c7e32809d5f50e6f0eeda43dcc5ad5cdfb9701ce78309"
SHIPPED_LITE2_DEPTH_TEACHER = ROOT / "depth_pretrained" / "midas_lite2_synthetic_cpu.pth"
SHIPPED_LITE2_DEPTH_TEACHER_SHA256 = "726554d0f12296edd9165e3a292b41199864596138dcaaeedfd1d5f84f585d14"


def shipped_files() -> dict[Path, str]:
    """{path: recorded SHA-256} of every committed weight file (read at call time, so a test can point a name
    at a copy)."""
    return {SHIPPED_CHECKPOINT: SHIPPED_SHA256, SHIPPED_DEPTH_TEACHER: SHIPPED_DEPTH_TEACHER_SHA256,
            SHIPPED_LITE2_DEPTH_TEACHER: SHIPPED_LITE2_DEPTH_TEACHER_SHA256}


_DIGESTS: dict[tuple[Path, int, int], str] = {}  # (resolved path, size, mtime in ns) -> SHA-256, once per process


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_sha256(path: Path) -> str:
    """sha256 of a resolved path, computed once per process while the file keeps its size and time."""
    info = path.stat()
    key = (path, info.st_size, info.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256(path)
    return _DIGESTS[key]


def verify_shipped(path: str | os.PathLike) -> None:
    """Raise CheckpointError when `path` is one of the files this repository ships and its content is not the
    one recorded here (a flipped bit, a cut download, a file replaced by hand); other paths pass unread."""
    try:
        resolved = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        return  # missing or a symlink loop: read_checkpoint names it
    expected = next((digest for shipped, digest in shipped_files().items() if shipped.resolve() == resolved), None)
    if expected is None or not resolved.is_file():
        return
    found = _cached_sha256(resolved)
    if found != expected:
        raise CheckpointError(f"{path}: damaged or replaced: its SHA-256 ({found[:12]}...) differs from the one "
                              f"recorded for this shipped file in models/shipped.py ({expected[:12]}...); restore it "
                              f"with `git checkout -- {_shown(resolved)}`, or record a new release's digest there")


def _shown(path: Path) -> str:
    """`path` relative to the repository when it lies inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def describe(path: str | os.PathLike) -> str:
    """One line saying what a checkpoint file is, from the description it carries (if any)."""
    verify_shipped(path)
    obj = read_checkpoint(path)
    return obj.get("description", "") if isinstance(obj, dict) else ""


def default_detector() -> tuple[Path, str]:
    """The checkpoint test.py and test.sh use without --checkpoint: the authors' D-DFFNet.pth in the working
    folder's or the repository's checkpoint/ when present, otherwise the shipped CPU model; with one line saying
    which and what it is. Raises CheckpointError when the shipped model is damaged."""
    in_repository = ROOT / AUTHORS_CHECKPOINT
    candidates = [AUTHORS_CHECKPOINT] + ([in_repository] if in_repository.resolve() != AUTHORS_CHECKPOINT.resolve()
                                         else [])
    found = next((path for path in candidates if path.is_file()), None)
    if found is not None:
        return found, f"using {found} (the authors' D-DFFNet, as found)"
    relative = SHIPPED_CHECKPOINT.relative_to(ROOT) if SHIPPED_CHECKPOINT.is_relative_to(ROOT) else SHIPPED_CHECKPOINT
    description = describe(SHIPPED_CHECKPOINT)
    card = "" if "MODEL_CARD.md" in description else f"; see {relative.parent}/MODEL_CARD.md"
    where = "" if len(candidates) == 1 else f" here and in {ROOT}"
    return SHIPPED_CHECKPOINT, f"using {relative}: {description} ({AUTHORS_CHECKPOINT} is absent{where}{card})"


def export_release(training_checkpoint: str | os.PathLike, out: str | os.PathLike, description: str,
                   inference_img_size: int | None = None) -> Path:
    """Write the model of a training checkpoint for shipping (utils.checkpoint.shipping_checkpoint) to `out`."""
    return save_checkpoint(shipping_checkpoint(training_checkpoint, description, inference_img_size), out)

