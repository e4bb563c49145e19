"""Logs: console lines stamped with the wall-clock time, progress that suits a terminal or a log file,
CSV files of every logged training value with their curves drawn each epoch, TensorBoard when installed."""
from __future__ import annotations

import csv
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from utils.plots import plot_training_curves

PIPED_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal


def printable(text: str) -> str:
    """`text` as it can be printed and written to a UTF-8 file: the bytes of a file name that are not UTF-8 (held
    by Python as surrogate escapes) shown as \\xNN."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no byte stands for
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def stamp() -> str:
    """'[HH:MM:SS]': the wall-clock time that starts every stamped log line (demo.sh stamps its steps alike)."""
    return time.strftime("[%H:%M:%S]")


def console(message: str) -> None:
    """Print `message` on stdout after a time stamp, above any progress bar; flushed at once, so that in a
    piped log it stays in order with the progress lines on stderr."""
    tqdm.write(f"{stamp()} {message}")
    sys.stdout.flush()


class LineProgress:
    """Progress for a log file: a stamped line on stderr when `every` seconds have passed since the last
    one (none for a shorter loop), with the calls of the tqdm bars it stands in for (iterate, update,
    set_postfix, close, with)."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, disable: bool = False, every: float = PIPED_EVERY) -> None:
        self.iterable = iterable
        self.total = len(iterable) if total is None and hasattr(iterable, "__len__") else total
        self.desc, self.unit, self.disable, self.every = desc, unit, disable, every
        self.n = self.initial = initial
        self.postfix = ""
        self.start = self.last = time.monotonic()

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()

    def update(self, n: int = 1) -> None:
        """Count `n` more done; write a line when `every` seconds have passed since the last."""
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self.last >= self.every:
            self.last = now
            done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
            share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
            rate = (self.n - self.initial) / max(now - self.start, 1e-9)
            print(f"{stamp()} {self.desc}: {done} {self.unit}{share}, {rate:.3g} {self.unit}/s{self.postfix}",
                  file=sys.stderr, flush=True)

    def set_postfix(self, **values: Any) -> None:
        """Values shown at the end of the next lines, e.g. loss=0.1234."""
        self.postfix = "".join(f", {key}={value}" for key, value in values.items())

    def close(self) -> None:
        """Nothing to clear: the lines written stay in the log."""

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False) -> tqdm | LineProgress:
    """The progress display of every loop: a tqdm bar on a terminal (cleared when done); when stderr is a
    pipe or a file, a LineProgress (one line every PIPED_EVERY seconds instead of a redraw per step)."""
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=False,
                    dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable)


class RemainingTime:
    """Once, after the first `after` steps of a run: the measured seconds per step and the time the remaining
    steps will take at that pace (validation and saving not included)."""

    def __init__(self, total_steps: int, after: int = 10) -> None:
        self.total_steps, self.after = total_steps, min(after, total_steps)
        self.start, self.done = time.time(), 0

    def step(self) -> str | None:
        """Count one step; the estimate line at the `after`-th step, else None."""
        self.done += 1
        if self.done != self.after:
            return None
        per_step = (time.time() - self.start) / self.done
        left = self.total_steps - self.done
        return (f"{per_step:.2f} s/step over the first {self.done} steps: about {per_step * left / 60:.1f} min "
                f"for the {left} steps left (validation and saving not included)")


def _open_tensorboard(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir / "tensorboard"))


class CsvLog:
    """A CSV file whose columns are fixed by the first row; rows are flushed as they are written and kept in
    `rows` as written (for the curves)."""

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
        self.rows: list[dict[str, Any]] = kept
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
        written = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        self.writer.writerow(written)
        self.file.flush()
        self.rows.append(written)

    def close(self) -> None:
        self.file.close()


class TrainingLogger:
    """`steps.csv` (one row per optimiser step), `epochs.csv` (epoch means, validation) and `curves.png` in log_dir.

    Only the main process writes; on the others every method does nothing.
    """

    def __init__(self, log_dir: str | Path, enabled: bool = True, resume_epoch: int | None = None,
                 scores: tuple[str, ...] = ()) -> None:
        """`scores`: the epoch columns drawn as validation curves."""
        self.enabled = enabled
        self.scores = scores
        if not enabled:
            return
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.steps = CsvLog(self.log_dir / "steps.csv", resume_epoch)
        self.epochs = CsvLog(self.log_dir / "epochs.csv", resume_epoch)
        self.tensorboard = _open_tensorboard(self.log_dir)

    def info(self, message: str) -> None:
        """A stamped console line (`console`)."""
        if self.enabled:
            console(message)

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
        self.draw_curves()

    def draw_curves(self) -> None:
        """Redraw log_dir/curves.png (loss and validation against the epoch) from the rows of the two CSV files. A
        figure that cannot be written is reported, and training goes on."""
        path = self.log_dir / "curves.png"
        try:
            plot_training_curves(self.steps.rows, self.epochs.rows, path, self.scores)
        except OSError as e:
            self.info(f"warning: cannot write {path} ({e.strerror or e}); training goes on")

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
