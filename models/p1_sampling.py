"""P1's sampling: the graded images of a checkpoint's network, the reverse-process figure, and the graded layout.

`sample` draws every image's starting noise (and that of each ancestral step) from one seeded CPU
generator, so the same seed and settings give the same bytes on the same machine. `Settings` holds the
choices (`DEFAULTS` are `hw2_1.sh`'s; `checkpoint_defaults` a checkpoint's own). `p1_ddpm_sample.py` is
the command line over this module.
"""
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from models.diffusion import (
    SAMPLERS,
    ClassifierFreeGuidance,
    alphas_cumprod,
    ddpm_sample,
    linear_betas,
    spaced_timesteps,
    trailing_timesteps,
)
from utils.cli import staged_dir, staged_file
from utils.errors import UserError
from utils.images import labelled_grid, save_png, to_uint8
from utils.outputs import grid_png, reverse_process_png
from utils.runtime import seed_everything

REVERSE_POINTS_500 = (500, 320, 200, 120, 40, 1)  # the report's points for a 500-step model
SPACINGS = {"leading": spaced_timesteps, "trailing": trailing_timesteps}  # (T, steps) -> descending timesteps


@dataclass(frozen=True)
class Settings:
    """How the graded images are sampled; the defaults are those of `hw2_1.sh` (docs/p1.md has the table)."""
    sampler: str = "unipc"
    steps: int = 5
    spacing: str = "trailing"
    guidance: float = 3.0
    guidance_interval: tuple[int, int] | None = None  # guide only for lo <= t <= hi (0-indexed timesteps)
    eta: float = 0.0  # DDIM only
    batch_size: int = 64

    def timesteps(self, num_train_steps: int) -> list[int]:
        return SPACINGS[self.spacing](num_train_steps, self.steps)


DEFAULTS = Settings()


def checkpoint_defaults(config: dict) -> Settings:
    """The settings a checkpoint samples with by default: DEFAULTS, or for a step-distilled student
    (`--distill-steps`) DDIM over the trailing grid of the K steps it was trained for."""
    steps = config.get("distillation", {}).get("steps")
    return DEFAULTS if steps is None else replace(DEFAULTS, sampler="ddim", steps=steps, spacing="trailing")


class ReverseProcess(NamedTuple):
    points: list[int]      # 1-indexed timesteps, descending (t = T is pure noise)
    tiles: np.ndarray      # (S, len(points), 28, 28, 3) uint8: the states x_t at those points, per data set


def reverse_points(num_train_steps: int) -> list[int]:
    """The report's 1-indexed timesteps (t = 500 is pure noise, t = 1 the last step) scaled to T."""
    return sorted({max(1, round(t * num_train_steps / 500)) for t in REVERSE_POINTS_500}, reverse=True)


def guided_denoiser(net, digit, dset, settings: Settings, dtype=torch.float32, device="cpu") -> ClassifierFreeGuidance:
    """eps(x, t) of `net` for images of class (digit, dset) with the guidance of `settings`.

    Puts the network's weights in channels_last: the convolutions then run about 15% faster on the CPU.
    """
    net.to(memory_format=torch.channels_last)
    return ClassifierFreeGuidance(
        net, (digit.to(device), dset.to(device)),
        (torch.full_like(digit, net.null_digit).to(device), torch.full_like(dset, net.null_dataset).to(device)),
        w=settings.guidance, chunk=settings.batch_size, interval=settings.guidance_interval, dtype=dtype)


