"""Image I/O, labelled figure helpers (PIL only) and pixel statistics of uint8 images (..., H, W, 3)."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from utils.errors import UserError, reason


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8, rounded."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def load_rgb(path: Path) -> Image.Image:
    """The image as RGB, fully read: the one image loader; a missing or unreadable file is a UserError."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{path}: image not found") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises all three for broken files
        raise UserError(f"{path}: cannot read image ({reason(e)})") from None


def save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _layout(shape, row_labels, col_labels, title, scale, pad) -> dict:
    """Where labelled_grid puts everything: font, figure size and each tile's top-left corner."""
    rows, cols, h, w = shape[:4]
    h, w = h * scale, w * scale
    font_size = max(12, min(h, 40) // 2)
    font = _font(font_size)
    left = 0 if row_labels is None else max(font.getbbox(str(s))[2] for s in row_labels) + 8
    top = (0 if col_labels is None else font_size + 8) + (0 if title is None else font_size + 8)
    width = left + cols * (w + pad) + pad
    if title is not None:
        width = max(width, font.getbbox(title)[2] + left + 2 * pad)
    corners = [[(left + pad + c * (w + pad), top + pad + r * (h + pad)) for c in range(cols)] for r in range(rows)]
    return {"font": font, "font_size": font_size, "left": left, "top": top, "h": h, "w": w,
            "size": (width, top + rows * (h + pad) + pad), "corners": corners}


def labelled_grid(tiles: np.ndarray, row_labels=None, col_labels=None, title: str | None = None,
                  scale: int = 3, pad: int = 2) -> Image.Image:
    """A figure of tiles (R, C, H, W, 3) uint8 with optional row/column labels and a title."""
    L = _layout(tiles.shape, row_labels, col_labels, title, scale, pad)
    font, h, w, left, top = L["font"], L["h"], L["w"], L["left"], L["top"]
    fig = Image.new("RGB", L["size"], "white")
    draw = ImageDraw.Draw(fig)
    if title is not None:
        draw.text((left + pad, 2), title, fill="black", font=font)
    for c, label in enumerate(col_labels or []):
        draw.text((L["corners"][0][c][0] + w // 2, top - 4), str(label), fill="black", font=font, anchor="mb")
    for r, row in enumerate(L["corners"]):
        if row_labels is not None:
            draw.text((left - 4, row[0][1] + h // 2), str(row_labels[r]), fill="black", font=font, anchor="rm")
        for c, corner in enumerate(row):
            fig.paste(Image.fromarray(tiles[r, c]).resize((w, h), Image.NEAREST), corner)
    return fig


def grid_tiles(figure: Image.Image | Path, shape, row_labels=None, col_labels=None, title: str | None = None,
               scale: int = 3, pad: int = 2) -> np.ndarray:
    """The tiles (R, C, H, W, 3) that `labelled_grid` called with these arguments drew into `figure`,
    read back from the image (one pixel per scaled tile pixel): for tests that check a figure's content."""
    fig = np.asarray(Image.open(figure).convert("RGB") if isinstance(figure, (str, Path)) else figure.convert("RGB"))
    L = _layout(shape, row_labels, col_labels, title, scale, pad)
    if (fig.shape[1], fig.shape[0]) != L["size"]:
        raise ValueError(f"figure is {fig.shape[1]}x{fig.shape[0]}, the layout {L['size'][0]}x{L['size'][1]}")
    return np.stack([np.stack([fig[y:y + L["h"]:scale, x:x + L["w"]:scale] for x, y in row]) for row in L["corners"]])


# ITU-R BT.601 luma weights of R, G, B (what PIL's convert("L") uses, there rounded to integers)
LUMA_601 = np.array([0.299, 0.587, 0.114])


def mean_abs_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean |a - b| over each image's pixels and channels, 0-255 scale: uint8 (..., H, W, 3) -> float64 (...)."""
    if a.shape != b.shape:
        raise ValueError(f"images of shapes {a.shape} and {b.shape} cannot be compared")
    return np.abs(a.astype(np.float64) - b.astype(np.float64)).mean(axis=(-3, -2, -1))


def luma_contrast(images: np.ndarray) -> np.ndarray:
    """RMS contrast: the standard deviation (population, ddof 0) of each image's ITU-R 601 luma
    Y = 0.299 R + 0.587 G + 0.114 B on the 0-255 scale, unrounded: uint8 (..., H, W, 3) -> float64 (...)."""
    return (images.astype(np.float64) @ LUMA_601).std(axis=(-2, -1))


def mean_saturation(images: np.ndarray) -> np.ndarray:
    """Mean HSV saturation (max - min) / max of each image's pixels, 0 where max = 0 (as
    `colorsys.rgb_to_hsv`): uint8 (..., H, W, 3) -> float64 (...) in [0, 1]."""
    x = images.astype(np.float64)
    hi, lo = x.max(axis=-1), x.min(axis=-1)
    return np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0).mean(axis=(-2, -1))
