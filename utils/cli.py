"""Command-line helpers shared by the scripts: argument types that refuse bad values up front,
an early check that an output folder can be written, and output folders that are replaced whole.

The argument types raise `argparse.ArgumentTypeError`, so argparse prints
`PROG: error: argument --steps: ...` and exits 2, before any work starts.
"""
import argparse
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from utils.errors import UserError


def _number(kind, low=None, high=None, what=""):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {what}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


positive_int = _number(int, 1, what="at least 1")
nonnegative_int = _number(int, 0, what="at least 0")
finite_float = _number(float)
nonnegative_float = _number(float, 0.0, what="at least 0")
positive_float = _number(float, 1e-300, what="greater than 0")
probability = _number(float, 0.0, 1.0, what="between 0 and 1")


def check_writable_dir(path: Path, flag: str = "OUT_DIR") -> Path:
    """Fail now, not after minutes of work, if `path` cannot become a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: exists and is not a folder")
    parent = path
    while not parent.exists():  # the nearest existing ancestor must be a writable folder
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {parent} is not writable")
    return path


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; when the block succeeds it replaces `final`
    whole (an earlier `final` is removed only then), when it fails it is deleted and `final` is
    left as it was. So a folder is never a mix of two runs, nor half written."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_file(final: Path) -> Iterator[Path]:
    """Yield a temporary file path beside `final`; when the block succeeds the file replaces `final`
    (one rename), when it fails it is deleted and `final` is left as it was: never half written."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")  # not mkstemp: that would make it 0600
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def missing_paths(inputs: dict[str, Path | None]) -> list[str]:
    """'what: path' for every given input path that does not exist (None entries are not asked for)."""
    return [f"{what}: {path}" for what, path in inputs.items() if path is not None and not Path(path).exists()]


def skip_missing(prog: str, missing: list[str], skip: bool, hint: str = "") -> bool:
    """The one `--skip-missing` rule: nothing missing -> False (go on); missing and `skip` -> say what
    is missing and return True (the caller returns without writing); missing otherwise -> UserError."""
    if not missing:
        return False
    listing = "missing " + "; ".join(missing)
    if skip:
        print(f"{prog}: skipped, {listing}")
        return True
    raise UserError(listing + (f" ({hint})" if hint else ""))
