"""The shared command-line helpers: argument types, the early output check, staged output folders."""
import argparse

import pytest

from utils.cli import (
    check_apart,
    check_writable_dir,
    finite_float,
    inside,
    positive_int,
    probability,
    safe_name,
    staged_dir,
    staged_file,
)
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


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/abs", "a\\b", 3])
def test_safe_name_refuses_anything_but_a_plain_name(name):
    with pytest.raises(UserError, match=r"^data.csv line 2: image_name .*: not a plain file or folder name"):
        safe_name(name, "data.csv line 2: image_name")


def test_inside_refuses_a_link_out_of_its_folder(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "out").symlink_to(tmp_path)
    assert inside(tmp_path / "folder", "x.png", "name") == tmp_path / "folder" / "x.png"
    with pytest.raises(UserError, match="resolves outside"):
        inside(tmp_path / "folder", "out", "name")


def test_check_apart_refuses_an_output_that_is_holds_or_lies_in_an_input(tmp_path):
    runs = {"run A": tmp_path / "a", "run B": tmp_path / "b", "absent": None}
    check_apart(tmp_path / "merged", "--out-dir", runs)
    check_apart(tmp_path / "ab", "--out-dir", runs)  # a name that starts like an input is apart from it
    for out, relation in ((tmp_path / "a", "is"), (tmp_path / "b" / ".." / "b", "is"), (tmp_path, "contains"),
                          (tmp_path / "b" / "merged", "lies inside")):
        with pytest.raises(UserError, match=f"--out-dir .* {relation} the run [AB] "):
            check_apart(out, "--out-dir", runs)
