"""Schedules, samplers and guidance against float64 re-derivations and diffusers' schedulers."""
import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from models.diffusion import (
    SAMPLERS,
    ClassifierFreeGuidance,
    alphas_cumprod,
    ddim_sample,
    ddim_step,
    ddpm_sample,
    ddpm_step,
    linear_betas,
    q_sample,
    spaced_timesteps,
)

T = 500


def dummy_model(x, t):
    """diffusers' scheduler-test model: eps = x * t / (t + 1)."""
    t = t.to(x.dtype).view(-1, 1, 1, 1)
    return x * t / (t + 1)


def test_schedule_matches_float64_derivation():
    betas = linear_betas(T, 1e-4, 2e-2)
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    expected_betas = [1e-4 + (2e-2 - 1e-4) * i / (T - 1) for i in range(T)]
    assert torch.allclose(betas, torch.tensor(expected_betas, dtype=torch.float64), rtol=0, atol=1e-15)
    ab = alphas_cumprod(betas)
    prod = 1.0
    for t in (0, 1, 99, 250, T - 1):
        prod = math.prod(1.0 - b for b in expected_betas[:t + 1])
        assert ab[t].item() == pytest.approx(prod, rel=1e-12)
    assert torch.all(ab[1:] < ab[:-1])


def test_spaced_timesteps_exact_sequences():
    assert spaced_timesteps(1000, 50) == list(range(980, -1, -20))
    assert spaced_timesteps(1000, 50)[:3] == [980, 960, 940] and spaced_timesteps(1000, 50)[-1] == 0
    assert spaced_timesteps(500, 500) == list(range(499, -1, -1))
    assert spaced_timesteps(500, 10) == [450, 400, 350, 300, 250, 200, 150, 100, 50, 0]
    assert spaced_timesteps(500, 30) == list(range(16 * 29, -1, -16))  # exactly 30, as diffusers' "leading"
    sched = DDIMScheduler(num_train_timesteps=500, timestep_spacing="leading", steps_offset=0)
    sched.set_timesteps(30)
    assert sched.timesteps.tolist() == spaced_timesteps(500, 30)
    with pytest.raises(ValueError):
        spaced_timesteps(500, 0)


def test_q_sample_formula():
    ab = alphas_cumprod(linear_betas(T))
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 100, 499])
    out = q_sample(x0, t, ab, noise)
    for i, ti in enumerate(t.tolist()):
        a = ab[ti].item()
        assert torch.allclose(out[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i], atol=1e-6)


def test_diffusers_schedule_agrees_to_float32_precision():
    ab = alphas_cumprod(linear_betas(T))
    assert torch.allclose(_ddpm_scheduler(exact=False).alphas_cumprod.double(), ab, rtol=1e-5)
    assert torch.allclose(_ddim_scheduler(exact=False).alphas_cumprod.double(), ab, rtol=1e-5)


def _float64(sched):
    """diffusers keeps its schedule in float32, whose rounding near t = 0 (1 - ab_t ~ 1e-4) is ~1e-4
    relative; give it the exact float64 schedule so both sides are compared in float64."""
    sched.betas = linear_betas(T)
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = alphas_cumprod(sched.betas)
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return sched


def _ddpm_scheduler(exact=True):
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=2e-2,
                          clip_sample=False, variance_type="fixed_small")
    return _float64(sched) if exact else sched


@pytest.mark.parametrize("t", [T - 1, 250, 1, 0])
def test_one_ancestral_step_matches_diffusers(t):
    sched = _ddpm_scheduler()
    sched.set_timesteps(T)
    x, eps = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    expected = sched.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)  # diffusers' draw
    ab = alphas_cumprod(linear_betas(T)).tolist()
    ours = ddpm_step(x, eps, ab[t], ab[t - 1] if t > 0 else 1.0, noise if t > 0 else None)
    assert torch.allclose(ours, expected, rtol=0, atol=1e-10), (ours - expected).abs().max()


def test_ancestral_loop_matches_diffusers_with_same_noise():
    sched = _ddpm_scheduler()
    sched.set_timesteps(T)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noises = [torch.randn(x_T.shape, generator=torch.Generator().manual_seed(100 + i), dtype=torch.float64)
              for i in range(T)]
    x = x_T.clone()
    for i, t in enumerate(sched.timesteps.tolist()):
        eps = dummy_model(x, torch.full((2,), t))
        x = sched.step(eps, t, x, generator=torch.Generator().manual_seed(100 + i)).prev_sample
    ours = ddpm_sample(dummy_model, x_T, alphas_cumprod(linear_betas(T)), timesteps=spaced_timesteps(T, T),
                       noises=noises)
    assert torch.allclose(ours, x, rtol=0, atol=1e-9), (ours - x).abs().max()


