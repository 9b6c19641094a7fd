"""P3 data: the course's `val/{class_id}_{image_id}.png` folder, `id2label.json`, and the cases figure.

Every problem with the input is a `UserError` that names the file and what is wrong with it.
"""
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from utils.errors import UserError
from utils.images import _font, load_rgb

VAL_NAME = re.compile(r"(\d+)_(\w+)\.png", re.IGNORECASE)  # {class_id}_{image_id}.png



@dataclass(frozen=True)
class ValImage:
    path: Path
    class_id: int


def read_id2label(path: Path) -> dict[int, str]:
    """`{"0": "bicycle", ...}` -> {0: "bicycle", ...}, validated."""
    if not path.is_file():
        raise UserError(f"{path}: id2label json not found")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f'{path}: expected a non-empty object {{"class_id": "label", ...}}')
    id2label = {}
    for key, name in raw.items():
        if not str(key).isdigit():
            raise UserError(f"{path}: key {key!r} is not a class id (a non-negative integer)")
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"{path}: label of class {key} is {name!r}, expected a non-empty string")
        if int(key) in id2label:
            raise UserError(f"{path}: class id {int(key)} appears twice")
        id2label[int(key)] = name.strip()
    doubles = sorted(n for n, k in Counter(id2label.values()).items() if k > 1)
    if doubles:
        raise UserError(f"{path}: labels {doubles} name more than one class")
    return dict(sorted(id2label.items()))


def label_words(name: str) -> str:
    """`willow_tree` -> `willow tree`: the label as it reads in a prompt or a caption."""
    return " ".join(name.replace("_", " ").split())


def list_val_images(folder: Path, id2label: dict[int, str]) -> tuple[list[ValImage], list[str]]:
    """The `{class_id}_{image_id}.png` files of `folder`, sorted, and the names of the non-PNG files ignored.

    A PNG whose name does not parse, or whose class id is not in `id2label`, is an error: the true
    label would be unknown, so any accuracy computed without it could silently be wrong.
    """
    if not folder.is_dir():
        raise UserError(f"{folder}: validation folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    ignored = [p.name for p in files if p.suffix.lower() != ".png"]
    pngs = [p for p in files if p.suffix.lower() == ".png"]
    if not pngs:
        raise UserError(f"{folder}: no PNG images found (expected files named {{class_id}}_{{image_id}}.png)")
    bad = [p.name for p in pngs if not VAL_NAME.fullmatch(p.name)]
    if bad:
        raise UserError(f"{folder}: {len(bad)} PNG file(s) not named {{class_id}}_{{image_id}}.png, "
                        f"e.g. {', '.join(bad[:5])}; rename or remove them")
    images = [ValImage(p, int(VAL_NAME.fullmatch(p.name).group(1))) for p in pngs]
    unknown = sorted({im.class_id for im in images} - set(id2label))
    if unknown:
        example = next(im.path.name for im in images if im.class_id == unknown[0])
        raise UserError(f"{folder}: class id(s) {unknown} (e.g. {example}) are not in the id2label json, "
                        f"which has ids {min(id2label)}..{max(id2label)}")
    return sorted(images, key=lambda im: (im.class_id, im.path.name)), ignored


def case_tile(path: Path, tile: int) -> Image.Image:
    """A case's image padded onto a white `tile` x `tile` square (CIFAR's 32x32 kept sharp)."""
    im = load_rgb(Path(path))
    small = im.width < tile and im.height < tile
    return ImageOps.pad(im, (tile, tile), Image.NEAREST if small else Image.LANCZOS, color="white")


def cases_layout(rows: list[tuple[str, list[dict]]], tile: int = 128, pad: int = 10, font_size: int = 14) -> dict:
    """Where cases_figure puts everything: captions, figure size, and each case's image corner per row."""
    font = _font(font_size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    captions = [[(f"true: {c['true_label']}", f"pred: {c['pred_label']} ({c['probability']:.2f})")
                 for c in cases] for _, cases in rows]
    widths = [draw.textlength(line, font=font) for row in captions for pair in row for line in pair]
    col_w = int(max([tile, *widths])) + pad
    n_cols = max(1, max(len(cases) for _, cases in rows))
    title_h, line_h = font_size + 4 + pad, font_size + 4
    row_h = title_h + tile + 3 * line_h + pad
    tops = [pad + r * row_h for r in range(len(rows))]
    corners = [[(pad + c * col_w, top + title_h) for c in range(len(cases))] for top, (_, cases) in zip(tops, rows)]
    return {"captions": captions, "size": (pad + n_cols * col_w, pad + len(rows) * row_h), "tops": tops,
            "corners": corners, "title_h": title_h, "line_h": line_h}


def cases_figure(rows: list[tuple[str, list[dict]]], tile: int = 128, pad: int = 10,
                 font_size: int = 14) -> Image.Image:
    """A figure with one row of images per `(title, cases)`; each case a dict with `path`,
    `true_label`, `pred_label`, `probability`, `correct`, captioned with its file name, true and predicted label."""
    L = cases_layout(rows, tile, pad, font_size)
    font, bold, title_h, line_h = _font(font_size), _font(font_size + 4), L["title_h"], L["line_h"]
    fig = Image.new("RGB", L["size"], "white")
    draw = ImageDraw.Draw(fig)
    for (title, cases), row_captions, top, corners in zip(rows, L["captions"], L["tops"], L["corners"]):
        draw.text((pad, top), title, fill="black", font=bold)
        if not cases:
            draw.text((pad, top + title_h + tile // 2), "(none)", fill="gray", font=font)
        for case, (true_line, pred_line), (x, y) in zip(cases, row_captions, corners):
            fig.paste(case_tile(case["path"], tile), (x, y))
            top = y + tile + 2
            draw.text((x, top), Path(case["path"]).name, fill="gray", font=font)
            draw.text((x, top + line_h), true_line, fill="black", font=font)
            draw.text((x, top + 2 * line_h), pred_line, fill=(0, 128, 0) if case["correct"] else (200, 0, 0), font=font)
    return fig
