"""The digit data reader: the course layout, balanced weights, and a clear error for each bad input."""
import csv
import shutil

import numpy as np
import pytest
import torch
from helpers import copy_digits
from PIL import Image

import p1_ddpm_train
from utils.digits import DigitData, load_split
from utils.errors import UserError


@pytest.fixture
def tiny_root(shared, tmp_path):
    """A course-layout copy of 30 real images per data set (labels as in the real csv)."""
    root = copy_digits(shared, tmp_path / "digits", 30)
    return root


def test_reads_course_layout(tiny_root):
    """Every image and label as the csv lists them: the pixels of the named PNG, the label of its row."""
    for name in ("mnistm", "svhn"):
        with open(tiny_root / name / "train.csv", newline="") as f:  # read here with the csv module alone
            rows = [(row["image_name"], int(row["label"])) for row in csv.DictReader(f)]
        images, labels = load_split(tiny_root, name, progress=False)
        assert images.shape == (30, 3, 28, 28) and images.dtype == torch.uint8
        assert labels.tolist() == [label for _, label in rows] and len(set(labels.tolist())) > 3
        for i in (0, 17, 29):
            png = np.asarray(Image.open(tiny_root / name / "data" / rows[i][0]).convert("RGB"))  # (28, 28, 3)
            assert torch.equal(images[i], torch.from_numpy(png).permute(2, 0, 1))
    data = DigitData(tiny_root)
    x, digit, dset = data[45]  # svhn's 16th
    svhn_images, svhn_labels = load_split(tiny_root, "svhn", progress=False)
    assert dset == 1 and digit == svhn_labels[15]
    assert torch.allclose(x, svhn_images[15].float() / 127.5 - 1)  # in [-1, 1]


def test_balanced_weights_equalise_pairs(tiny_root):
    data = DigitData(tiny_root)
    w = data.balanced_weights()
    pair = data.sets * 10 + data.digits
    totals = {p: w[pair == p].sum().item() for p in pair.unique().tolist()}
    assert all(t == pytest.approx(1.0) for t in totals.values())
    assert len(totals) > 10


def _write_csv(root, text):
    (root / "mnistm" / "train.csv").write_text(text)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: shutil.rmtree(r / "mnistm"), "data-set folder not found"),
    (lambda r: (r / "mnistm" / "train.csv").unlink(), "train.csv: csv file not found"),
    (lambda r: _write_csv(r, "file,digit\n00000.png,1\n"), "expected a header with columns image_name,label"),
    (lambda r: _write_csv(r, "image_name,label\n00000.png,12\n"), "train.csv line 2: label 12 is outside 0-9"),
    (lambda r: _write_csv(r, "image_name,label\n00000.png,seven\n"), "label 'seven' is not an integer"),
    (lambda r: _write_csv(r, "image_name,label\n"), "the split lists no images"),
    (lambda r: _write_csv(r, "image_name,label\nnope.png,3\n"), "nope.png: image listed in the csv does not exist"),
    (lambda r: (r / "mnistm" / "data" / "00000.png").write_bytes(b"not a png"), "00000.png: cannot read image"),
])
def test_bad_input_is_a_clear_error(tiny_root, mutate, message, cli_error):
    mutate(tiny_root)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_split(tiny_root, "mnistm", progress=False)
    # the training script turns it into one line naming the problem, not a traceback
    with cli_error() as exc:
        p1_ddpm_train.main(["--data-root", str(tiny_root), "--out-dir", str(tiny_root / "run"), "--steps", "1"])
    assert "p1_ddpm_train.py: error:" in exc.message and message.split(":")[-1].strip() in exc.message
    assert not (tiny_root / "run" / "last.pt").exists()
