"""Shared test fixtures: paths to the read-only reference material beside the repository."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DDFFNET_SHARED", ROOT.parent / "shared"))
SPEC = SHARED / "spec"
DATA = SHARED / "data"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))  # OMP_NUM_THREADS=1 when sharing


@pytest.fixture(scope="session")
def spec_dir() -> Path:
    if not SPEC.is_dir():
        pytest.skip(f"reference spec folder {SPEC} is absent (set DDFFNET_SHARED to its parent)")
    return SPEC


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"reference data folder {DATA} is absent (set DDFFNET_SHARED to its parent)")
    return DATA
