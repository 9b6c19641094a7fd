"""Noise schedules and samplers shared by P1 (conditional DDPM) and P2 (DDIM).

Conventions (those of DDPM, DDIM and `diffusers`):
- timesteps are 0-indexed, t = 0 .. T-1; `alphas_cumprod[t] = prod_{s<=t} (1 - beta_s)`;
- the step that leaves the last visited timestep goes to `final_alpha_bar`: 1 by default (the DDPM and
  DDIM papers), `alphas_cumprod[0]` in the ldm / Stable Diffusion convention (see `spaced_timesteps`);
- a denoiser is any callable `eps = model(x, t)` with x (B, C, H, W) and t (B,) int64 values;
- a sampler is a pure function that never draws its own starting noise; every one in `SAMPLERS` takes
  `sample(model, x_T, alphas_cumprod, *, timesteps, generator=None, noises=None, callback=None,
  progress=False) -> x_0` (the noise of the ancestral steps is `noises[i]`, else drawn on the CPU from
  `generator`; a deterministic sampler accepts both and ignores them), plus options of its own
  (DDIM's `eta`, `clip_x0`, `final_alpha_bar`; UniPC's `corrector`).
Coefficients are computed in float64 and applied to the float32 images as Python floats.
"""
import itertools
import math
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from utils.runtime import autocast

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# callback(i, t, x_t, eps): called before step i, which leaves timestep t
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """The linear schedule of DDPM (Ho et al. 2020, sec. 4), float64 (T,)."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar[t] = prod_{s<=t} (1 - beta_s), float64 (T,)."""
    return torch.cumprod(1.0 - betas.double(), dim=0)


