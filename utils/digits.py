"""The course's digit data sets: `ROOT/{mnistm,svhn}/data/*.png` listed by `train.csv` / `val.csv`.

Every problem with the input is a `UserError` that names the file and what is wrong with it.
"""
import csv
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from utils.cli import safe_name
from utils.errors import UserError
from utils.images import load_rgb

DATASETS = ("mnistm", "svhn")  # data-set label 0 and 1
IMAGE_SIZE = 28



def read_split_csv(csv_path: Path) -> list[tuple[str, int]]:
    """Rows `(image_name, label)` of a course csv (header `image_name,label`), validated: every image_name
    a plain file name (of the data/ folder beside the csv)."""
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: csv file not found")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"image_name", "label"} <= set(reader.fieldnames):
            raise UserError(f"{csv_path}: expected a header with columns image_name,label, "
                            f"found {reader.fieldnames}")
        rows = []
        for line, row in enumerate(reader, start=2):
            name, label = (row["image_name"] or "").strip(), (row["label"] or "").strip()
            safe_name(name, f"{csv_path} line {line}: image_name")  # a file of data/, never a path out of it
            try:
                value = int(label)
            except ValueError:
                raise UserError(f"{csv_path} line {line}: label {label!r} is not an integer") from None
            if not 0 <= value <= 9:
                raise UserError(f"{csv_path} line {line}: label {value} is outside 0-9")
            rows.append((name, value))
    if not rows:
        raise UserError(f"{csv_path}: the split lists no images")
    return rows


def load_image(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """An RGB uint8 array (size, size, 3); a missing or unreadable file is a UserError."""
    if not path.is_file():
        raise UserError(f"{path}: image listed in the csv does not exist")
    im = load_rgb(path)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def load_split(root: Path, dataset: str, split: str = "train", limit: int | None = None,
               progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 28, 28) uint8 and labels (N,) int64 of `root/dataset/{split}.csv`.

    `limit` keeps the first rows only (quick experiments and tests).
    """
    folder = Path(root) / dataset
    if not folder.is_dir():
        raise UserError(f"{folder}: data-set folder not found (expected the course layout "
                        f"{dataset}/data/*.png with {dataset}/{split}.csv)")
    rows = read_split_csv(folder / f"{split}.csv")[:limit]
    images = np.stack([load_image(folder / "data" / name)
                       for name, _ in tqdm(rows, desc=f"load {dataset}/{split}", disable=not progress)])
    labels = torch.tensor([label for _, label in rows], dtype=torch.int64)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


class DigitData(torch.utils.data.Dataset):
    """Both data sets in memory; item = (image in [-1, 1], digit, data-set index)."""

    def __init__(self, root: Path, datasets=DATASETS, split: str = "train", limit: int | None = None):
        parts = [load_split(root, name, split, limit) for name in datasets]
        self.images = torch.cat([images for images, _ in parts])
        self.digits = torch.cat([digits for _, digits in parts])
        self.sets = torch.cat([torch.full((len(d),), i, dtype=torch.int64) for i, (_, d) in enumerate(parts)])

    def __len__(self):
        return len(self.digits)

    def __getitem__(self, i):
        return self.images[i].float() / 127.5 - 1.0, self.digits[i], self.sets[i]

    def balanced_weights(self) -> torch.Tensor:
        """Per-sample weights that make every (data set, digit) pair equally likely.

        The real MNIST-M here has ~800 images of 7, 8, 9 and thousands of the others; without
        this the rare digits are seen up to 9x less often.
        """
        pair = self.sets * 10 + self.digits
        counts = Counter(pair.tolist())
        return torch.tensor([1.0 / counts[p] for p in pair.tolist()], dtype=torch.double)
