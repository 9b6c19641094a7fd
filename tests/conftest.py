"""Shared test fixtures. `../shared` (or $HW2_SHARED) must exist: tests fail, never skip, without it."""
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared() -> Path:
    path = Path(os.environ.get("HW2_SHARED", ROOT.parent / "shared"))
    assert path.is_dir(), f"shared data folder {path} is missing (set HW2_SHARED or put it beside the project)"
    return path


@pytest.fixture
def cli_error(capsys):
    """`with cli_error("regex") as err:` expects a script's one-line `PROG: error: ...` and exit 2.

    The whole stderr is kept in `err.message` for further checks.
    """
    @contextmanager
    def expect(match: str | None = None):
        result = SimpleNamespace(message="")
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            yield result
        result.message = capsys.readouterr().err
        assert exc.value.code == 2, f"exit code {exc.value.code}, stderr: {result.message}"
        assert ": error: " in result.message, result.message
        if match is not None:
            assert re.search(match, result.message), f"{match!r} not in stderr: {result.message}"
    return expect


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A diffusers folder of a tiny random SD v1 (tests/fixtures/ti_tiny_sd.json; its configs double as the
    config folder for single files), and the pipeline itself."""
    import torch

    from models.sd_loading import random_pipeline
    torch.manual_seed(0)
    pipe = random_pipeline(json.loads((ROOT / "tests" / "fixtures" / "ti_tiny_sd.json").read_text()))
    folder = tmp_path_factory.mktemp("tiny_sd")
    pipe.save_pretrained(folder)
    return folder, pipe
