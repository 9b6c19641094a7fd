"""Shared test fixtures. `../shared` (or $HW2_SHARED) must exist: tests fail, never skip, without it."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def shared() -> Path:
    path = Path(os.environ.get("HW2_SHARED", ROOT.parent / "shared"))
    assert path.is_dir(), f"shared data folder {path} is missing (set HW2_SHARED or put it beside the project)"
    return path
