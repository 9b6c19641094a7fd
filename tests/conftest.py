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


@pytest.fixture(scope="session")
def digits(shared) -> Path:
    """The real digit data sets in the course layout: ../shared/hw2_data/digits/{mnistm,svhn}."""
    return shared / "hw2_data" / "digits"


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


@pytest.hookimpl(trylast=True)  # after -k / -m have deselected
def pytest_collection_modifyitems(config, items):
    """Under run_tests.sh's pytest-xdist (`--dist worksteal`), start the tests marked `heavy` first.

    worksteal hands worker k the k-th contiguous share of the collection and lets an idle worker take
    the end of a busy one's queue, so a long test at the end of the collection runs last and alone.
    The heavy ones (30-50 s each, 40% of the suite's time on 2 cores) used to sit there and leave one
    of the two workers idle for the last 30 s. Here each share starts with heavy tests, dealt out in
    turn, and light ones fill and end it, where stealing evens the workers out.
    """
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    heavy = [item for item in items if item.get_closest_marker("heavy")]
    if workers < 2 or not heavy:
        return
    light = [item for item in items if not item.get_closest_marker("heavy")]
    order, left = [], len(items)
    for k in range(workers):
        size = left // (workers - k)  # what worksteal sends worker k: an equal split of what is left
        share = heavy[k::workers]
        take = max(size - len(share), 0)
        order += share + light[:take]
        light, left = light[take:], left - size
    items[:] = order + light
