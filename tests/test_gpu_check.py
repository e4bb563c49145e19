"""bench/gpu_check.py: the CPU-quick mode end to end (so that the GPU check cannot rot before a GPU
appears), and how the runner reports a part that fails, hangs or does not fit in the budget."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import gpu_check, gpu_check_parts

ROOT = Path(__file__).resolve().parents[1]


def test_quick_mode_on_cpu_runs_every_part_without_cuda(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick",
                          "--out", str(out)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    parts = report["parts"]
    assert list(parts) == [part.name for part in gpu_check.PARTS]
    assert {entry["status"] for entry in parts.values()} <= {"ok", "failed", "skipped"}
    cuda_only = {part.name for part in gpu_check.PARTS if part.requires}
    assert cuda_only == {"correctness", "fp16", "torchrun-2", "torchrun-kd", "demo"}
    for name in cuda_only:
        assert parts[name] == {"status": "skipped", "reason": "no CUDA"}
    for name in gpu_check.COMPILE_PARTS:
        assert parts[name]["status"] == "skipped" and parts[name]["reason"].startswith("--quick")
    for name in set(parts) - cuda_only - set(gpu_check.COMPILE_PARTS):
        assert parts[name]["status"] == "ok", (name, parts[name])
        assert parts[name]["results"]["summary"] and Path(parts[name]["log"]).is_file()
        assert f"\n{name} " in "\n" + run.stdout   # one summary line per part

    results = {name: entry.get("results", {}) for name, entry in parts.items()}
    assert results["env"]["device"] == "cpu"
    torchrun = results["torchrun-1"]
    assert (torchrun["backend"], torchrun["world_size"], torchrun["ddp"]) == ("gloo", 1, True)
    assert len(torchrun["losses"]) == report["sizes"]["torchrun_steps"]
    assert (results["data"]["width"], results["data"]["height"]) == (96, 64)
    assert results["loader"]["batches"] * report["sizes"]["batch"] >= gpu_check_parts.CUHK_TR_IMAGES
    for stage in ("stage1", "stage2"):
        rows = results[stage]["rows"]
        assert [row["precision"] for row in rows] == ["fp32", "bf16+cl"]
        assert all(row["seconds_per_step"] > 0 and row["peak_memory_gb"] > 0 for row in rows)
    assert results["test.py"]["images_per_second"] > 0
    hours = report["projection"]["hours"]
    assert set(hours) == {"fp32", "bf16+cl"}
    assert all(abs(h["both"] - h["stage 1"] - h["stage 2"]) < 1e-9 for h in hours.values())
    assert report["failed"] == [] and "projected full run" in run.stdout


def _fail(cfg, done):
    raise ValueError("broken on purpose")


def _hang(cfg, done):
    child = subprocess.Popen(["sleep", "60"])
    (cfg.work / "child.pid").write_text(str(child.pid))
    time.sleep(60)


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_failing_hanging_and_late_parts_are_reported(tmp_path):
    cfg = gpu_check.parse_args(["--device", "cpu", "--quick", "--out", str(tmp_path / "check.json")])
    cfg.work = tmp_path
    cfg.logs.mkdir()

    failed = gpu_check.run_part(gpu_check.Part("fail", _fail, 30), cfg, {}, left=60)
    assert (failed["status"], failed["reason"]) == ("failed", "ValueError: broken on purpose")
    assert "Traceback" in Path(failed["log"]).read_text()

    hung = gpu_check.run_part(gpu_check.Part("hang", _hang, 2), cfg, {}, left=60)
    assert hung["status"] == "failed" and hung["reason"] == "timed out after 2 s"
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:   # the part's process group is killed with it
        time.sleep(0.1)
    assert not _alive(child)

    late = gpu_check.run_part(gpu_check.Part("late", _fail, 30), cfg, {}, left=5)
    assert late["status"] == "skipped" and "budget" in late["reason"]
    needy = gpu_check.run_part(gpu_check.Part("needy", _fail, 30, needs=("fail",)), cfg, {"fail": failed}, left=60)
    assert needy["status"] == "skipped" and "fail" in needy["reason"]


def test_the_default_budget_holds_every_part_at_its_timeout_and_modules_stay_small():
    """Each part that runs by default fits in the default budget even when every part before it takes its
    whole timeout; the check is split into modules of one concern each."""
    assert gpu_check.parse_args([]).budget == sum(part.timeout for part in gpu_check.PARTS)
    for module in ("gpu_check", "gpu_check_parts", "gpu_check_training", "gpu_check_report"):
        assert len((ROOT / "bench" / f"{module}.py").read_text().splitlines()) <= 400, module
