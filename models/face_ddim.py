"""P2: DDIM sampling of the course's face UNet with the course's schedule, and the report's studies.

The schedule and the sampler are P1's (`models.diffusion`); this module only fixes the course's
choices and adds batching, mixed precision and the eta / interpolation figures' inputs.
"""
from collections.abc import Sequence

import torch

from models.diffusion import alphas_cumprod, ddim_sample, linear_betas, spaced_timesteps
from models.interpolation import lerp, slerp
from utils.runtime import Autocast

NUM_TRAIN_STEPS = 1000  # linear betas 1e-4 .. 2e-2, as the UNet was trained
ETAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the report's eta sweep
ALPHAS = tuple(i / 10 for i in range(11))  # the report's interpolation weights


def course_alpha_bar() -> torch.Tensor:
    """alpha_bar[t] = prod_{s<=t} (1 - beta_s) of the 1000 linear betas, float64 (1000,)."""
    return alphas_cumprod(linear_betas(NUM_TRAIN_STEPS, 1e-4, 2e-2))


def course_timesteps(num_steps: int = 50) -> list[int]:
    """range(0, 1000, 1000 // num_steps) downwards: 980, 960, ..., 0 for 50 steps.

    num_steps must divide 1000; otherwise that range holds more than num_steps timesteps.
    """
    if num_steps < 1 or NUM_TRAIN_STEPS % num_steps:
        raise ValueError(f"the number of DDIM steps must divide {NUM_TRAIN_STEPS}, got {num_steps}")
    return spaced_timesteps(NUM_TRAIN_STEPS, num_steps)


def sample_faces(model, x_T: torch.Tensor, *, eta: float = 0.0, num_steps: int = 50,
                 generator: torch.Generator | None = None, batch_size: int | None = None,
                 dtype: torch.dtype = torch.float32, progress: bool = False) -> torch.Tensor:
    """x_0 (N, 3, H, W) float32 on the CPU from the noises x_T (N, 3, H, W), in chunks of batch_size.

    x_T lies on the model's device. Timesteps `range(0, 1000, 1000 // num_steps)` visited
    downwards (`course_timesteps`). For eta > 0 the noise of every step is drawn for
    the whole batch before sampling, from `generator` on the CPU, so a seed gives the same images
    whatever the batch size and device (at the cost of (steps - 1) noise tensors in memory).
    """
    alpha_bar = course_alpha_bar()
    timesteps = course_timesteps(num_steps)
    noises = None
    if eta > 0:  # (steps - 1) x (N, 3, H, W); the last step is deterministic
        noises = [torch.randn(x_T.shape, generator=generator) for _ in timesteps[:-1]]
    denoiser = Autocast(model, dtype)
    batch_size = batch_size or len(x_T)
    out = []
    for start in range(0, len(x_T), batch_size):
        chunk = slice(start, start + batch_size)
        x = ddim_sample(denoiser, x_T[chunk].float(), alpha_bar, timesteps=timesteps, eta=eta,
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
    """Noises between x0 and x1 (each (3, H, W)): rows slerp and lerp -> (2, len(alphas), 3, H, W)."""
    return torch.stack([torch.stack([f(x0, x1, a) for a in alphas]) for f in (slerp, lerp)])
