"""Packing the digit data for another machine: lossless round trip, parts, and clear errors."""
import json

import pytest
import torch
from helpers import copy_digits

from utils.digits import load_split, read_split_csv
from utils.digits_pack import main, pack, unpack
from utils.errors import UserError


@pytest.fixture
def tiny_root(shared, tmp_path):
    return copy_digits(shared, tmp_path / "digits", 30)


def test_round_trip_is_lossless_across_parts(tiny_root, tmp_path):
    # 4 x 4 tiles: two mosaics per data set, the second padded; parts of ~20 KiB force several folders
    files = pack(tiny_root, tmp_path / "pack", tiles=4, part_mib=0.02)
    assert len({f.parent.name for f in files}) > 1
    assert sorted(f.name for f in files if f.suffix == ".webp") == [
        "mnistm_train_000.webp", "mnistm_train_001.webp", "svhn_train_000.webp", "svhn_train_001.webp"]
    assert unpack(tmp_path / "pack", tmp_path / "back") == {"mnistm/train": 30, "svhn/train": 30}
    for name in ("mnistm", "svhn"):
        images, labels = load_split(tiny_root, name, progress=False)
        images2, labels2 = load_split(tmp_path / "back", name, progress=False)
        assert torch.equal(images, images2) and torch.equal(labels, labels2)
        assert read_split_csv(tmp_path / "back" / name / "train.csv") == read_split_csv(tiny_root / name / "train.csv")


def test_incomplete_pack_writes_nothing(tiny_root, tmp_path):
    files = pack(tiny_root, tmp_path / "pack", tiles=4, part_mib=0.02)
    next(f for f in files if f.name == "svhn_train_001.webp").unlink()
    with pytest.raises(UserError, match="incomplete, 1 files missing .first: svhn_train_001.webp"):
        unpack(tmp_path / "pack", tmp_path / "back")
    assert not (tmp_path / "back").exists()


def test_unpack_keeps_existing_data(tiny_root, tmp_path):
    pack(tiny_root, tmp_path / "pack", datasets=["svhn"], tiles=8)
    with pytest.raises(UserError, match="svhn/train.csv already exists"):
        unpack(tmp_path / "pack", tiny_root)


def test_cli_errors_name_the_problem(tiny_root, tmp_path, cli_error):
    with cli_error() as exc:
        main(["pack", str(tiny_root), str(tiny_root)])  # not empty
    assert "digits_pack: error:" in exc.message and "output folder is not empty" in exc.message
    (tmp_path / "empty").mkdir()
    with cli_error() as exc:
        main(["unpack", str(tmp_path / "empty"), str(tmp_path / "back")])
    assert "no pack.json" in exc.message
    (tmp_path / "empty" / "pack.json").write_text('{"tiles": 4, "image_size": 28, "splits": {"svhn": 30}}')
    with cli_error() as exc:
        main(["unpack", str(tmp_path / "empty"), str(tmp_path / "back")])
    assert "pack.json: malformed manifest" in exc.message and not (tmp_path / "back").exists()
    (tiny_root / "svhn" / "data" / "00003.png").write_bytes(b"broken")
    with cli_error() as exc:
        main(["pack", str(tiny_root), str(tmp_path / "pack")])
    assert "00003.png: cannot read image" in exc.message and not any((tmp_path / "pack").iterdir())


@pytest.mark.parametrize("bad", ["../../escaped.png", "{tmp}/escaped.png", "sub/x.png", "..", "a\\b.png"])
def test_unpack_refuses_image_names_out_of_data(tiny_root, tmp_path, bad, cli_error):
    """An image name of a pack's csv is a file of ROOT/{data set}/data/, never a path: nothing is written."""
    bad = bad.format(tmp=tmp_path)
    pack(tiny_root, tmp_path / "pack", datasets=["svhn"], tiles=8)
    csv = tmp_path / "pack" / "svhn_train.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0], f"{bad},{lines[1].split(',')[1]}", *lines[2:]]) + "\n")
    root = tmp_path / "deep" / "er" / "back"
    with cli_error(r"svhn_train.csv line 2: image_name .*: not a plain file or folder name [^\n]*\n$"):
        main(["unpack", str(tmp_path / "pack"), str(root)])
    assert not (tmp_path / "deep").exists() and not (tmp_path / "escaped.png").exists()


@pytest.mark.parametrize("key", ["../train", "svhn/..", "/train", "./train"])
def test_unpack_refuses_manifest_splits_out_of_root(tiny_root, tmp_path, key, cli_error):
    pack(tiny_root, tmp_path / "pack", datasets=["svhn"], tiles=8)
    manifest = json.loads((tmp_path / "pack" / "pack.json").read_text())
    manifest["splits"] = {key: manifest["splits"]["svhn/train"]}
    (tmp_path / "pack" / "pack.json").write_text(json.dumps(manifest))
    with cli_error(r"pack.json: (data set|split) '[./]*\w*': not a plain file or folder name"):
        main(["unpack", str(tmp_path / "pack"), str(tmp_path / "back")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "pack"]
