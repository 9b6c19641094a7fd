"""Command-line helpers shared by the scripts: argument types that refuse bad values up front,
an early check that an output folder can be written, names read from data files kept inside their
folder, outputs kept apart from inputs, and output folders that are replaced whole.

The argument types raise `argparse.ArgumentTypeError`, so argparse prints
`PROG: error: argument --steps: ...` and exits 2, before any work starts.
"""
import argparse
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

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


def safe_name(name, what: str) -> str:
    """`name`, read from a data file (a csv row, a json key), as one plain file or folder name: a
    UserError naming `what` if it is empty, '.', '..', absolute or holds a path separator, so that
    `folder / name` stays in `folder`. A string check only: cheap enough for every row of a csv."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name
            or os.path.isabs(name)):
        raise UserError(f"{what} {name!r}: not a plain file or folder name (no '/', '\\', '.' or '..')")
    return name


def inside(folder: Path, name, what: str) -> Path:
    """`folder / name` for a plain `name` (`safe_name`) that also resolves inside `folder` (no symbolic link
    at `name` leading out of it)."""
    path = Path(folder) / safe_name(name, what)
    if not path.resolve().is_relative_to(Path(folder).resolve()):
        raise UserError(f"{what} {name!r}: {path} resolves outside {folder}")
    return path


def check_apart(out: Path, flag: str, inputs: dict[str, Path | None]) -> None:
    """Refuse an output `out` that is, contains or lies inside one of the `inputs` ({what: path}, None
    entries skipped): replacing `out` whole would delete that input, or write into it."""
    mine = Path(out).resolve()
    for what, path in inputs.items():
        if path is None:
            continue
        theirs = Path(path).resolve()
        relation = ("is" if mine == theirs else "contains" if theirs.is_relative_to(mine)
                    else "lies inside" if mine.is_relative_to(theirs) else None)
        if relation:
            raise UserError(f"{flag} {out} {relation} the {what} {path}: it would be overwritten; "
                            f"choose another {flag}")


def check_replaceable(folder: Path, flag: str, ours: Callable[[PurePosixPath], bool]) -> None:
    """Refuse to replace `folder` whole (`staged_dir`) while it holds a file that `ours` (given the path
    relative to `folder`) does not take for this program's output: a folder named by mistake (the project,
    a data folder) would be lost with it."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.rglob("*"):
        relative = PurePosixPath(path.relative_to(folder).as_posix())
        if not path.is_dir() and not ours(relative):
            raise UserError(f"{flag} {folder}: holds {relative}, which this program does not write; {flag} is "
                            "replaced whole, so choose a new or empty folder")


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


def write_json(path: Path, obj) -> None:
    """The one JSON format the programs write, `indent=2` and a final newline, written atomically."""
    with staged_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


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