def q_sample(x0: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps  (eq. 4 of DDPM); t (B,) indexes alpha_bar."""
    ab = alpha_bar.to(x0.device)[t].view(-1, 1, 1, 1)
    return (ab.sqrt() * x0 + (1 - ab).sqrt() * noise).to(x0.dtype)


def spaced_timesteps(num_train_steps: int, num_steps: int, offset: int = 0) -> list[int]:
    """`num_steps` descending timesteps `i * (T // num_steps) + offset`: uniform ("leading") spacing.

    offset 0 is the DDIM paper's grid: 980, 960, ..., 20, 0 for T = 1000 and 50 steps. offset 1 is
    CompVis ldm's `make_ddim_timesteps` (`range(0, T, T // S) + 1`) and Stable Diffusion's
    `steps_offset=1`: 981, 961, ..., 21, 1. (`diffusers`' "trailing" spacing, 999, ..., 19, is a
    third convention.) It matters when matching a reference exactly.
    """
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps must be in 1..{num_train_steps}, got {num_steps}")
    stride = num_train_steps // num_steps
    if not 0 <= offset < num_train_steps - (num_steps - 1) * stride:
        raise ValueError(f"offset {offset} puts the grid outside 0..{num_train_steps - 1}")
    return [i * stride + offset for i in range(num_steps)][::-1]


def ddpm_step(x, eps, ab_t: float, ab_prev: float, noise):
    """Ancestral step x_t -> x_prev of DDPM (eq. 11, sigma^2 = posterior variance beta_tilde).

    With ab_prev / ab_t of two visited (possibly strided) timesteps, beta_t = 1 - ab_t / ab_prev.
    """
    alpha = ab_t / ab_prev
    beta = 1.0 - alpha
    mean = (x - beta / (1.0 - ab_t) ** 0.5 * eps) / alpha ** 0.5
    var = beta * (1.0 - ab_prev) / (1.0 - ab_t)
    return mean if noise is None else mean + var ** 0.5 * noise


def ddim_sigma(ab_t: float, ab_prev: float, eta: float) -> float:
    """eq. 16 of DDIM: sigma = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev)."""
    return eta * ((1.0 - ab_prev) / (1.0 - ab_t) * (1.0 - ab_t / ab_prev)) ** 0.5


def ddim_step(x, eps, ab_t: float, ab_prev: float, eta: float, noise, clip_x0: float | None = None):
    """Generalised step of DDIM (eq. 12). With `clip_x0` the predicted x_0 is clamped to
    [-clip_x0, clip_x0] and eps is kept as predicted (ldm's DDIM, diffusers' `clip_sample`)."""
    x0 = (x - (1.0 - ab_t) ** 0.5 * eps) / ab_t ** 0.5
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
    sigma = ddim_sigma(ab_t, ab_prev, eta)
    x_prev = ab_prev ** 0.5 * x0 + (1.0 - ab_prev - sigma ** 2) ** 0.5 * eps
    return x_prev if noise is None or sigma == 0 else x_prev + sigma * noise


def _check_timesteps(timesteps: Sequence[int]) -> list[int]:
    timesteps = [int(t) for t in timesteps]
    if any(a <= b for a, b in itertools.pairwise(timesteps)):
        raise ValueError("timesteps must be strictly decreasing")
    return timesteps


def _loop(model: Denoiser, x: torch.Tensor, alpha_bar: torch.Tensor, timesteps: Sequence[int], step,
          needs_noise: bool, generator, noises, callback, progress, final_alpha_bar: float = 1.0) -> torch.Tensor:
    timesteps = _check_timesteps(timesteps)
    ab = alpha_bar.double().cpu()
    # the last step is deterministic (sigma = 0) only when it lands on alpha_bar = 1
    noisy_steps = len(timesteps) if final_alpha_bar < 1.0 else len(timesteps) - 1
    for i, t in enumerate(tqdm(timesteps, desc="sampling", disable=not progress, leave=False)):
        ab_t = ab[t].item()
        ab_prev = ab[timesteps[i + 1]].item() if i + 1 < len(timesteps) else float(final_alpha_bar)
        eps = model(x, torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device))
        if callback is not None:
            callback(i, t, x, eps)
        noise = None
        if needs_noise and i < noisy_steps:
            noise = noises[i] if noises is not None else torch.randn(x.shape, generator=generator)
            noise = noise.to(x.device, x.dtype)
        x = step(x, eps, ab_t, ab_prev, noise)
    return x


@torch.no_grad()
def ddpm_sample(model: Denoiser, x_T: torch.Tensor, alpha_bar: torch.Tensor, *, timesteps: Sequence[int],
                generator: torch.Generator | None = None, noises: Sequence[torch.Tensor] | None = None,
                callback: Callback | None = None, progress: bool = False) -> torch.Tensor:
    """Ancestral sampling of DDPM (Ho et al. 2020, algorithm 2) over `timesteps`.

    The noise of step i is `noises[i]` when given, else drawn on the CPU from `generator`
    (so a seed gives the same samples on any device).
    """
    return _loop(model, x_T, alpha_bar, timesteps, ddpm_step, True, generator, noises, callback, progress)


@torch.no_grad()
def ddim_sample(model: Denoiser, x_T: torch.Tensor, alpha_bar: torch.Tensor, *, timesteps: Sequence[int],
                eta: float = 0.0, clip_x0: float | None = None, final_alpha_bar: float = 1.0,
                generator: torch.Generator | None = None, noises: Sequence[torch.Tensor] | None = None,
                callback: Callback | None = None, progress: bool = False) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12 with sigma of eq. 16); eta = 0 is deterministic.

    The defaults are the paper's (no clipping, the last step lands on alpha_bar = 1). CompVis
    ldm's sampler, which made the course's P2 ground truth, is `timesteps=spaced_timesteps(T, S, 1)`,
    `clip_x0=1.0`, `final_alpha_bar=alpha_bar[0]` (diffusers' DDIMScheduler with `steps_offset=1`,
    `clip_sample=True`, `set_alpha_to_one=False`); its last step then has sigma > 0 for eta > 0,
    so `noises` needs one tensor per step instead of one per step but the last.
    """
    def step(x, eps, ab_t, ab_prev, noise):
        return ddim_step(x, eps, ab_t, ab_prev, eta, noise, clip_x0)
    return _loop(model, x_T, alpha_bar, timesteps, step, eta > 0, generator, noises, callback, progress,
                 final_alpha_bar)


