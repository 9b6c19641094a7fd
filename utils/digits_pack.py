"""Pack the digit data sets into a few lossless files, and unpack them back into the course layout.

For moving the training data to another machine (a GPU server, Colab, a cluster): 75,000 small PNGs
(127 MB) become 77 WebP mosaics of 1,024 images each (85 MiB, lossless), split if asked
into parts of at most `--part-mib` MiB. Unpacking writes `ROOT/{data set}/data/*.png` and the csv,
so every script reads the data exactly as before: the same pixels as `utils.digits.load_split` sees
in the original (a round trip through WebP lossless and PNG changes none).

    python -m utils.digits_pack pack hw2_data/digits digits_pack --part-mib 38
    python -m utils.digits_pack unpack digits_pack hw2_data/digits
"""
import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils.cli import inside, positive_float, positive_int, safe_name, write_json
from utils.digits import DATASETS, IMAGE_SIZE, load_split, read_split_csv
from utils.errors import UserError, cli, reason
from utils.images import load_rgb

MANIFEST = "pack.json"


def mosaic_name(dataset: str, split: str, k: int) -> str:
    return f"{dataset}_{split}_{k:03d}.webp"


def csv_name(dataset: str, split: str) -> str:
    return f"{dataset}_{split}.csv"


def pack(root: Path, out: Path, datasets=DATASETS, splits=("train",), tiles: int = 32,
         part_mib: float | None = None, method: int = 4) -> list[Path]:
    """Write `out/[partN/]`: the manifest, each split's csv and its mosaics (`tiles` x `tiles` images,
    row-major in csv order, the last one padded with black). Returns the files written."""
    if tiles * IMAGE_SIZE > 16383:  # WebP's largest side
        raise UserError(f"--tiles {tiles}: a mosaic side of {tiles * IMAGE_SIZE} px is over WebP's 16383")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: output folder is not empty; pack into a new folder")
    staging = out / ".staging"
    staging.mkdir(parents=True)
    try:
        files = _write(root, staging, datasets, splits, tiles, method)
    except BaseException:
        shutil.rmtree(staging)
        raise
    placed = _place(files, out, part_mib)
    staging.rmdir()
    return placed


