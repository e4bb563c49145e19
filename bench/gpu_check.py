"""One-command GPU check: CUDA correctness, paper-scale training speed and the projected full-run time,
fp16 with the gradient scaler, torchrun with SyncBatchNorm, test.py and demo.sh. This module runs the parts
(bench/gpu_check_parts.py: machine, data, test.py, demo; bench/gpu_check_training.py: fp16, torchrun, step
speeds) and writes the summary (bench/gpu_check_report.py).

    bash bench/gpu_check.sh                           # on a CUDA machine: at most 26 minutes
    python bench/gpu_check.py --device cpu --quick    # every part that runs without CUDA, tiny sizes (CI)
    python bench/gpu_check.py --parts env stage1      # only some parts

No data set or weight file is needed: synthetic data and random weights throughout. The parts, in order:
  env              GPU, driver, torch, CUDA, cuDNN and NCCL versions
  correctness      DFFNet (resnest101e) and MiDaS (ResNeXt-101) forward on the CPU and on CUDA with the same
                   weights and input, fp32 with TF32 off, then on: max|a - b| / max|a| of the logits / depth
                   and of the encoder features                                                   [CUDA]
  fp16             20 stage-1 steps with fp16 autocast and the gradient scaler at the paper's learning rate:
                   every loss finite; the scaler's scale and skipped steps                       [CUDA]
  torchrun-1       `torchrun --nproc_per_node 1`: stage 1 for 3 steps through the training loop (run_stage),
                   the multi-process path forced on: DDP, SyncBatchNorm, NCCL (gloo, BatchNorm on a CPU);
                   with one process PyTorch's SyncBatchNorm falls back to plain batch norm
  torchrun-2       the same with 2 processes, where SyncBatchNorm synchronises                 [2 GPUs]
  torchrun-kd      train_kd.py with 2 processes at one image each, teachers with batch statistics: the
                   teachers' SyncBatchNorm (plain BatchNorm fails on one image)               [2 GPUs]
  data             a synthetic set of CUHK's image size, 640x427 JPEG
  loader           the real training loader over it (augmentation, default workers, pinned memory on CUDA)
  stage1, stage2   train_step at the paper's scale (320x320, batch 6, resnest101e, MiDaS ResNeXt-101) in
                   fp32 and in bf16 + channels_last: s/step, images/s, peak memory, checkpoint write time
  test.py          test.py's images/s at batch 8 on the synthetic set, model and metrics on the device
  deterministic    --deterministic: 3 stage-2 steps run twice from the same seed give identical weights
  stage1-compile,  the same steps in bf16 + channels_last + torch.compile (the scripts' --compile)
  stage2-compile
  demo             demo.sh's run time (what `make demo` runs)                                   [CUDA]
Each part runs in its own forked process (and process group) with its own timeout, inside an overall
budget (--budget, by default the sum of the parts' timeouts, 1,545 s, so that no part is cut short by the
budget even when every part before it uses its whole timeout): a part that fails, crashes or times out is
reported and the rest still run.
From the stage rows and the loader the script projects the wall time of the paper's run (74 epochs x 100
steps per stage on CUHK-TR-1's 604 images, batch 6; loader and per-epoch checkpoint included) and prints
it beside the paper's "both stages under 2 hours on one RTX 3090".

--quick: resnest14d, MiDaS resnet18, 64x64, batch 2, 8 images of 96x64; its numbers only show that the
script works. Under --quick the compile parts run only when named in --parts (an inductor compile of the
training step takes minutes on a CPU). Writes bench/results/gpu_check.json (gpu_check_quick.json with
--quick), one entry per part with its status (ok | failed | skipped), reason, seconds and results, and
each part's log in bench/results/gpu_check[_quick]_logs/.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_check_parts import (SIZES, part_correctness, part_data, part_demo, part_env,  # noqa: E402
                                   part_loader, part_test_py)
from bench.gpu_check_report import print_entry, print_projection, project_full_run  # noqa: E402
from bench.gpu_check_training import (TORCHRUN_WORKER, part_deterministic, part_fp16, part_stage1,  # noqa: E402
                                      part_stage1_compile, part_stage2, part_stage2_compile, part_torchrun_1,
                                      part_torchrun_2, part_torchrun_kd, torchrun_worker)


@dataclass(frozen=True)
class Part:
    """A part of the check: what runs, its timeout in seconds, what it requires ("cuda", "2 gpus") and
    which parts must have succeeded before it."""

    name: str
    run: Callable[[argparse.Namespace, dict[str, dict]], dict[str, Any]]
    timeout: float
    requires: str | None = None
    needs: tuple[str, ...] = ()


PARTS = (
    Part("env", part_env, 60),
    Part("correctness", part_correctness, 90, requires="cuda"),
    Part("fp16", part_fp16, 60, requires="cuda"),
    Part("torchrun-1", part_torchrun_1, 90),
    Part("torchrun-2", part_torchrun_2, 90, requires="2 gpus"),
    Part("torchrun-kd", part_torchrun_kd, 120, requires="2 gpus"),
    Part("data", part_data, 60),
    Part("loader", part_loader, 60, needs=("data",)),
    Part("stage1", part_stage1, 75),
    Part("stage2", part_stage2, 90),
    Part("test.py", part_test_py, 60, needs=("data",)),
    Part("deterministic", part_deterministic, 150),
    Part("stage1-compile", part_stage1_compile, 150),
    Part("stage2-compile", part_stage2_compile, 150),
    Part("demo", part_demo, 240, requires="cuda"),
)


COMPILE_PARTS = ("stage1-compile", "stage2-compile")
DEFAULT_BUDGET = sum(part.timeout for part in PARTS)   # every part fits even when each takes its whole timeout


# ----------------------------------------------------------------------------------------------
# running the parts


def _part_process(part: Part, cfg: argparse.Namespace, done: dict[str, dict], result: Path, log: Path) -> None:
    """Body of a part's forked process: own process group, output into the log, result (or error) as JSON."""
    os.setpgid(0, 0)
    stream = log.open("w", buffering=1)
    os.dup2(stream.fileno(), 1)   # subprocesses and C code
    os.dup2(stream.fileno(), 2)
    sys.stdout = sys.stderr = stream
    try:
        payload = {"results": part.run(cfg, done)}
    except (Exception, SystemExit) as error:
        traceback.print_exc()
        payload = {"error": f"{type(error).__name__}: {error}".splitlines()[0]}
    stream.flush()
    result.write_text(json.dumps(payload, default=str))


