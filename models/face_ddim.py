"""P2: DDIM sampling of the course's face UNet with the course's schedule, and the report's studies.

The schedule and the sampler are P1's (`models.diffusion`); this module only fixes the course's
choices and adds batching, mixed precision, the eta / interpolation figures' inputs and the numbers
measured on them (`eta_sweep_stats`, `interpolation_stats`).

Two DDIM conventions (`CONVENTIONS`):
- "ldm" (the default) made the course's ground truth: CompVis latent-diffusion's DDIM sampler,
  which the course's template ships. It visits t = 981, 961, ..., 21, 1 (`range(0, 1000, 20) + 1`),
  clamps the predicted x_0 to [-1, 1] at every step, and its last step goes to alphas_cumprod[0],
  not to 1. This is diffusers' DDIMScheduler with Stable Diffusion v1's settings
  (`timestep_spacing="leading"`, `steps_offset=1`, `clip_sample=True`, `set_alpha_to_one=False`).
- "paper" is the DDIM paper's grid: t = 980, ..., 20, 0, no clamping, the last step to alpha_bar = 1.
"""
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.diffusion import alphas_cumprod, ddim_sample, linear_betas, spaced_timesteps
from models.interpolation import lerp, rms, slerp
from utils.images import luma_contrast, mean_abs_difference, mean_saturation
from utils.runtime import autocast

NUM_TRAIN_STEPS = 1000  # linear betas 1e-4 .. 2e-2, as the UNet was trained
ETAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the report's eta sweep
ALPHAS = tuple(i / 10 for i in range(11))  # the report's interpolation weights
INTERPOLATIONS = ("slerp", "linear")  # the rows of `interpolated_noises`, as the statistics name them


def course_alpha_bar() -> torch.Tensor:
    """alpha_bar[t] = prod_{s<=t} (1 - beta_s) of the 1000 linear betas, float64 (1000,)."""
    return alphas_cumprod(linear_betas(NUM_TRAIN_STEPS, 1e-4, 2e-2))


@dataclass(frozen=True)
class Convention:
    """Where a DDIM grid sits and how its steps end: see the module docstring."""
    offset: int  # added to range(0, 1000, 1000 // steps)
    clip_x0: float | None  # clamp the predicted x_0 to [-clip_x0, clip_x0]
    last_to_one: bool  # the last step goes to alpha_bar = 1 (else to alphas_cumprod[0])


CONVENTIONS = {"ldm": Convention(offset=1, clip_x0=1.0, last_to_one=False),
               "paper": Convention(offset=0, clip_x0=None, last_to_one=True)}


def course_timesteps(num_steps: int = 50, convention: str = "ldm") -> list[int]:
    """range(0, 1000, 1000 // num_steps) + offset, downwards: 981, 961, ..., 1 for 50 steps ("ldm"),
    980, 960, ..., 0 ("paper").

    num_steps must divide 1000; otherwise that range holds more than num_steps timesteps.
    """
    if num_steps < 1 or NUM_TRAIN_STEPS % num_steps:
        raise ValueError(f"the number of DDIM steps must divide {NUM_TRAIN_STEPS}, got {num_steps}")
    return spaced_timesteps(NUM_TRAIN_STEPS, num_steps, CONVENTIONS[convention].offset)


def ddim_options(num_steps: int = 50, convention: str = "ldm") -> dict:
    """The keyword arguments of `ddim_sample` for a convention: timesteps, clip_x0, final_alpha_bar."""
    conv = CONVENTIONS[convention]
    return {"timesteps": course_timesteps(num_steps, convention), "clip_x0": conv.clip_x0,
            "final_alpha_bar": 1.0 if conv.last_to_one else course_alpha_bar()[0].item()}


def sample_faces(model, x_T: torch.Tensor, *, eta: float = 0.0, num_steps: int = 50, convention: str = "ldm",
                 generator: torch.Generator | None = None, batch_size: int | None = None,
                 dtype: torch.dtype = torch.float32, progress: bool = False) -> torch.Tensor:
    """x_0 (N, 3, H, W) float32 on the CPU from the noises x_T (N, 3, H, W), in chunks of batch_size.

    x_T lies on the model's device; `convention` is a key of CONVENTIONS. For eta > 0 the noise of
    every step is drawn for the whole batch before sampling, from `generator` on the CPU, so a seed
    gives the same images whatever the batch size and device (one (N, 3, H, W) tensor per step, but
    none for a last step that lands on alpha_bar = 1, where sigma = 0).
    """
    alpha_bar = course_alpha_bar()
    options = ddim_options(num_steps, convention)
    noises = None
    if eta > 0:
        noisy_steps = num_steps - 1 if options["final_alpha_bar"] == 1.0 else num_steps
        noises = [torch.randn(x_T.shape, generator=generator) for _ in range(noisy_steps)]

    def denoiser(x: torch.Tensor, *rest) -> torch.Tensor:  # the network in `dtype`, eps in float32
        with autocast(x.device, dtype):
            return model(x, *rest).float()

    batch_size = batch_size or len(x_T)
    out = []
    for start in range(0, len(x_T), batch_size):
        chunk = slice(start, start + batch_size)
        x = ddim_sample(denoiser, x_T[chunk].float(), alpha_bar, eta=eta, **options,
                        noises=None if noises is None else [n[chunk] for n in noises], progress=progress)
        out.append(x.float().cpu())
    return torch.cat(out)


