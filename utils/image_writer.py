"""Writing images on background threads, stopping at the first failed write (e.g. a full disk)."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np


class ImageWriter:
    """Writes images on two background threads (OpenCV releases the GIL while encoding). After the first
    write that fails (e.g. a full disk) nothing more is written and `error` names the file and the reason;
    `written` lists the files written, in the order asked."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.pending: list[tuple[Path, Future]] = []
        self.error: str | None = None
        self.written: list[Path] = []

    def write(self, path: Path, image: np.ndarray) -> None:
        if self.error is None:
            self.pending.append((path, self.pool.submit(self._write, path, image)))

    def _write(self, path: Path, image: np.ndarray) -> bool:
        if self.error is not None:
            return False
        try:
            write_image(path, image)
        except OSError as exc:
            self.error = self.error or f"{path}: {exc.strerror or exc}"
            return False
        return True

    def close(self) -> None:
        self.written = [path for path, job in self.pending if job.result()]
        self.pool.shutdown()


def write_image(path: Path, image: np.ndarray) -> None:
    """Encode and write one image (RGB or grey, format from the suffix); a file cut short by a failed write is
    removed."""
    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(path.suffix, data)
    if not ok:
        raise OSError(f"cannot encode {path}")
    try:
        path.write_bytes(encoded.tobytes())
    except OSError:
        path.unlink(missing_ok=True)
        raise
