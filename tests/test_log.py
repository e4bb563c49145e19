"""Console output: wall-clock stamps, tqdm bars on a terminal, a line every 30 s in a piped log."""
from __future__ import annotations

import io
import re
import sys
import time
from pathlib import Path

from PIL import Image
from tqdm import tqdm

import utils.log
from utils.log import TrainingLogger, progress

ROOT = Path(__file__).resolve().parents[1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    """time.monotonic that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_piped_log_gets_one_progress_line_every_30_seconds(monkeypatch) -> None:
    """1,000 steps of one second each: lines at 30, 60, ..., 990 s, i.e. 33 lines, no carriage return."""
    piped, clock = io.StringIO(), FakeClock()
    monkeypatch.setattr(sys, "stderr", piped)
    monkeypatch.setattr(utils.log.time, "monotonic", clock)
    bar = progress(range(1000), desc="epoch 1/8")
    for _ in bar:
        clock.now += 1.0
        bar.set_postfix(loss="0.5000")
    bar.close()
    monkeypatch.undo()
    lines = piped.getvalue().splitlines()
    assert len(lines) == 33 and "\r" not in piped.getvalue()
    assert all(re.fullmatch(r"\[\d\d:\d\d:\d\d\] epoch 1/8: \d+/1000 it \(\d+%\), 1 it/s, loss=0.5000", line)
               for line in lines), lines[:2]
    assert lines[0].endswith("] epoch 1/8: 30/1000 it (3%), 1 it/s, loss=0.5000")
    assert lines[-1].endswith("] epoch 1/8: 990/1000 it (99%), 1 it/s, loss=0.5000")


def test_a_short_piped_loop_writes_nothing_and_update_counts(monkeypatch) -> None:
    piped, clock = io.StringIO(), FakeClock()
    monkeypatch.setattr(sys, "stderr", piped)
    monkeypatch.setattr(utils.log.time, "monotonic", clock)
    with progress(total=40, desc="model on set", unit="img") as bar:
        for _ in range(5):
            clock.now += 5.0
            bar.update(8)
    monkeypatch.undo()
    assert piped.getvalue() == "" and bar.n == 40


def test_a_terminal_gets_a_tqdm_bar_that_is_cleared_when_done(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress(range(3), desc="epoch 1/1")
    assert isinstance(bar, tqdm) and not bar.leave
    assert list(bar) == [0, 1, 2]


def test_log_lines_are_stamped_with_the_wall_clock(tmp_path: Path, capsys) -> None:
    before = time.strftime("[%H:%M:%S]")
    logger = TrainingLogger(tmp_path)
    logger.info("stage 1: started")
    logger.close()
    after = time.strftime("[%H:%M:%S]")
    line = capsys.readouterr().out
    assert line in (f"{before} stage 1: started\n", f"{after} stage 1: started\n")


def test_progress_bars_are_made_in_utils_log_only() -> None:
    """Every loop goes through utils.log.progress, so a piped log never gets tqdm's redraws."""
    imports = re.compile(r"^\s*(import tqdm|from tqdm)", re.MULTILINE)  # hubconf.py only names it as a dependency
    users = sorted(str(path.relative_to(ROOT)) for path in ROOT.rglob("*.py")
                   if path.relative_to(ROOT).parts[0] not in ("tests", ".venv") and imports.search(path.read_text()))
    assert users == ["utils/log.py"]


def test_remaining_time_is_announced_once_from_the_measured_pace(monkeypatch):
    clock = iter([100.0, 105.0])  # created at t=100; 10 steps done at t=105: 0.5 s/step
    monkeypatch.setattr(utils.log.time, "time", lambda: next(clock))
    pace = utils.log.RemainingTime(total_steps=250, after=10)
    lines = [pace.step() for _ in range(12)]
    assert lines[:9] == [None] * 9 and lines[10:] == [None, None]
    assert lines[9] == ("0.50 s/step over the first 10 steps: about 2.0 min for the 240 steps left "
                        "(validation and saving not included)")


def test_each_epoch_redraws_the_curves_with_a_panel_per_validation_score_that_has_a_value(tmp_path: Path, capsys) -> None:
    logger = TrainingLogger(tmp_path / "plain")
    for epoch in (1, 2):
        for step in (1, 2):
            logger.step({"epoch": epoch, "step": step, "global_step": 2 * (epoch - 1) + step, "loss": 1.0 / step})
        logger.epoch({"epoch": epoch, "loss": 0.75})
    with Image.open(tmp_path / "plain" / "curves.png") as one_panel:
        assert one_panel.format == "PNG"
    validated = TrainingLogger(tmp_path / "validated", scores=("val_mae", "val_fbeta"))
    for epoch in (1, 2):
        validated.step({"epoch": epoch, "step": 1, "global_step": epoch, "loss": 1.0})
        validated.epoch({"epoch": epoch, "loss": 1.0, "val_mae": "" if epoch == 1 else 0.2, "val_fbeta": ""})
    with Image.open(tmp_path / "validated" / "curves.png") as two_panels:
        assert two_panels.width > 1.8 * one_panel.width and two_panels.height == one_panel.height
    assert not list(tmp_path.rglob("*.partial"))


def test_a_curves_figure_that_cannot_be_written_is_reported_and_training_goes_on(tmp_path: Path, capsys) -> None:
    logger = TrainingLogger(tmp_path)
    (tmp_path / "curves.png").mkdir()  # a folder where the figure goes
    logger.step({"epoch": 1, "step": 1, "global_step": 1, "loss": 1.0})
    logger.epoch({"epoch": 1, "loss": 1.0})
    assert f"warning: cannot write {tmp_path / 'curves.png'}" in capsys.readouterr().out
    assert (tmp_path / "epochs.csv").read_text().splitlines()[1] == "1,1"
