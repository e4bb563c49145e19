#!/usr/bin/env bash
# One-command GPU check (bench/gpu_check.py): CUDA correctness, paper-scale speed, a projected full-run time,
# fp16 + gradient scaler, torchrun / SyncBatchNorm, test.py and demo.sh; at most 26 minutes on a CUDA machine.
#   bash bench/gpu_check.sh                        # everything; writes bench/results/gpu_check.json
#   bash bench/gpu_check.sh --device cpu --quick   # the parts that run without CUDA, tiny sizes
# Flags are passed on to bench/gpu_check.py; PYTHON selects the interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" bench/gpu_check.py "$@"