def trailing_timesteps(num_train_steps: int, num_steps: int) -> list[int]:
    """`num_steps` descending timesteps `round(T - i T / S) - 1`: "trailing" spacing (diffusers'
    `timestep_spacing="trailing"`, Lin et al. 2024, table 2): 499, 399, 299, 199, 99 for T = 500 and
    5 steps. It starts at T - 1, where x_T is pure noise, and spends no step near t = 0; few-step
    multistep solvers need it (`spaced_timesteps`' 400, ..., 100, 0 wastes its last step on t = 0).
    """
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"num_steps must be in 1..{num_train_steps}, got {num_steps}")
    return [round(num_train_steps - i * num_train_steps / num_steps) - 1 for i in range(num_steps)]


def _log_snr(ab: float) -> float:
    """lambda = log(alpha / sigma) = log(ab / (1 - ab)) / 2 of DPM-Solver; +inf at ab = 1."""
    return math.inf if ab >= 1.0 else 0.5 * math.log(ab / (1.0 - ab))


def _first_order(x, x0, ab_s: float, ab_t: float):
    """x_s -> x_t with the x_0 prediction held fixed: sigma_t / sigma_s x - alpha_t (e^-h - 1) x_0 (DDIM, eta 0).

    Lands on x_0 itself when ab_t = 1 (sigma_t = 0)."""
    if ab_t >= 1.0:
        return x0
    h = _log_snr(ab_t) - _log_snr(ab_s)
    return ((1.0 - ab_t) / (1.0 - ab_s)) ** 0.5 * x - ab_t ** 0.5 * math.expm1(-h) * x0


def _eps_to_x0(x, eps, ab: float):
    return (x - (1.0 - ab) ** 0.5 * eps) / ab ** 0.5


