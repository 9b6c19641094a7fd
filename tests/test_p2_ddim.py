"""P2's DDIM sampling, both conventions, against a float64 re-derivation and diffusers' DDIMScheduler."""
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from models.diffusion import ddim_sample, spaced_timesteps
from models.face_ddim import course_alpha_bar, course_timesteps, ddim_options, eta_sweep, sample_faces
from models.face_unet import FaceUNet

LDM_TIMESTEPS = list(range(981, 0, -20))  # the course's ground truth: CompVis ldm's make_ddim_timesteps
PAPER_TIMESTEPS = list(range(980, -1, -20))  # the DDIM paper's uniform grid
GRIDS = {"ldm": LDM_TIMESTEPS, "paper": PAPER_TIMESTEPS}
# diffusers' DDIMScheduler settings that reproduce each convention (ldm: Stable Diffusion v1's)
DIFFUSERS = {"ldm": dict(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=True,
                         clip_sample_range=1.0),
             "paper": dict(timestep_spacing="leading", steps_offset=0, set_alpha_to_one=True, clip_sample=False)}


class Dummy(torch.nn.Module):
    """A denoiser that depends on x and t, non-linearly: eps = 0.5 sin(t / 50) x + t / 2000."""

    def forward(self, x, t):
        t = t.double().view(-1, 1, 1, 1)
        return (0.5 * torch.sin(t / 50) * x + t / 2000).to(x.dtype)


def step_noises(seed, shape, n):
    """The noises sample_faces draws for eta > 0: n tensors (N, C, H, W) from one generator."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def noisy_steps(convention, steps=50):
    """ldm's last step goes to alphas_cumprod[0] < 1 and has sigma > 0; the paper's lands on 1 (sigma = 0)."""
    return steps if convention == "ldm" else steps - 1


def reference_float64(x_T, eta, noises, convention, model=None):
    """DDIM written out in NumPy float64 from the betas up (eq. 12, sigma of eq. 16), with the ldm
    convention's clamp of the predicted x_0 and its last alpha_bar_prev = alphas_cumprod[0]."""
    betas = np.linspace(1e-4, 2e-2, 1000)
    ab = np.cumprod(1 - betas)
    grid = GRIDS[convention]
    x = x_T.double().numpy()
    for i, t in enumerate(grid):
        last = ab[0] if convention == "ldm" else 1.0
        ab_prev = ab[grid[i + 1]] if i + 1 < len(grid) else last
        if model is None:
            eps = 0.5 * np.sin(t / 50) * x + t / 2000
        else:
            eps = model(torch.from_numpy(x).float(), torch.full((len(x),), t)).double().numpy()
        x0 = (x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t])
        if convention == "ldm":
            x0 = np.clip(x0, -1, 1)
        sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab[t]) * (1 - ab[t] / ab_prev))
        x = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev - sigma ** 2) * eps
        if i < len(noises):
            x = x + sigma * noises[i].double().numpy()
    return torch.from_numpy(x)


def diffusers_ddim(x_T, eta, noises, model=None, **config):
    """The same sampling with diffusers' DDIMScheduler, noise injected through variance_noise."""
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              **config)
    scheduler.set_timesteps(50)
    x, model = x_T.clone(), model or Dummy()
    for i, t in enumerate(scheduler.timesteps):
        with torch.no_grad():
            eps = model(x, t.expand(len(x)))
        noise = noises[i] if i < len(noises) else torch.zeros_like(x)  # the paper's last step has sigma = 0
        x = scheduler.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    return x, scheduler.timesteps.tolist()


@pytest.fixture
def x_T():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_course_timesteps():
    assert course_timesteps(50) == course_timesteps(50, "ldm") == LDM_TIMESTEPS  # the default is the course's
    assert LDM_TIMESTEPS[:2] == [981, 961] and LDM_TIMESTEPS[-1] == 1 and len(LDM_TIMESTEPS) == 50
    assert course_timesteps(50, "paper") == spaced_timesteps(1000, 50) == PAPER_TIMESTEPS
    assert PAPER_TIMESTEPS[:2] == [980, 960] and PAPER_TIMESTEPS[-1] == 0
    assert course_timesteps(4) == [751, 501, 251, 1] and course_timesteps(4, "paper") == [750, 500, 250, 0]
    with pytest.raises(ValueError, match="divide 1000"):
        course_timesteps(30)  # range(0, 1000, 33) would visit 31 timesteps