def _ddim_scheduler(exact=True):
    sched = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=2e-2,
                          clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    return _float64(sched) if exact else sched


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("i", [0, 20, 49])
def test_one_ddim_step_matches_diffusers(eta, i):
    sched = _ddim_scheduler()
    sched.set_timesteps(50)
    assert sched.timesteps.tolist() == spaced_timesteps(T, 50)
    t = int(sched.timesteps[i])
    x, eps, noise = (torch.randn(2, 3, 8, 8, dtype=torch.float64) for _ in range(3))
    expected = sched.step(eps, t, x, eta=eta, variance_noise=noise).prev_sample
    ab = alphas_cumprod(linear_betas(T)).tolist()
    ours = ddim_step(x, eps, ab[t], ab[t - 10] if t >= 10 else 1.0, eta, noise)
    assert torch.allclose(ours, expected, rtol=0, atol=1e-10), (ours - expected).abs().max()


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_loop_matches_diffusers_with_same_noise(eta):
    sched = _ddim_scheduler()
    sched.set_timesteps(25)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noises = [torch.randn(x_T.shape, generator=torch.Generator().manual_seed(50 + i), dtype=torch.float64)
              for i in range(25)]
    x = x_T.clone()
    for i, t in enumerate(sched.timesteps.tolist()):
        x = sched.step(dummy_model(x, torch.full((2,), t)), t, x, eta=eta, variance_noise=noises[i]).prev_sample
    ours = ddim_sample(dummy_model, x_T, alphas_cumprod(linear_betas(T)), timesteps=spaced_timesteps(T, 25),
                       eta=eta, noises=noises)
    assert torch.allclose(ours, x, rtol=0, atol=1e-9), (ours - x).abs().max()


def test_sampler_uses_given_start_noise_and_generator():
    ab = alphas_cumprod(linear_betas(T))
    x_T = torch.randn(1, 3, 4, 4)
    a = ddpm_sample(dummy_model, x_T, ab, timesteps=[400, 200, 0], generator=torch.Generator().manual_seed(3))
    b = ddpm_sample(dummy_model, x_T, ab, timesteps=[400, 200, 0], generator=torch.Generator().manual_seed(3))
    c = ddpm_sample(dummy_model, x_T * 0.5, ab, timesteps=[400, 200, 0], generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError):
        ddim_sample(dummy_model, x_T, ab, timesteps=[0, 200])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_takes_the_shared_keywords(name):
    """One call fits every sampler (timesteps, generator, noises, callback, progress): the callback sees each step
    once, in order; the ancestral sampler's noise is `noises` when given, else drawn from `generator`; the
    deterministic ones (DDIM at eta 0, the solvers) give the same result with or without either."""
    ab = alphas_cumprod(linear_betas(T))
    x_T = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    timesteps, seen = [400, 250, 100], []

    def run(**kwargs):
        return SAMPLERS[name](dummy_model, x_T, ab, timesteps=timesteps, progress=False, **kwargs)

    drawn = run(generator=torch.Generator().manual_seed(1), callback=lambda i, t, x, eps: seen.append((i, t)))
    assert seen == list(enumerate(timesteps))
    g = torch.Generator().manual_seed(1)
    same_noises = [torch.randn(x_T.shape, generator=g) for _ in timesteps[1:]]  # the last step adds none
    other_noises = [torch.randn(x_T.shape, generator=g) for _ in timesteps[1:]]
    assert torch.equal(run(noises=same_noises), drawn)
    if name == "ddpm":
        assert not torch.allclose(run(noises=other_noises), drawn)
    else:
        assert torch.equal(run(noises=other_noises), drawn) and torch.equal(run(), drawn)


class CondNet(torch.nn.Module):
    """eps depends on the condition: x * (1 + digit) + dataset."""
    def forward(self, x, t, digit, dataset):
        return x * (1 + digit.view(-1, 1, 1, 1)) + dataset.view(-1, 1, 1, 1).float()


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_guidance_combination(chunk):
    net, x = CondNet(), torch.randn(5, 3, 2, 2)
    digit, dset = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 1, 0, 1, 0])
    null_d, null_s = torch.full((5,), 10), torch.full((5,), 2)
    t = torch.zeros(5, dtype=torch.int64)
    w = 2.5
    out = ClassifierFreeGuidance(net, (digit, dset), (null_d, null_s), w=w, chunk=chunk)(x, t)
    expected = (1 + w) * net(x, t, digit, dset) - w * net(x, t, null_d, null_s)
    assert torch.allclose(out, expected, atol=1e-6)
    plain = ClassifierFreeGuidance(net, (digit, dset), (null_d, null_s), w=0.0, chunk=chunk)(x, t)
    assert torch.allclose(plain, net(x, t, digit, dset))