@torch.no_grad()
def dpmpp_2m_sample(model: Denoiser, x_T: torch.Tensor, alpha_bar: torch.Tensor, *, timesteps: Sequence[int],
                    generator: torch.Generator | None = None, noises: Sequence[torch.Tensor] | None = None,
                    callback: Callback | None = None, progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, algorithm 2; diffusers' "midpoint" second-order term), deterministic
    (`generator` and `noises`, of the shared signature, are unused).

    Data prediction x_0 = (x - sigma eps) / alpha; step i uses x_0 of steps i and i-1. The first step
    and the last (which lands on alpha_bar = 1) are first order, as diffusers' `lower_order_final`.
    """
    ts = _check_timesteps(timesteps)
    ab = alpha_bar.double().cpu()[ts].tolist() + [1.0]
    lam = [_log_snr(a) for a in ab]
    x, x0_prev = x_T, None
    for i, t in enumerate(tqdm(ts, desc="sampling", disable=not progress, leave=False)):
        eps = model(x, torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device))
        if callback is not None:
            callback(i, t, x, eps)
        x0 = _eps_to_x0(x, eps, ab[i])
        x_next = _first_order(x, x0, ab[i], ab[i + 1])
        if x0_prev is not None and ab[i + 1] < 1.0:
            h = lam[i + 1] - lam[i]
            r = (lam[i] - lam[i - 1]) / h
            # - 0.5 alpha_t (e^-h - 1) D1, D1 = (x0_i - x0_{i-1}) / r  (eq. of algorithm 2, midpoint form)
            x_next = x_next - 0.5 * ab[i + 1] ** 0.5 * math.expm1(-h) / r * (x0 - x0_prev)
        x, x0_prev = x_next, x0
    return x


def _unipc_bh2(h: float) -> tuple[float, float, float]:
    """(e^-h - 1, b1, b2) of UniPC's B(h) = e^-h - 1 variant ("bh2"; Zhao et al. 2023, eq. 8 with data prediction)."""
    hh = -h
    phi1 = math.expm1(hh)       # h phi_1(h) = e^-h - 1
    phi2 = phi1 / hh - 1.0       # h phi_2 / h ...
    return phi1, phi2 / phi1, (phi2 / hh - 0.5) * 2.0 / phi1


@torch.no_grad()
def unipc_sample(model: Denoiser, x_T: torch.Tensor, alpha_bar: torch.Tensor, *, timesteps: Sequence[int],
                 corrector: bool = True, generator: torch.Generator | None = None,
                 noises: Sequence[torch.Tensor] | None = None, callback: Callback | None = None,
                 progress: bool = False) -> torch.Tensor:
    """UniPC (Zhao et al. 2023): the UniP-2 predictor with the UniC corrector, B(h) = e^-h - 1 ("bh2"),
    data prediction: diffusers' `UniPCMultistepScheduler` defaults (solver_order 2, lower_order_final).
    Deterministic (`generator` and `noises`, of the shared signature, are unused).

    The corrector re-uses the network output at the new point (no extra forward): at step i it moves
    x_i using x_0 predicted at x_i before the predictor leaves x_i. The predictor is first order at the
    first step and at the last (which lands on x_0), second order between.
    """
    ts = _check_timesteps(timesteps)
    ab = alpha_bar.double().cpu()[ts].tolist() + [1.0]
    lam = [_log_snr(a) for a in ab]
    x, x_last, m, order = x_T, None, [], 0  # m: x_0 predictions of the previous steps, newest last
    for i, t in enumerate(tqdm(ts, desc="sampling", disable=not progress, leave=False)):
        eps = model(x, torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device))
        if callback is not None:
            callback(i, t, x, eps)
        x0 = _eps_to_x0(x, eps, ab[i])
        if corrector and i > 0 and ab[i + 1] < 1.0:  # UniC-p from x_{i-1} to x_i, p = the last predictor's order
            h = lam[i] - lam[i - 1]
            phi1, b1, b2 = _unipc_bh2(h)
            if order == 1:
                rho_d, rho_t = 0.0, 0.5
            else:  # solve [[1, 1], [r, 1]] (rho_d, rho_t) = (b1, b2)
                r = (lam[i - 2] - lam[i - 1]) / h
                rho_d = (b1 - b2) / (1.0 - r)
                rho_t = b1 - rho_d
            corr = rho_t * (x0 - m[-1])
            if order == 2:
                corr = corr + rho_d * (m[-2] - m[-1]) / r
            x = _first_order(x_last, m[-1], ab[i - 1], ab[i]) - ab[i] ** 0.5 * phi1 * corr
        order = min(2, i + 1, len(ts) - i)
        x_last, m = x, (m + [x0])[-2:]
        x_next = _first_order(x, x0, ab[i], ab[i + 1])
        if order == 2:  # UniP-2: - alpha_t B(h) rho D1 with rho = 1/2, D1 = (x0_{i-1} - x0_i) / r
            h = lam[i + 1] - lam[i]
            r = (lam[i - 1] - lam[i]) / h
            x_next = x_next - ab[i + 1] ** 0.5 * math.expm1(-h) * 0.5 * (m[-2] - x0) / r
        x = x_next
    return x


# name -> sampler; all take the shared keyword arguments (module docstring)
SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpmpp_2m": dpmpp_2m_sample, "unipc": unipc_sample}