def sample(net, config: dict, settings: Settings = DEFAULTS, *, per_digit: int = 50, seed: int = 0,
           dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
           progress: bool = False) -> np.ndarray:
    """Every graded image, uint8 (S, 10, per_digit, 28, 28, 3): data set, digit, k."""
    datasets, n = config["datasets"], per_digit
    T = config["schedule"]["num_steps"]
    alpha_bar = alphas_cumprod(linear_betas(**config["schedule"]))
    digit = torch.arange(10).repeat_interleave(n).repeat(len(datasets))
    dset = torch.arange(len(datasets)).repeat_interleave(10 * n)
    gen = seed_everything(seed)
    x_T = torch.randn(len(digit), 3, 28, 28, generator=gen)  # (S * 10 * n, 3, 28, 28)
    model = guided_denoiser(net, digit, dset, settings, dtype, device)
    ddim_eta = {"eta": settings.eta} if settings.sampler == "ddim" else {}  # DDIM's own option, beyond the shared ones
    x0 = SAMPLERS[settings.sampler](model, x_T.to(device), alpha_bar, timesteps=settings.timesteps(T),
                                    generator=gen, progress=progress, **ddim_eta)
    bad = int((~torch.isfinite(x0.flatten(1)).all(1)).sum())
    if bad:  # they would be written as black or white images
        raise UserError(f"sampling gave NaN or inf in {bad} of {len(x0)} images ({settings.sampler}, "
                        f"{settings.steps} steps, guidance {settings.guidance:g}); check --guidance and the checkpoint")
    return to_uint8(x0).reshape(len(datasets), 10, n, 28, 28, 3)


def reverse_process(net, config: dict, settings: Settings = DEFAULTS, *, seed: int = 0,
                    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                    progress: bool = False) -> ReverseProcess:
    """A "0" of each data set through the ancestral DDPM sampler over all T steps (its own generator,
    seeded with `seed`), whatever sampler made the graded images; its states at `reverse_points(T)`."""
    datasets, T = config["datasets"], config["schedule"]["num_steps"]
    points = reverse_points(T)
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn(len(datasets), 3, 28, 28, generator=gen)
    model = guided_denoiser(net, torch.zeros(len(datasets), dtype=torch.int64), torch.arange(len(datasets)),
                            settings, dtype, device)
    states = {}

    def callback(i, t, x, eps):  # x is x_t at 0-indexed t, the 1-indexed point t + 1
        if t + 1 in points:
            states[t + 1] = x.cpu().clone()

    ddpm_sample(model, x_T.to(device), alphas_cumprod(linear_betas(**config["schedule"])),
                timesteps=spaced_timesteps(T, T), generator=gen, callback=callback, progress=progress)
    return ReverseProcess(points, np.stack([to_uint8(states[p]) for p in points], axis=1))


def write_outputs(out_dir: Path, datasets: list[str], images: np.ndarray, *, grid_caption: str | None = None,
                  reverse: ReverseProcess | None = None) -> None:
    """OUT_DIR/{dataset}/{digit}_{k:03d}.png, each data set folder replaced whole once every image is
    written; `grid_caption` adds grid_{dataset}.png, `reverse` reverse_process_{dataset}.png."""
    out_dir = Path(out_dir)
    figures = {}
    for s, name in enumerate(datasets):
        if grid_caption is not None:
            cols = min(10, images.shape[2])
            figures[grid_png(name)] = labelled_grid(
                images[s, :, :cols], row_labels=list(range(10)),
                title=f"{name}: rows digits 0-9, columns samples 1-{cols} ({grid_caption})")
        if reverse is not None:
            figures[reverse_process_png(name)] = labelled_grid(
                reverse.tiles[s][None], col_labels=[f"t={p}" for p in reverse.points], scale=4,
                title=f"{name}: reverse process of a '0' (DDPM, {reverse.points[0]} steps)")
    with ExitStack() as stack:
        for s, name in enumerate(datasets):
            folder = stack.enter_context(staged_dir(out_dir / name))
            for d in range(10):
                for k in range(images.shape[2]):
                    save_png(images[s, d, k], folder / f"{d}_{k + 1:03d}.png")
        for name in datasets:  # no figure of an earlier run stays beside the new images
            for old in (grid_png(name), reverse_process_png(name)):
                (out_dir / old).unlink(missing_ok=True)
    for file, figure in figures.items():
        with staged_file(out_dir / file) as tmp:
            figure.save(tmp, format="PNG")
