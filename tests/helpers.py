"""Helpers shared by several test files (fixtures live in conftest.py)."""
import shutil
from pathlib import Path

from utils.digits import read_split_csv


def copy_digits(shared: Path, root: Path, n: int) -> Path:
    """A course-layout copy of the first `n` real training images of each digit data set under `root`."""
    for name in ("mnistm", "svhn"):
        src = shared / "hw2_data" / "digits" / name
        (root / name / "data").mkdir(parents=True)
        rows = read_split_csv(src / "train.csv")[:n]
        for image, _ in rows:
            shutil.copy(src / "data" / image, root / name / "data" / image)
        (root / name / "train.csv").write_text("image_name,label\n" + "".join(f"{i},{lab}\n" for i, lab in rows))
    return root