class ClassifierFreeGuidance:
    """Wraps a conditional network into a denoiser `eps(x, t)` with classifier-free guidance.

    eps = (1 + w) * eps(x, t, c) - w * eps(x, t, null)  (Ho & Salimans 2022, eq. 6). `cond` and `null`
    are tensors (or tuples of tensors) of per-image conditioning, passed to `net(x, t, *cond)`;
    `chunk` bounds memory. A network whose condition enters late may split its forward into
    `encode(x, t)` (what the condition does not reach) and `decode(features, *cond)`: the two passes
    then share one `encode`, else (no `encode`, or a `cond_down` network's, which the condition
    reaches too) each chunk of the batch is doubled. `interval=(lo, hi)` guides only
    where lo <= t <= hi (a guidance interval, Kynkaanniemi et al. 2024); elsewhere eps = eps(x, t, c),
    one pass instead of two. A guidance-distilled network (one with a `w_emb`, Meng et al. 2023) takes
    w itself: one pass `net(x, t, *cond, w=w)`, w = 0 outside the interval. The network runs under
    autocast in `dtype`; eps is returned in float32.
    """

    def __init__(self, net, cond, null, w: float, chunk: int = 512, interval: tuple[int, int] | None = None,
                 dtype: torch.dtype = torch.float32):
        if interval is not None and not 0 <= interval[0] <= interval[1]:
            raise ValueError(f"guidance interval must be 0 <= lo <= hi, got {interval}")
        self.net, self.w, self.chunk, self.interval, self.dtype = net, w, chunk, interval, dtype
        self.cond = cond if isinstance(cond, tuple) else (cond,)
        self.null = null if isinstance(null, tuple) else (null,)

    def _chunk(self, x, t, cond, null, guided) -> torch.Tensor:
        """(1 + w) eps(x, t, cond) - w eps(x, t, null) where `guided`, eps(x, t, cond) elsewhere."""
        if getattr(self.net, "w_emb", None) is not None:  # guidance-distilled: w is an input
            return self.net(x, t, *cond, w=guided.float() * self.w).float()
        if not guided.any():
            return self.net(x, t, *cond).float()
        idx = guided.nonzero().flatten()  # the images that also get the null pass
        both = [torch.cat([c, n[idx]]) for c, n in zip(cond, null)]
        if hasattr(self.net, "encode") and not getattr(self.net, "cond_down", False):  # one encode serves both
            features = self.net.encode(x, t)
            eps = self.net.decode(tuple(torch.cat([f, f[idx]]) for f in features), *both).float()
        else:
            eps = self.net(torch.cat([x, x[idx]]), torch.cat([t, t[idx]]), *both).float()
        eps_c, eps_u = eps[:len(x)], eps[len(x):]
        eps_c[idx] = (1 + self.w) * eps_c[idx] - self.w * eps_u
        return eps_c

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, x.shape[0], self.chunk):
            sl = slice(s, s + self.chunk)
            guided = torch.full_like(t[sl], self.w != 0, dtype=torch.bool)
            if self.interval is not None:
                guided &= (t[sl] >= self.interval[0]) & (t[sl] <= self.interval[1])
            with autocast(x.device, self.dtype):
                out.append(self._chunk(x[sl], t[sl], [c[sl] for c in self.cond], [n[sl] for n in self.null], guided))
        return torch.cat(out)


