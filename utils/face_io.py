"""P2 files: the course's noise files `NN.pt`, min-max normalised PNGs and MSE against ground truth."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils.errors import UserError, reason


def load_noise(path: Path) -> torch.Tensor:
    """One noise file: a float tensor (1, 3, H, W) or (3, H, W), H and W multiples of 32 -> (3, H, W)."""
    try:
        x = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise UserError(f"{path}: not a readable tensor file ({reason(e)})") from None
    if not isinstance(x, torch.Tensor):
        raise UserError(f"{path}: expected a tensor, found {type(x).__name__}")
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3 or x.shape[1] % 32 or x.shape[2] % 32:
        raise UserError(f"{path}: expected shape (1, 3, H, W) with H and W multiples of 32, found {tuple(x.shape)}")
    if not x.is_floating_point():
        raise UserError(f"{path}: expected floating-point noise, found dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise UserError(f"{path}: the noise holds NaN or inf ({int((~torch.isfinite(x)).sum())} values)")
    return x.float()


def load_noises(noise_dir: Path) -> tuple[list[str], torch.Tensor]:
    """Every `*.pt` in noise_dir, sorted by name, validated before any sampling -> (names, (N, 3, H, W))."""
    noise_dir = Path(noise_dir)
    if not noise_dir.is_dir():
        raise UserError(f"{noise_dir}: noise folder not found")
    paths = sorted(noise_dir.glob("*.pt"))
    if not paths:
        raise UserError(f"{noise_dir}: no .pt noise files")
    noises = [load_noise(p) for p in paths]
    for p, x in zip(paths, noises):
        if x.shape != noises[0].shape:
            raise UserError(f"{p}: shape {tuple(x.shape)} differs from {paths[0].name}'s {tuple(noises[0].shape)}")
    return [p.stem for p in paths], torch.stack(noises)


def minmax_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) -> (N, H, W, 3) uint8, each image min-max normalised on its own.

    The arithmetic of `torchvision.utils.save_image(x[i:i+1], path, normalize=True)`, in float32:
    (x - min) / max(max - min, 1e-5), then floor(255 v + 0.5).
    """
    out = []
    for img in x.detach().float().cpu():
        lo, hi = float(img.min()), float(img.max())
        img = img.clamp(lo, hi).sub_(lo).div_(max(hi - lo, 1e-5))
        out.append(img.mul_(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy())
    return np.stack(out)


def save_pngs(images: np.ndarray, names: list[str], out_dir: Path) -> list[Path]:
    """Write (N, H, W, 3) uint8 images as out_dir/NAME.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png" for name in names]
    for image, path in zip(images, paths):
        Image.fromarray(image).save(path)
    return paths


def load_ground_truth(gt_dir: Path, names: list[str], size: tuple[int, int]) -> np.ndarray:
    """gt_dir/NAME.png for every name, RGB (H, W) = size -> (N, H, W, 3) uint8."""
    images = []
    for name in names:
        path = Path(gt_dir) / f"{name}.png"
        if not path.is_file():
            raise UserError(f"{path}: ground-truth image not found")
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except OSError as e:
            raise UserError(f"{path}: not a readable image ({reason(e)})") from None
        if image.shape[:2] != tuple(size):
            raise UserError(f"{path}: size {image.shape[:2]} differs from the noise's {tuple(size)}")
        images.append(image)
    return np.stack(images)


def mse_255(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-image mean squared error on 0-255 pixel values: (N, H, W, 3) x2 -> (N,) float64."""
    diff = images.astype(np.float64) - reference.astype(np.float64)
    return (diff ** 2).reshape(len(diff), -1).mean(axis=1)