def _write(root: Path, staging: Path, datasets, splits, tiles: int, method: int) -> list[Path]:
    files = []
    manifest = {"image_size": IMAGE_SIZE, "tiles": tiles, "splits": {}}
    per, side = tiles * tiles, tiles * IMAGE_SIZE
    for dataset in datasets:
        for split in splits:
            rows = read_split_csv(Path(root) / dataset / f"{split}.csv")
            images, _ = load_split(root, dataset, split)  # (N, 3, 28, 28) uint8: what training sees
            images = images.permute(0, 2, 3, 1).numpy()
            manifest["splits"][f"{dataset}/{split}"] = len(rows)
            csv = staging / csv_name(dataset, split)
            csv.write_text("image_name,label\n" + "".join(f"{n},{lab}\n" for n, lab in rows))
            files.append(csv)
            for k in tqdm(range(math.ceil(len(rows) / per)), desc=f"pack {dataset}/{split}"):
                tile = np.zeros((per, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
                chunk = images[k * per:(k + 1) * per]
                tile[:len(chunk)] = chunk
                grid = tile.reshape(tiles, tiles, IMAGE_SIZE, IMAGE_SIZE, 3).transpose(0, 2, 1, 3, 4)
                path = staging / mosaic_name(dataset, split, k)
                Image.fromarray(grid.reshape(side, side, 3)).save(path, "WEBP", lossless=True, quality=100,
                                                                  method=method)
                files.append(path)
    write_json(staging / MANIFEST, manifest)
    return [staging / MANIFEST] + files


def _place(files: list[Path], out: Path, part_mib: float | None) -> list[Path]:
    """Move the staged files into `out`, or into `out/part1`, `out/part2`, ... of at most `part_mib` MiB."""
    placed, part, size = [], 1, 0
    for f in files:
        n = f.stat().st_size
        if part_mib is not None and size and size + n > part_mib * 2**20:
            part, size = part + 1, 0
        size += n
        dest = out / f"part{part}" / f.name if part_mib is not None else out / f.name
        dest.parent.mkdir(exist_ok=True)
        placed.append(f.replace(dest))
    return placed


def unpack(src: Path, root: Path) -> dict[str, int]:
    """Write the course layout under `root` from a pack folder (its parts may sit in subfolders).

    Returns the number of images of each `dataset/split`. Refuses to unpack over an existing csv, and
    checks that every part is present before it writes anything."""
    found = {p.name: p for p in Path(src).rglob("*") if p.is_file()}
    if MANIFEST not in found:
        raise UserError(f"{src}: no {MANIFEST} here or in a subfolder (is this a folder made by "
                        f"`python -m utils.digits_pack pack`?)")
    try:
        manifest = json.loads(found[MANIFEST].read_text())
        tiles, size = manifest["tiles"], manifest["image_size"]
        splits = []  # (dataset, split, images)
        for key, n in manifest["splits"].items():
            dataset, split = key.split("/")  # ValueError unless "dataset/split"
            splits.append((dataset, split, n))
        if not all(isinstance(v, int) and v > 0 for v in (tiles, size, *(n for *_, n in splits))):
            raise ValueError("tiles, image_size and the image counts must be positive integers")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise UserError(f"{found[MANIFEST]}: malformed manifest ({reason(e)})") from None
    for dataset, split, _ in splits:  # they name ROOT/{dataset}/{split}.csv: folders of ROOT, files of them
        inside(root, dataset, f"{found[MANIFEST]}: data set")
        safe_name(split, f"{found[MANIFEST]}: split")
    per, side = tiles * tiles, tiles * size
    # check that every part is here before anything is written
    needed = {(d, s): [csv_name(d, s)] + [mosaic_name(d, s, k) for k in range(math.ceil(n / per))] for d, s, n in splits}
    missing = [name for names in needed.values() for name in names if name not in found]
    if missing:
        raise UserError(f"{src}: the pack is incomplete, {len(missing)} files missing (first: {missing[0]}); "
                        f"unpack all its parts together")
    for dataset, split, _ in splits:
        if (target := Path(root) / dataset / f"{split}.csv").exists():
            raise UserError(f"{target} already exists; unpack into a new folder")
    tables = {}  # every csv read and checked (row count, plain image names) before the first image is written
    for dataset, split, n in splits:
        csv = found[needed[dataset, split][0]]
        tables[dataset, split] = rows = read_split_csv(csv)
        if len(rows) != n:
            raise UserError(f"{csv}: {len(rows)} rows, the manifest says {n}")
    for dataset, split, _ in splits:
        csv_file, *mosaics = needed[dataset, split]
        rows = tables[dataset, split]
        data = Path(root) / dataset / "data"
        data.mkdir(parents=True, exist_ok=True)
        for k, name in enumerate(tqdm(mosaics, desc=f"unpack {dataset}/{split}")):
            grid = np.asarray(load_rgb(found[name]))
            if grid.shape != (side, side, 3):
                raise UserError(f"{found[name]}: mosaic is {grid.shape[1]}x{grid.shape[0]}, expected {side}x{side}")
            tile = grid.reshape(tiles, size, tiles, size, 3).transpose(0, 2, 1, 3, 4).reshape(per, size, size, 3)
            for (image, _), array in zip(rows[k * per:(k + 1) * per], tile):
                # not utils.images.save_png: level 1 writes the 74,794 files about 25% faster, on GPU time
                Image.fromarray(array).save(data / image, compress_level=1)
        (Path(root) / dataset / f"{split}.csv").write_bytes(found[csv_file].read_bytes())  # last: a csv means complete
    return {f"{dataset}/{split}": n for dataset, split, n in splits}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m utils.digits_pack", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="course layout -> lossless WebP mosaics",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a.add_argument("root", type=Path, help="folder holding mnistm/ and svhn/ in the course layout")
    a.add_argument("out", type=Path, help="new (or empty) folder to write the pack into")
    a.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS, help="data sets to pack")
    a.add_argument("--splits", nargs="+", default=["train"], help="splits to pack (csv names: train, val)")
    a.add_argument("--tiles", type=positive_int, default=32, help="a mosaic holds tiles x tiles images")
    a.add_argument("--part-mib", type=positive_float, default=None,
                   help="split the pack into subfolders part1, part2, ... of at most this many MiB")
    a.add_argument("--method", type=int, default=4, choices=range(7),
                   help="WebP effort, 0 (fast) to 6 (smallest files); lossless at every level")
    b = sub.add_parser("unpack", help="lossless WebP mosaics -> course layout",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("src", type=Path, help="the pack folder (its parts may sit in subfolders)")
    b.add_argument("root", type=Path, help="folder to write mnistm/ and svhn/ into")
    return p.parse_args(argv)


@cli("python -m utils.digits_pack")
def main(argv=None):
    args = parse_args(argv)
    if args.command == "pack":
        files = pack(args.root, args.out, args.datasets, args.splits, args.tiles, args.part_mib, args.method)
        for folder in sorted({f.parent for f in files}):
            mib = sum(f.stat().st_size for f in files if f.parent == folder) / 2**20
            print(f"{folder}: {sum(f.parent == folder for f in files)} files, {mib:.1f} MiB")
    else:
        for key, n in unpack(args.src, args.root).items():
            print(f"{args.root / key.split('/')[0]}: {n} images ({key.split('/')[1]})")


if __name__ == "__main__":
    main()
