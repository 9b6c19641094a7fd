"""P2's DDIM sampling against a float64 re-derivation and diffusers' DDIMScheduler."""
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from models.diffusion import spaced_timesteps
from models.face_ddim import course_timesteps, eta_sweep, sample_faces
from models.face_unet import FaceUNet

COURSE_TIMESTEPS = list(range(980, -1, -20))


class Dummy(torch.nn.Module):
    """A denoiser that depends on x and t, non-linearly: eps = 0.5 sin(t / 50) x + t / 2000."""

    def forward(self, x, t):
        t = t.double().view(-1, 1, 1, 1)
        return (0.5 * torch.sin(t / 50) * x + t / 2000).to(x.dtype)


def step_noises(seed, shape, steps=50):
    """The noises sample_faces draws for eta > 0: one (N, C, H, W) per step but the last."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(steps - 1)]


def reference_float64(x_T, eta, noises):
    """DDIM (eq. 12, sigma of eq. 16) written out in NumPy float64 from the betas up."""
    betas = np.linspace(1e-4, 2e-2, 1000)
    ab = np.cumprod(1 - betas)
    x = x_T.double().numpy()
    for i, t in enumerate(COURSE_TIMESTEPS):
        ab_prev = ab[COURSE_TIMESTEPS[i + 1]] if i + 1 < len(COURSE_TIMESTEPS) else 1.0
        eps = 0.5 * np.sin(t / 50) * x + t / 2000
        x0 = (x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t])
        sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab[t]) * (1 - ab[t] / ab_prev))
        x = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev - sigma ** 2) * eps
        if i + 1 < len(COURSE_TIMESTEPS):
            x = x + sigma * noises[i].double().numpy()
    return torch.from_numpy(x)


def diffusers_ddim(x_T, eta, noises, **config):
    """The same sampling with diffusers' DDIMScheduler, noise injected through variance_noise."""
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              clip_sample=False, set_alpha_to_one=True, **config)
    scheduler.set_timesteps(50)
    x, model = x_T.clone(), Dummy()
    for i, t in enumerate(scheduler.timesteps):
        eps = model(x, t.expand(len(x)))
        noise = noises[i] if i < len(noises) else torch.zeros_like(x)  # sigma = 0 at the last step anyway
        x = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    return x, scheduler.timesteps.tolist()


@pytest.fixture
def x_T():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_course_timesteps():
    assert course_timesteps(50) == spaced_timesteps(1000, 50) == COURSE_TIMESTEPS
    assert COURSE_TIMESTEPS[:2] == [980, 960] and COURSE_TIMESTEPS[-1] == 0 and len(COURSE_TIMESTEPS) == 50
    assert course_timesteps(4) == [750, 500, 250, 0]
    with pytest.raises(ValueError, match="divide 1000"):
        course_timesteps(30)  # range(0, 1000, 33) would visit 31 timesteps


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_matches_float64_rederivation(x_T, eta):
    ours = sample_faces(Dummy(), x_T, eta=eta, generator=torch.Generator().manual_seed(7))
    ref = reference_float64(x_T, eta, step_noises(7, x_T.shape))
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_matches_diffusers_ddim_scheduler(x_T, eta):
    noises = step_noises(3, x_T.shape)
    ref, timesteps = diffusers_ddim(x_T, eta, noises, steps_offset=0, timestep_spacing="leading")
    assert timesteps == COURSE_TIMESTEPS
    ours = sample_faces(Dummy(), x_T, eta=eta, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)  # diffusers keeps alpha_bar in float32


@pytest.mark.parametrize("config, expected", [
    (dict(steps_offset=1, timestep_spacing="leading"), [t + 1 for t in COURSE_TIMESTEPS]),  # 981, ..., 1
    (dict(timestep_spacing="trailing"), [t + 19 for t in COURSE_TIMESTEPS]),  # 999, ..., 19
])
def test_other_spacings_are_shifted_and_give_other_samples(x_T, config, expected):
    other, timesteps = diffusers_ddim(x_T, 0.0, [], **config)
    assert timesteps == expected
    ours = sample_faces(Dummy(), x_T, eta=0.0)
    assert (ours - other).abs().max() > 1e-3


def test_stochastic_noise_is_seeded_and_independent_of_batch_size(x_T):
    def run(seed, batch_size):
        return sample_faces(Dummy(), x_T, eta=1.0, generator=torch.Generator().manual_seed(seed),
                            batch_size=batch_size, num_steps=10)
    assert torch.equal(run(0, 1), run(0, 2))
    assert not torch.allclose(run(0, 2), run(1, 2))


def test_eta_sweep_rows_differ_only_by_eta(x_T):
    rows = eta_sweep(Dummy(), x_T, (0.0, 0.5, 0.5), seed=4, num_steps=10)
    assert rows.shape == (3, *x_T.shape)
    assert torch.equal(rows[0], sample_faces(Dummy(), x_T, eta=0.0, num_steps=10))
    assert torch.equal(rows[1], rows[2]) and not torch.allclose(rows[0], rows[1])


def test_bf16_autocast_runs_the_unet_in_bf16_and_stays_close():
    torch.manual_seed(0)
    net = FaceUNet(channels=32).eval()
    x_T = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fp32 = sample_faces(net, x_T, num_steps=2)
    bf16 = sample_faces(net, x_T, num_steps=2, dtype=torch.bfloat16)
    assert fp32.dtype == bf16.dtype == torch.float32
    rel = ((bf16 - fp32).norm() / fp32.norm()).item()
    assert 0 < rel < 0.05