def skip_reason(part: Part, cfg: argparse.Namespace, done: dict[str, dict], left: float) -> str | None:
    """Why `part` does not run, or None."""
    if cfg.parts and part.name not in cfg.parts and part.name != "env":
        return "not selected (--parts)"
    if cfg.quick and part.name in COMPILE_PARTS and part.name not in cfg.parts:
        return "--quick: an inductor compile takes minutes on a CPU (name it in --parts to run it)"
    if part.requires and not cfg.device.startswith("cuda"):
        return "no CUDA"
    if part.requires == "2 gpus" and cfg.gpus < 2:
        return f"needs 2 GPUs, found {cfg.gpus}"
    for need in part.needs:
        if done.get(need, {}).get("status") != "ok":
            return f"needs the {need} part, which did not succeed"
    if left < 10:
        return f"the {cfg.budget:.0f} s budget is used up"
    return None


def run_part(part: Part, cfg: argparse.Namespace, done: dict[str, dict], left: float) -> dict[str, Any]:
    """Run one part in a forked process with timeout min(part.timeout, left); returns its JSON entry.
    This process never initialises CUDA (the env part reads the devices), so each forked part can."""
    reason = skip_reason(part, cfg, done, left)
    if reason:
        return {"status": "skipped", "reason": reason}
    timeout = min(part.timeout, left)
    result, log = cfg.work / f"{part.name}.result.json", cfg.logs / f"{part.name}.log"
    cfg.deadline = time.monotonic() + timeout   # read by run_command in the part's process
    sys.stdout.flush()
    sys.stderr.flush()
    process = multiprocessing.get_context("fork").Process(target=_part_process, args=(part, cfg, done, result, log))
    start = time.monotonic()
    process.start()
    with contextlib.suppress(OSError):
        os.setpgid(process.pid, process.pid)
    try:
        process.join(timeout)
    finally:
        timed_out = process.is_alive()
        with contextlib.suppress(ProcessLookupError):
            if timed_out:   # SIGTERM first: torchrun stops its workers on it
                os.killpg(process.pid, signal.SIGTERM)
                process.join(5)
            os.killpg(process.pid, signal.SIGKILL)   # the part, or anything it left behind
        process.join()
    entry: dict[str, Any] = {"seconds": round(time.monotonic() - start, 1), "timeout": round(timeout), "log": str(log)}
    if timed_out:
        cut = f" (the rest of the {cfg.budget:.0f} s budget)" if timeout < part.timeout else ""
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s{cut}", **entry}
    if not result.exists():
        return {"status": "failed", "reason": f"its process died (exit code {process.exitcode})", **entry}
    payload = json.loads(result.read_text())
    if "error" in payload:
        return {"status": "failed", "reason": payload["error"], **entry}
    problems = payload["results"].pop("problems", [])
    return {"status": "failed" if problems else "ok", "reason": "; ".join(problems), **entry,
            "results": payload["results"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags plus the sizes of SIZES[--quick]; main and run_part fill in `work`, `deadline` and the
    device and GPU count found by the env part."""
    summary, details = __doc__.split("\n\n", 1)
    parser = argparse.ArgumentParser(description=summary, epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when present; cpu skips the CUDA-only parts")
    parser.add_argument("--quick", action="store_true", help="tiny networks and images: checks that the script works")
    parser.add_argument("--parts", nargs="+", choices=[p.name for p in PARTS], default=[], metavar="PART",
                        help="run only these parts (default: all; env always runs), from: "
                             + " ".join(p.name for p in PARTS))
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help=f"overall seconds (default {DEFAULT_BUDGET:.0f}, the sum of the parts' timeouts); parts "
                             "beyond it are skipped")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/gpu_check[_quick].json)")
    cfg = parser.parse_args(argv)
    vars(cfg).update(SIZES[cfg.quick])
    cfg.out = Path(cfg.out or ROOT / "bench" / "results" / f"gpu_check{'_quick' if cfg.quick else ''}.json")
    cfg.logs = cfg.out.with_name(f"{cfg.out.stem}_logs")
    cfg.gpus = 0
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Run the parts in order, print their lines and the projection, write the JSON; 1 if a part failed."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [TORCHRUN_WORKER]:
        torchrun_worker(Path(argv[1]), argv[2:])
        return 0
    cfg = parse_args(argv)
    requested = cfg.device
    cfg.logs.mkdir(parents=True, exist_ok=True)
    for old in cfg.logs.glob("*.log"):
        old.unlink()
    cfg.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    print(f"GPU check: device {requested}{', --quick' if cfg.quick else ''}, {cfg.backbone} at {cfg.img_size}x"
          f"{cfg.img_size}, batch {cfg.batch}, budget {cfg.budget:.0f} s; part logs in {cfg.logs}/", flush=True)
    start = time.monotonic()
    parts: dict[str, dict] = {}
    try:
        for part in PARTS:
            print(f"{part.name:15} ", end="", flush=True)   # the line is completed when the part ends
            parts[part.name] = entry = run_part(part, cfg, parts, cfg.budget - (time.monotonic() - start))
            if part.name == "env":
                env = entry.get("results", {})
                cfg.device = env.get("device", "cpu") if requested == "auto" else requested
                cfg.gpus = env.get("cuda_devices", 0)
            print_entry(entry)
    finally:
        shutil.rmtree(cfg.work, ignore_errors=True)
    projection = project_full_run(parts)
    print_projection(projection, cfg.quick)
    failed = [name for name, entry in parts.items() if entry["status"] == "failed"]
    report = {"command": [sys.executable, *sys.argv], "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "device": cfg.device, "quick": cfg.quick, "budget_seconds": cfg.budget,
              "seconds": round(time.monotonic() - start, 1),
              "sizes": {key: getattr(cfg, key) for key in SIZES[cfg.quick]}, "parts": parts, "projection": projection,
              "failed": failed}
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(report, indent=1))
    print(f"{len(failed)} part(s) failed{': ' + ', '.join(failed) if failed else ''}; "
          f"{report['seconds']:.0f} s in all; wrote {cfg.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
