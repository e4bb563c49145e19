"""One run per output: an exclusive lock held while a run lasts, so that a second run started on the same output
(a training --save or --log-dir, a test.py --out) stops at once instead of overwriting the first one's results.

A file's lock is `<file>.lock` beside it, holding the pid of its owner; a folder is locked itself (no file is
added to it). Both are flocks, which the system drops when their process ends however it ends: a lock file left
behind by a killed run is stale, and the next run takes it over.
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
from pathlib import Path

from utils.errors import RunError

_HELD: dict[Path, tuple[int, bool]] = {}  # locked path -> (its fd, whether it is a lock file to remove)


class RunLockError(RunError):
    """Another process holds the lock of this output."""


def lock_path(target: str | os.PathLike, folder: bool = False) -> Path:
    """What is locked for an output: `<target>.lock` beside a file, the folder itself."""
    target = Path(os.path.abspath(target))
    return target if folder else target.with_name(f"{target.name}.lock")


def _flock_owner(fd: int) -> str:
    """The pid holding an flock on the file of `fd`, from /proc/locks (Linux), else 'unknown'."""
    info = os.fstat(fd)
    inode = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "FLOCK" in fields and inode in fields:
                return fields[fields.index(inode) - 1]
    return "unknown"


def _lock_folder(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    return fd


def _lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)  # the owner removed the file between our open and our lock: take the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def acquire(target: str | os.PathLike, flag: str = "--save", folder: bool = False) -> Path:
    """Take the lock of `target` (a file path, or with folder=True a folder, made if missing) for this process; a
    second call in the same process is a no-op. Raise RunLockError naming `flag` and the process that holds it.
    Every lock still held when the interpreter exits is released then."""
    path = lock_path(target, folder)
    if path in _HELD:
        return path
    try:
        fd = _lock_folder(path) if folder else _lock_file(path)
    except BlockingIOError:
        owner = _owner(path, folder)
        raise RunLockError(f"{flag} {target}: another run (pid {owner}) is writing it; wait for that run to end "
                           f"or choose another {flag}") from None
    _HELD[path] = (fd, not folder)
    return path


def _owner(path: Path, folder: bool) -> str:
    """The pid of the process holding the lock of `path`: written in a lock file, looked up for a folder."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return "unknown"
    try:
        return _flock_owner(fd) if folder else os.read(fd, 32).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)


def release(target: str | os.PathLike, folder: bool = False) -> None:
    """Unlock `target` (removing its lock file) if this process holds its lock."""
    _release(lock_path(target, folder))


def _release(path: Path) -> None:
    fd, is_lock_file = _HELD.pop(path, (None, False))
    if fd is None:
        return
    if is_lock_file:
        path.unlink(missing_ok=True)
    os.close(fd)


@atexit.register
def _release_all() -> None:
    """Release what this process still holds when it exits (a run stopped by an error before its own release)."""
    for path in list(_HELD):
        _release(path)
