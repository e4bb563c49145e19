"""Training logs: readable console lines, CSV files of every logged value, TensorBoard when installed."""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


def _open_tensorboard(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir / "tensorboard"))


class CsvLog:
    """A CSV file whose columns are fixed by the first row; rows are flushed as they are written."""

    def __init__(self, path: Path, keep_until_epoch: int | None = None) -> None:
        """Start a new file, or (when resuming) keep the existing rows with epoch <= keep_until_epoch."""
        self.path = path
        self.columns: list[str] | None = None
        kept: list[dict[str, str]] = []
        if keep_until_epoch is not None and path.exists():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or []) or None
                kept = [row for row in reader if int(row["epoch"]) <= keep_until_epoch]
        self.file = path.open("w", newline="")
        self.writer: csv.DictWriter | None = None
        if self.columns:
            self._start(self.columns)
            self.writer.writerows(kept)
            self.file.flush()

    def _start(self, columns: list[str]) -> None:
        self.columns = columns
        self.writer = csv.DictWriter(self.file, fieldnames=columns, extrasaction="raise")
        self.writer.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            self._start(list(row))
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class TrainingLogger:
    """`steps.csv` (one row per optimiser step) and `epochs.csv` (epoch means, validation) in log_dir.

    Only the main process writes; on the others every method does nothing.
    """

    def __init__(self, log_dir: str | Path, enabled: bool = True, resume_epoch: int | None = None) -> None:
        self.enabled = enabled
        self.start = time.time()
        if not enabled:
            return
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.steps = CsvLog(self.log_dir / "steps.csv", resume_epoch)
        self.epochs = CsvLog(self.log_dir / "epochs.csv", resume_epoch)
        self.tensorboard = _open_tensorboard(self.log_dir)

    def info(self, message: str) -> None:
        """A console line with the elapsed time, printed above any progress bar."""
        if self.enabled:
            elapsed = time.time() - self.start
            tqdm.write(f"[{int(elapsed // 3600):02d}:{int(elapsed % 3600 // 60):02d}:{int(elapsed % 60):02d}] {message}")

    def step(self, row: dict[str, Any]) -> None:
        """Log one optimiser step: a dict with 'epoch', 'step', 'global_step' and scalar values."""
        if not self.enabled:
            return
        self.steps.write(row)
        self._to_tensorboard("step", row, ("epoch", "step", "global_step"))

    def epoch(self, row: dict[str, Any]) -> None:
        """Log one epoch summary (a dict with 'epoch') to epochs.csv, TensorBoard and the console."""
        if not self.enabled:
            return
        self.epochs.write(row)
        self._to_tensorboard("epoch", row, ("epoch",))
        self.info("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))

    def _to_tensorboard(self, group: str, row: dict[str, Any], index: tuple[str, ...]) -> None:
        """Each numeric value of `row` outside its `index` columns as scalar 'group/key', at x = row[index[-1]]."""
        if self.tensorboard is None:
            return
        for key, value in row.items():
            if key not in index and isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"{group}/{key}", value, row[index[-1]])

    def close(self) -> None:
        if self.enabled:
            self.steps.close()
            self.epochs.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