def eta_sweep(model, x_T: torch.Tensor, etas: Sequence[float] = ETAS, *, seed: int = 0, **kwargs) -> torch.Tensor:
    """x_0 for every eta (rows) and noise (columns) -> (len(etas), N, 3, H, W).

    Every row draws its stochastic noise from a generator seeded with `seed`, so rows differ only
    by eta (sigma of eq. 16 of DDIM scales the same noise) and the figure is reproducible.
    """
    rows = [sample_faces(model, x_T, eta=eta, generator=torch.Generator().manual_seed(seed), **kwargs)
            for eta in etas]
    return torch.stack(rows)


def interpolated_noises(x0: torch.Tensor, x1: torch.Tensor, alphas: Sequence[float] = ALPHAS) -> torch.Tensor:
    """Noises between x0 and x1 (each (3, H, W)): rows slerp and lerp (INTERPOLATIONS) -> (2, len(alphas), 3, H, W)."""
    return torch.stack([torch.stack([f(x0, x1, a) for a in alphas]) for f in (slerp, lerp)])


def eta_sweep_stats(tiles: np.ndarray, etas: Sequence[float] = ETAS) -> dict:
    """How far eta moves the images: tiles uint8 (E, N, H, W, 3), row i sampled with etas[i], column n
    from noise n, as the figure shows them. Mean absolute pixel differences (0-255) of each tile from the
    same noise's tile at the reference eta (0 if among the etas, else etas[0]) and from the row above:

    {"etas", "reference_eta", "mad_from_eta0": (E, N), "mad_between_rows": (E - 1, N),
     "mean_from_eta0": (E,), "mean_between_rows": (E - 1,)}, the last two averaged over the noises.
    """
    etas = [float(e) for e in etas]
    if tiles.ndim != 5 or tiles.shape[0] != len(etas) or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
        raise ValueError(f"expected uint8 tiles ({len(etas)}, N, H, W, 3), got {tiles.dtype} {tiles.shape}")
    ref = etas.index(0.0) if 0.0 in etas else 0
    from_ref = mean_abs_difference(tiles, np.broadcast_to(tiles[ref], tiles.shape))  # (E, N)
    between = mean_abs_difference(tiles[1:], tiles[:-1])  # (E - 1, N)
    return {"etas": etas, "reference_eta": etas[ref],
            "mad_from_eta0": from_ref.tolist(), "mad_between_rows": between.tolist(),
            "mean_from_eta0": from_ref.mean(axis=1).tolist(), "mean_between_rows": between.mean(axis=1).tolist()}


def interpolation_stats(x0: torch.Tensor, x1: torch.Tensor, noises: torch.Tensor, tiles: np.ndarray,
                        alphas: Sequence[float] = ALPHAS) -> dict:
    """What slerp and lerp do to the noise and to the faces: x0, x1 the end noises (3, H, W); noises
    (2, A, 3, H, W) from `interpolated_noises(x0, x1, alphas)`; tiles uint8 (2, A, H, W, 3) the images
    sampled from them, as saved. Per row of INTERPOLATIONS and alpha: the noise's RMS
    (`models.interpolation.rms`), the image's luma standard deviation (0-255, `utils.images.luma_contrast`)
    and mean HSV saturation (0-1, `utils.images.mean_saturation`):

    {"alphas", "noise_rms": {"slerp", "linear"}, "noise_rms_ends", "contrast": {...}, "saturation": {...}}.
    """
    shape = (len(INTERPOLATIONS), len(alphas))
    if tuple(noises.shape[:2]) != shape or tiles.shape[:2] != shape or tiles.dtype != np.uint8:
        raise ValueError(f"expected noises and uint8 tiles of {shape} rows x alphas, got {tuple(noises.shape)} "
                         f"and {tiles.dtype} {tiles.shape}")
    contrast, saturation = luma_contrast(tiles), mean_saturation(tiles)  # (2, A)
    return {"alphas": [float(a) for a in alphas],
            "noise_rms": {name: [rms(x) for x in row] for name, row in zip(INTERPOLATIONS, noises)},
            "noise_rms_ends": (rms(x0) + rms(x1)) / 2,
            "contrast": dict(zip(INTERPOLATIONS, contrast.tolist())),
            "saturation": dict(zip(INTERPOLATIONS, saturation.tolist()))}
