"""The shared command-line helpers: argument types, the early output check, staged output folders."""
import argparse

import pytest

from utils.cli import check_writable_dir, finite_float, positive_int, probability, staged_dir, staged_file
from utils.errors import UserError


@pytest.mark.parametrize("parse, text, message", [
    (positive_int, "0", "must be at least 1"), (positive_int, "x", "not an integer"),
    (finite_float, "nan", "not a finite number"), (finite_float, "inf", "not a finite number"),
    (probability, "1.5", "between 0 and 1")])
def test_argument_types_refuse_bad_values(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


def test_argument_types_accept_good_values():
    assert positive_int("3") == 3 and finite_float("-2.5") == -2.5 and probability("0") == 0.0


def test_unwritable_output_is_found_early(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        check_writable_dir(tmp_path / "file")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_writable_dir(tmp_path / "file" / "sub")
    assert check_writable_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"


def test_staged_dir_replaces_whole_or_not_at_all(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.png").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_dir(final) as tmp:
            (tmp / "new.png").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder left
    assert [p.name for p in final.iterdir()] == ["old.png"]
    with staged_dir(final) as tmp:
        (tmp / "new.png").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in final.iterdir()] == ["new.png"]


def test_staged_file_replaces_whole_or_not_at_all(tmp_path):
    final = tmp_path / "report.md"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with staged_file(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert final.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.md"]
    with staged_file(final) as tmp:
        tmp.write_text("new")
        assert final.read_text() == "old"  # replaced only when the block ends
    assert final.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["report.md"]
