"""One run per output file: an exclusive lock on `<save>.lock`, held while a training run lasts, so that a
second run started with the same --save stops at once instead of overwriting the first one's checkpoint."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

_HELD: dict[Path, int] = {}


class RunLockError(RuntimeError):
    """Another process holds the lock of this --save."""


def lock_path(save: str | os.PathLike) -> Path:
    """The lock file of a --save path: `<save>.lock` beside it."""
    save = Path(save).absolute()
    return save.with_name(f"{save.name}.lock")


def acquire(save: str | os.PathLike) -> Path:
    """Take the lock of `save` for this process (a second call in the same process is a no-op); raise
    RunLockError naming the process that holds it. The lock file holds the pid of its owner."""
    path = lock_path(save)
    if path in _HELD:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockError(f"--save {save}: another run (pid {owner}) is writing it; wait for that run to end "
                               "or choose another --save") from None
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)  # the owner removed the file between our open and our lock: take the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[path] = fd
    return path


def release(save: str | os.PathLike) -> None:
    """Remove and unlock the lock of `save` if this process holds it."""
    path = lock_path(save)
    fd = _HELD.pop(path, None)
    if fd is not None:
        path.unlink(missing_ok=True)
        os.close(fd)
