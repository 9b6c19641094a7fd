"""Image I/O and labelled figure helpers (PIL only)."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8, rounded."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def labelled_grid(tiles: np.ndarray, row_labels=None, col_labels=None, title: str | None = None,
                  scale: int = 3, pad: int = 2) -> Image.Image:
    """A figure of tiles (R, C, H, W, 3) uint8 with optional row/column labels and a title."""
    rows, cols, h, w, _ = tiles.shape
    h, w = h * scale, w * scale
    font_size = max(12, min(h, 40) // 2)
    font = _font(font_size)
    left = 0 if row_labels is None else max(font.getbbox(str(s))[2] for s in row_labels) + 8
    top = (0 if col_labels is None else font_size + 8) + (0 if title is None else font_size + 8)
    width = left + cols * (w + pad) + pad
    if title is not None:
        width = max(width, font.getbbox(title)[2] + left + 2 * pad)
    fig = Image.new("RGB", (width, top + rows * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(fig)
    if title is not None:
        draw.text((left + pad, 2), title, fill="black", font=font)
    for c, label in enumerate(col_labels or []):
        draw.text((left + pad + c * (w + pad) + w // 2, top - 4), str(label), fill="black", font=font, anchor="mb")
    for r in range(rows):
        y = top + pad + r * (h + pad)
        if row_labels is not None:
            draw.text((left - 4, y + h // 2), str(row_labels[r]), fill="black", font=font, anchor="rm")
        for c in range(cols):
            tile = Image.fromarray(tiles[r, c]).resize((w, h), Image.NEAREST)
            fig.paste(tile, (left + pad + c * (w + pad), y))
    return fig