def test_ldm_coefficients():
    """The last step of the course's convention goes to alphas_cumprod[0], not 1, and x_0 is clamped to [-1, 1]."""
    ab = np.cumprod(1 - np.linspace(1e-4, 2e-2, 1000))
    ldm, paper = ddim_options(50, "ldm"), ddim_options(50, "paper")
    assert ldm["final_alpha_bar"] == course_alpha_bar()[0].item() and abs(ldm["final_alpha_bar"] - ab[0]) < 1e-15
    assert ldm["final_alpha_bar"] == 1 - 1e-4 and ldm["clip_x0"] == 1.0
    assert paper["final_alpha_bar"] == 1.0 and paper["clip_x0"] is None


@pytest.mark.parametrize("convention", ["ldm", "paper"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_matches_float64_rederivation(x_T, eta, convention):
    ours = sample_faces(Dummy(), x_T, eta=eta, convention=convention, generator=torch.Generator().manual_seed(7))
    noises = step_noises(7, x_T.shape, noisy_steps(convention)) if eta > 0 else []
    ref = reference_float64(x_T, eta, noises, convention)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("convention", ["ldm", "paper"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_matches_diffusers_ddim_scheduler(x_T, eta, convention):
    noises = step_noises(3, x_T.shape, noisy_steps(convention))
    ref, timesteps = diffusers_ddim(x_T, eta, noises, **DIFFUSERS[convention])
    assert timesteps == GRIDS[convention]
    ours = sample_faces(Dummy(), x_T, eta=eta, convention=convention, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)  # diffusers keeps alpha_bar in float32


class NearlyTrained(torch.nn.Module):
    """A FaceUNet-based denoiser that behaves like a trained one: the exact eps for one fixed image plus
    0.2 x a small random FaceUNet. (A random UNet alone makes DDIM chaotic: float32 rounding differences
    grow to O(1) over 50 steps, so no two implementations could be compared.) Its predicted x_0 leaves
    [-1, 1] at high t, so the clamp matters."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = FaceUNet(channels=32).eval()
        self.target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9)) * 2 - 1
        self.alpha_bar = course_alpha_bar()

    def forward(self, x, t):
        ab = self.alpha_bar[t.long()].view(-1, 1, 1, 1).to(x.dtype)
        return (x - ab.sqrt() * self.target) / (1 - ab).sqrt() + 0.2 * self.net(x, t)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_face_unet_matches_diffusers_with_stable_diffusion_settings(eta):
    """The whole 50-step loop of the default convention on a small FaceUNet, against diffusers and float64."""
    model = NearlyTrained()
    x_T = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    noises = step_noises(11, x_T.shape, 50) if eta > 0 else []
    ref, _ = diffusers_ddim(x_T, eta, noises, model=model, **DIFFUSERS["ldm"])
    ours = sample_faces(model, x_T, eta=eta, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        ref64 = reference_float64(x_T, eta, noises, "ldm", model=model)
    torch.testing.assert_close(ours.double(), ref64, rtol=1e-5, atol=1e-5)
    if eta == 0:  # the clamp is active here: without it the images differ
        unclamped = ddim_sample(model, x_T, course_alpha_bar(), **{**ddim_options(50), "clip_x0": None})
        assert (ours - unclamped).abs().max() > 0.05


def test_clamping_changes_the_result(x_T):
    """The dummy's predicted x_0 leaves [-1, 1], so a sampler that forgets to clamp gives other images."""
    options = ddim_options(50, "ldm")
    seen = []
    ddim_sample(Dummy(), x_T, course_alpha_bar(), **options,
                callback=lambda i, t, x, eps: seen.append(((x - (1 - course_alpha_bar()[t]).sqrt() * eps)
                                                           / course_alpha_bar()[t].sqrt()).abs().max().item()))
    assert max(seen) > 1.5  # the unclamped prediction is far outside [-1, 1]
    clamped = ddim_sample(Dummy(), x_T, course_alpha_bar(), **options)
    unclamped = ddim_sample(Dummy(), x_T, course_alpha_bar(), **{**options, "clip_x0": None})
    assert (clamped - unclamped).abs().max() > 0.1
    torch.testing.assert_close(clamped, sample_faces(Dummy(), x_T))
    no_clip_diffusers, _ = diffusers_ddim(x_T, 0.0, [], **{**DIFFUSERS["ldm"], "clip_sample": False})
    torch.testing.assert_close(unclamped, no_clip_diffusers, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config, expected", [
    (DIFFUSERS["ldm"], LDM_TIMESTEPS),  # 981, ..., 1
    (dict(timestep_spacing="trailing"), [t + 19 for t in PAPER_TIMESTEPS]),  # 999, ..., 19
])
def test_other_spacings_are_shifted_and_give_other_samples(x_T, config, expected):
    other, timesteps = diffusers_ddim(x_T, 0.0, [], **config)
    assert timesteps == expected
    ours = sample_faces(Dummy(), x_T, eta=0.0, convention="paper")
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
