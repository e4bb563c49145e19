"""The summary of bench/gpu_check.py: the projected wall time of the paper's full run and the printed lines."""
from __future__ import annotations

from typing import Any

from bench.gpu_check_parts import PAPER_EPOCHS, PAPER_HOURS, PRECISIONS, STEPS_PER_EPOCH


def project_full_run(parts: dict[str, dict]) -> dict[str, Any]:
    """Hours of the paper's run per precision: per stage 74 x (first batch + 100 x max(step, loader batch) +
    checkpoint) plus the one-off extra of the first step (cuDNN autotuning, compilation)."""
    loader = parts["loader"].get("results")
    if loader is None:
        return {"reason": "needs the loader part"}
    rows = {(row["stage"], row["precision"]): (row, part["results"]["checkpoint_seconds"])
            for part in parts.values() if "rows" in part.get("results", {}) for row in part["results"]["rows"]}
    hours = {}
    for precision in PRECISIONS:
        if not all((stage, precision) in rows for stage in ("stage 1", "stage 2")):
            continue
        per_stage = {}
        for stage in ("stage 1", "stage 2"):
            row, checkpoint = rows[(stage, precision)]
            step = max(row["seconds_per_step"], loader["seconds_per_batch"])
            epoch = loader["first_batch_seconds"] + STEPS_PER_EPOCH * step + checkpoint
            per_stage[stage] = (PAPER_EPOCHS * epoch + row["first_step_seconds"] - row["seconds_per_step"]) / 3600
        fastest_step = min(rows[(stage, precision)][0]["seconds_per_step"] for stage in per_stage)
        hours[precision] = {**per_stage, "both": sum(per_stage.values()),
                            "loader_bound": fastest_step < loader["seconds_per_batch"]}
    return {"epochs": PAPER_EPOCHS, "steps_per_epoch": STEPS_PER_EPOCH, "hours": hours, "paper_hours": PAPER_HOURS,
            "paper": "both stages under 2 hours on one RTX 3090"}


def print_entry(entry: dict[str, Any]) -> None:
    """The rest of a part's summary line: status, seconds, and its summary or the reason."""
    text = entry["results"]["summary"] if entry["status"] == "ok" else entry["reason"]
    seconds = f"{entry['seconds']:.0f} s" if "seconds" in entry else ""
    print(f"{entry['status']:7} {seconds:>6}  {text}", flush=True)


def print_projection(projection: dict[str, Any], quick: bool) -> None:
    """The projected hours per precision beside the paper's figure."""
    if "hours" not in projection:
        print(f"projected full run: not available ({projection['reason']})")
        return
    print(f"projected full run ({PAPER_EPOCHS} epochs x {STEPS_PER_EPOCH} steps per stage, loader and checkpoints "
          f"included{'; --quick: tiny networks, not comparable' if quick else ''}):")
    for precision, h in projection["hours"].items():
        print(f"  {precision:16} stage 1 {h['stage 1']:.2f} h + stage 2 {h['stage 2']:.2f} h = {h['both']:.2f} h"
              + ("   (loader-bound)" if h["loader_bound"] else ""))
    print(f"  paper: {projection['paper']}")