# ------------------------------------------------------------------------------------ training
def drop_condition(cond: Sequence[torch.Tensor], null: Sequence[int], p_uncond: float,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Condition dropout of classifier-free guidance (Ho & Salimans 2022, algorithm 1).

    With probability `p_uncond` an image's every condition becomes its null class, together
    (one draw per image, `torch.rand(B)` from `generator`), so the network also learns eps(x, t, null).
    cond: tensors (B,) of class indices; null: one null index per tensor.
    """
    drop = torch.rand(cond[0].shape[0], generator=generator).to(cond[0].device) < p_uncond
    return tuple(c.masked_fill(drop, n) for c, n in zip(cond, null))


def epsilon_loss(model, x0: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor, noise: torch.Tensor,
                 cond: Sequence[torch.Tensor] = (), min_snr_gamma: float | None = None) -> torch.Tensor:
    """The simplified DDPM objective (Ho et al. 2020, eq. 14): mean ||eps - eps_theta(x_t, t, *cond)||^2.

    x0 and noise (B, C, H, W), t (B,) indexes alpha_bar; the prediction is compared in float32. With
    `min_snr_gamma` each image's error is weighted by min(SNR(t), gamma) / SNR(t), SNR = alpha_bar / (1 -
    alpha_bar): Min-SNR-gamma weighting for eps-prediction (Hang et al. 2023, as diffusers'
    `train_text_to_image.py --snr_gamma`), which lowers the weight of the nearly clean timesteps.
    """
    pred = model(q_sample(x0, t, alpha_bar, noise), t, *cond)
    if min_snr_gamma is None:
        return torch.nn.functional.mse_loss(pred.float(), noise.float())
    snr = alpha_bar[t] / (1 - alpha_bar[t])
    weight = snr.clamp(max=min_snr_gamma) / snr
    per_image = (pred.float() - noise.float()).pow(2).mean(dim=(1, 2, 3))
    return (weight * per_image).mean()


def guidance_distillation_loss(student, teacher, x0: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor,
                               noise: torch.Tensor, cond: Sequence[torch.Tensor], null: Sequence[torch.Tensor],
                               w: torch.Tensor) -> torch.Tensor:
    """Stage one of guidance distillation (Meng et al. 2023, eq. 7, in eps): mean ||eps_guided - student(x_t, t, *cond, w)||^2
    with the teacher's guided eps_guided = (1 + w) eps(x_t, t, cond) - w eps(x_t, t, null) as the target.

    x_t = q_sample(x0, t, alpha_bar, noise); w (B,) is each image's guidance weight; cond and null are
    tensors (B,) of class indices (the student learns the conditional network's guided output).
    """
    x_t = q_sample(x0, t, alpha_bar, noise)
    with torch.no_grad():
        both = teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), *(torch.cat([c, n]) for c, n in zip(cond, null)))
        eps_c, eps_u = both.float().chunk(2)
        ww = w.float().view(-1, 1, 1, 1)
        target = (1 + ww) * eps_c - ww * eps_u
    pred = student(x_t, t, *cond, w=w)
    return torch.nn.functional.mse_loss(pred.float(), target)


def step_distillation_loss(student, teacher, x0: torch.Tensor, t: torch.Tensor, t_mid: torch.Tensor,
                           t_next: torch.Tensor, alpha_bar: torch.Tensor, noise: torch.Tensor,
                           cond: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """One stage of progressive distillation (Salimans & Ho 2022, algorithm 2) on a fixed grid: the student's
    one DDIM step t -> t_next is trained to land where the teacher's two DDIM steps t -> t_mid -> t_next land.

    Both networks take the guidance weight w as an input (guidance-distilled, Meng et al. 2023 stage two).
    t, t_mid, t_next (B,) index alpha_bar; t_next = -1 is the end of sampling (alpha_bar = 1). The target
    is the x_0 that one DDIM step would need to land on the teacher's z'' (eq. 8 of the paper:
    (z'' - (sigma''/sigma) z_t) / (alpha'' - (sigma''/sigma) alpha_t)); the loss is the squared error of the
    student's x_0 weighted by max(SNR, 1) ("truncated SNR", sec. 4), averaged.
    """
    ab = torch.cat([alpha_bar, alpha_bar.new_ones(1)])
    ab_t, ab_mid, ab_next = (ab[s].view(-1, 1, 1, 1) for s in (t, t_mid, t_next))
    x_t = q_sample(x0, t, alpha_bar, noise)
    with torch.no_grad():
        z = ddim_step(x_t, teacher(x_t, t, *cond, w=w).float(), ab_t, ab_mid, 0.0, None)
        z = ddim_step(z, teacher(z, t_mid, *cond, w=w).float(), ab_mid, ab_next, 0.0, None)
        ratio = ((1 - ab_next) / (1 - ab_t)).sqrt()  # sigma'' / sigma
        target = (z - ratio * x_t) / (ab_next.sqrt() - ratio * ab_t.sqrt())
    eps = student(x_t, t, *cond, w=w).float()
    x0_pred = (x_t - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    weight = (ab_t / (1 - ab_t)).clamp(min=1.0)
    return (weight * (x0_pred - target) ** 2).mean()
