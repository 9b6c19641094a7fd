"""DPM-Solver++(2M) and UniPC against diffusers' schedulers, step by step on the same inputs (float64)."""
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

from models.p1_networks import build_from_config
from models.diffusion import (
    ClassifierFreeGuidance,
    alphas_cumprod,
    ddim_sample,
    dpmpp_2m_sample,
    guidance_distillation_loss,
    linear_betas,
    q_sample,
    spaced_timesteps,
    step_distillation_loss,
    trailing_timesteps,
    unipc_sample,
)

T = 500
AB = alphas_cumprod(linear_betas(T))


def dummy_model(x, t):
    """diffusers' scheduler-test model: eps = x * t / (t + 1)."""
    t = t.to(x.dtype).view(-1, 1, 1, 1)
    return x * t / (t + 1)


@pytest.mark.parametrize("T, steps", [(500, 5), (500, 7), (500, 1), (500, 500), (1000, 13)])
def test_trailing_timesteps_are_diffusers_trailing(T, steps):
    sched = DPMSolverMultistepScheduler(num_train_timesteps=T, timestep_spacing="trailing")
    sched.set_timesteps(steps)
    assert trailing_timesteps(T, steps) == sched.timesteps.tolist()
    assert trailing_timesteps(500, 5) == [499, 399, 299, 199, 99]


def _on_our_grid(sched, timesteps):
    """Put a diffusers scheduler on our timesteps, ending at sigma = 0 (alpha_bar = 1), in float64:
    sigma = sqrt((1 - ab) / ab) at each timestep, then 0 (diffusers' `final_sigmas_type="zero"`)."""
    ab = AB[timesteps]
    sched.timesteps = torch.tensor(timesteps)
    sched.sigmas = torch.cat([((1 - ab) / ab).sqrt(), torch.zeros(1, dtype=torch.float64)])
    sched.num_inference_steps = len(timesteps)
    return sched


def _run_side_by_side(ours, sched, timesteps, **kwargs):
    """Our sampler's state before every step and its result, and diffusers' on the same x_T."""
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []
    out = ours(dummy_model, x_T, AB, timesteps=timesteps,
               callback=lambda i, t, x, eps: seen.append((t, x.clone())), **kwargs)
    ref, x = [], x_T.clone()
    for t in sched.timesteps.tolist():
        ref.append((t, x.clone()))
        x = sched.step(dummy_model(x, torch.full((2,), t)), t, x).prev_sample
    return seen, out, ref, x


def _assert_same(seen, out, ref, x, atol):
    assert [t for t, _ in seen] == [t for t, _ in ref]
    for (t, a), (_, b) in zip(seen, ref):
        assert torch.allclose(a, b, rtol=0, atol=atol), (t, (a - b).abs().max())
    assert torch.allclose(out, x, rtol=0, atol=atol), (out - x).abs().max()


@pytest.mark.parametrize("steps, spacing", [(1, spaced_timesteps), (2, spaced_timesteps), (5, spaced_timesteps),
                                            (5, trailing_timesteps), (10, trailing_timesteps), (20, spaced_timesteps)])
def test_dpmpp_2m_matches_diffusers_step_by_step(steps, spacing):
    timesteps = spacing(T, steps)
    sched = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=2e-2,
                                        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                        lower_order_final=True, final_sigmas_type="zero")
    sched.set_timesteps(timesteps=timesteps)
    seen, out, ref, x = _run_side_by_side(dpmpp_2m_sample, _on_our_grid(sched, timesteps), timesteps)
    # diffusers casts the sample to float32 inside `step`: agreement to float32 precision
    _assert_same(seen, out, ref, x, atol=1e-5)


@pytest.mark.parametrize("steps, spacing", [(1, spaced_timesteps), (2, spaced_timesteps), (3, spaced_timesteps),
                                            (5, trailing_timesteps), (10, trailing_timesteps), (20, spaced_timesteps)])
def test_unipc_matches_diffusers_step_by_step(steps, spacing):
    timesteps = spacing(T, steps)
    sched = UniPCMultistepScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=2e-2,
                                    solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
                                    final_sigmas_type="zero")
    sched.set_timesteps(steps)
    seen, out, ref, x = _run_side_by_side(unipc_sample, _on_our_grid(sched, timesteps), timesteps)
    _assert_same(seen, out, ref, x, atol=1e-10)


def test_unipc_without_corrector_matches_diffusers_disable_corrector():
    timesteps = spaced_timesteps(T, 6)
    sched = UniPCMultistepScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=2e-2,
                                    disable_corrector=list(range(6)))
    sched.set_timesteps(6)
    seen, out, ref, x = _run_side_by_side(unipc_sample, _on_our_grid(sched, timesteps), timesteps, corrector=False)
    _assert_same(seen, out, ref, x, atol=1e-10)
    with_corrector = unipc_sample(dummy_model, ref[0][1], AB, timesteps=timesteps)
    assert not torch.allclose(with_corrector, out, atol=1e-6)  # the corrector does something


def test_first_order_solvers_are_ddim_for_one_and_two_steps():
    x_T = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    for timesteps in ([300], [400, 100]):
        ddim = ddim_sample(dummy_model, x_T, AB, timesteps=timesteps)
        for sampler in (dpmpp_2m_sample, unipc_sample):
            assert torch.allclose(sampler(dummy_model, x_T, AB, timesteps=timesteps), ddim, rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        unipc_sample(dummy_model, x_T, AB, timesteps=[0, 200])


class CountingNet(torch.nn.Module):
    """eps = x * (1 + digit) + dataset, counting the images it sees."""
    def __init__(self):
        super().__init__()
        self.images = 0

    def forward(self, x, t, digit, dataset):
        self.images += x.shape[0]
        return x * (1 + digit.view(-1, 1, 1, 1)) + dataset.view(-1, 1, 1, 1).float()


def test_guidance_interval_guides_only_inside_and_saves_the_forward_outside():
    net, x = CountingNet(), torch.randn(4, 3, 2, 2)
    digit, dset = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 1])
    null = (torch.full((4,), 10), torch.full((4,), 2))
    model = ClassifierFreeGuidance(net, (digit, dset), null, w=2.0, interval=(100, 300))
    for t, guided in ((99, False), (100, True), (200, True), (300, True), (301, False)):
        ts = torch.full((4,), t)
        net.images = 0
        out = model(x, ts)
        assert net.images == (8 if guided else 4), t  # one forward per image outside, two inside
        cond = net(x, ts, digit, dset)
        expected = 3.0 * cond - 2.0 * net(x, ts, *null) if guided else cond
        assert torch.allclose(out, expected), t
    ts = torch.tensor([50, 150, 250, 350])  # a batch that straddles the interval
    expected = torch.where(((ts >= 100) & (ts <= 300)).view(-1, 1, 1, 1),
                           3.0 * net(x, ts, digit, dset) - 2.0 * net(x, ts, *null), net(x, ts, digit, dset))
    assert torch.allclose(model(x, ts), expected)
    with pytest.raises(ValueError):
        ClassifierFreeGuidance(net, (digit, dset), null, w=2.0, interval=(300, 100))


@pytest.mark.parametrize("chunk", [1, 3, 100])
@pytest.mark.parametrize("arch,cond_down", [("context_unet", False), ("channel_mult_unet", False),
                                            ("channel_mult_unet", True)])
def test_guidance_shares_the_encoder(arch, cond_down, chunk):
    """Where the condition enters after the down path (both P1 networks, unless cond_down) a guided step runs
    `encode` once per image, not twice; a cond_down network runs its down path for both passes. Either gives
    the eps of two full forwards; also in a batch that straddles a guidance interval."""
    torch.manual_seed(0)
    model = {"arch": arch, "n_feat": 16, **({"cond_down": True} if cond_down else {})}
    net = build_from_config({"model": model}).eval()
    for p in net.parameters():  # a random network whose output depends on the condition
        p.data.normal_(0, 0.2)
    encoded = []
    first = net.init_conv if arch == "context_unet" else net.conv_in
    first.register_forward_hook(lambda module, inputs, output: encoded.append(inputs[0].shape[0]))
    x, ts = torch.randn(5, 3, 28, 28), torch.tensor([50, 150, 250, 350, 450])
    digit, dset = torch.tensor([0, 3, 5, 7, 9]), torch.tensor([0, 1, 0, 1, 0])
    null = (torch.full((5,), net.null_digit), torch.full((5,), net.null_dataset))
    with torch.no_grad():
        cond, uncond = net(x, ts, digit, dset), net(x, ts, *null)
        for interval, guided in ((None, torch.ones(5, dtype=torch.bool)), ((100, 300), (ts >= 100) & (ts <= 300))):
            encoded.clear()
            out = ClassifierFreeGuidance(net, (digit, dset), null, w=2.0, chunk=chunk, interval=interval)(x, ts)
            expected = torch.where(guided.view(-1, 1, 1, 1), 3.0 * cond - 2.0 * uncond, cond)
            assert torch.allclose(out, expected, atol=1e-5), interval
            assert (cond - uncond).abs().max() > 0.1  # the condition matters, so the check above means something
            assert sum(encoded) == 5 + (guided.sum() if cond_down else 0)  # shared: each image once


def _random_p1_net(arch: str, **model) -> torch.nn.Module:
    """A small P1 network with weights N(0, 0.2), so its output depends on the condition (and on w)."""
    torch.manual_seed(0)
    net = build_from_config({"model": {"arch": arch, "n_feat": 16, **model}}).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.2)
    return net


@pytest.mark.parametrize("arch", ["context_unet", "channel_mult_unet"])
def test_a_guidance_distilled_network_takes_w_in_one_pass(arch):
    """Guidance on a guidance-distilled network (one with `w_emb`): one pass per image with w as its input,
    w = 0 outside the guidance interval; a network needs w if and only if it has the embedding."""
    net = _random_p1_net(arch, guidance_embed=True)
    forwards = []
    net.register_forward_pre_hook(lambda module, args, kwargs: forwards.append(args[0].shape[0]), with_kwargs=True)
    x, ts = torch.randn(5, 3, 28, 28), torch.tensor([50, 150, 250, 350, 450])
    digit, dset = torch.tensor([0, 3, 5, 7, 9]), torch.tensor([0, 1, 0, 1, 0])
    null = (torch.full((5,), net.null_digit), torch.full((5,), net.null_dataset))
    with torch.no_grad():
        out = ClassifierFreeGuidance(net, (digit, dset), null, w=2.0, chunk=3, interval=(100, 300))(x, ts)
        expected = net(x, ts, digit, dset, w=torch.tensor([0.0, 2.0, 2.0, 0.0, 0.0]))
        assert forwards[:2] == [3, 2]  # one forward per chunk, no doubled batch
        assert torch.allclose(out, expected, atol=1e-5)  # chunks of 3 against one batch of 5
        assert (net(x, ts, digit, dset, w=torch.full((5,), 2.0)) - out)[[0, 3, 4]].abs().max() > 0.1  # w matters
        with pytest.raises(ValueError, match="needs w"):
            net(x, ts, digit, dset)
        with pytest.raises(ValueError, match="not guidance-distilled"):
            _random_p1_net(arch)(x, ts, digit, dset, w=torch.zeros(5))


@pytest.mark.parametrize("arch", ["context_unet", "channel_mult_unet"])
def test_a_student_starts_as_its_teachers_conditional_network(arch):
    """The guidance embedding's last layer starts at zero: loaded with its teacher's weights, a student gives
    the teacher's conditional eps for any w (distillation starts from there, not from noise)."""
    teacher = _random_p1_net(arch)
    student = build_from_config({"model": {"arch": arch, "n_feat": 16, "guidance_embed": True}}).eval()
    missing = student.load_state_dict(teacher.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("w_emb.") for k in missing)
    x, ts, digit, dset = torch.randn(3, 3, 28, 28), torch.tensor([10, 200, 499]), torch.tensor([1, 4, 8]), torch.tensor([0, 1, 1])
    with torch.no_grad():
        for w in (0.0, 1.5, 4.0):
            assert torch.equal(student(x, ts, digit, dset, w=torch.full((3,), w)), teacher(x, ts, digit, dset))


def test_guidance_distillation_loss_targets_the_teachers_guided_eps():
    """`guidance_distillation_loss` is zero for a student that returns the teacher's guided eps
    (1 + w) eps(x_t, c) - w eps(x_t, null) at each image's own w, and is w^2 |eps_c - eps_null|^2 for the
    student it starts as (the teacher's conditional network)."""
    teacher = _random_p1_net("context_unet")
    torch.manual_seed(1)
    x0, noise, t = torch.rand(6, 3, 28, 28) * 2 - 1, torch.randn(6, 3, 28, 28), torch.randint(0, T, (6,))
    cond, null = (torch.arange(6), torch.arange(6) % 2), (torch.full((6,), 10), torch.full((6,), 2))
    w = torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0, 4.0])

    def guided(x, t, digit, dset, w):
        ww = w.view(-1, 1, 1, 1)
        return (1 + ww) * teacher(x, t, digit, dset) - ww * teacher(x, t, *null)

    def conditional(x, t, digit, dset, w):
        return teacher(x, t, digit, dset)

    with torch.no_grad():
        x_t = q_sample(x0, t, AB.float(), noise)
        gap = teacher(x_t, t, *cond) - teacher(x_t, t, *null)
        assert gap.abs().max() > 0.1  # the condition matters to this teacher
        assert guidance_distillation_loss(guided, teacher, x0, t, AB.float(), noise, cond, null, w) < 1e-10
        start = guidance_distillation_loss(conditional, teacher, x0, t, AB.float(), noise, cond, null, w)
        assert torch.isclose(start, (w.view(-1, 1, 1, 1) ** 2 * gap ** 2).mean(), rtol=1e-5)


def test_step_distillation_loss_targets_the_teachers_two_ddim_steps():
    """`step_distillation_loss` is zero for a student whose one DDIM step t -> t'' lands where `ddim_sample`
    with the teacher lands after two, t -> t' -> t'' (the last to alpha_bar = 1): the student's eps is solved
    here from the one-step DDIM equation, not from the loss's x_0 target (the target of Salimans & Ho's
    diffusion_distillation code). An error c in that eps costs c^2 max(SNR, 1) / SNR: the x_0 error
    weighted by max(SNR, 1) (their "snr_trunc")."""
    teacher = _random_p1_net("context_unet", guidance_embed=True)
    torch.manual_seed(1)
    B, ab = 4, AB.float()
    x0, noise = torch.rand(B, 3, 28, 28) * 2 - 1, torch.randn(B, 3, 28, 28)
    cond, w = (torch.tensor([1, 4, 7, 9]), torch.tensor([0, 1, 1, 0])), torch.tensor([0.0, 1.0, 2.5, 4.0])
    t, t_mid = torch.tensor([499, 249, 99, 49]), torch.tensor([374, 124, 74, 24])
    t_next = torch.tensor([249, -1, 49, -1])  # -1: the end, alpha_bar = 1
    ab_next = [ab[n].item() if n >= 0 else 1.0 for n in t_next.tolist()]

    def one_step_student(c):
        def student(x, ts, digit, dset, w):
            eps = []
            for i in range(B):  # eps with ab'^0.5 (x - (1 - ab)^0.5 eps) / ab^0.5 + (1 - ab')^0.5 eps = z''
                one = slice(i, i + 1)
                z = ddim_sample(lambda xx, tt: teacher(xx, tt, digit[one], dset[one], w=w[one]), x[one], ab,
                                timesteps=[int(ts[i]), int(t_mid[i])], final_alpha_bar=ab_next[i])
                a, a2 = ab[ts[i]].item(), ab_next[i]
                eps.append((z - (a2 / a) ** 0.5 * x[one]) / ((1 - a2) ** 0.5 - (a2 * (1 - a) / a) ** 0.5))
            return torch.cat(eps) + c.view(-1, 1, 1, 1)
        return student

    with torch.no_grad():
        assert step_distillation_loss(one_step_student(torch.zeros(B)), teacher, x0, t, t_mid, t_next, ab, noise,
                                      cond, w) < 1e-9
        c = torch.tensor([0.01, 0.02, 0.03, 0.04])
        snr = ab[t] / (1 - ab[t])
        assert snr[0] < 1 < snr[3]  # both sides of the truncation
        loss = step_distillation_loss(one_step_student(c), teacher, x0, t, t_mid, t_next, ab, noise, cond, w)
        assert torch.isclose(loss, (c ** 2 * snr.clamp(min=1) / snr).mean(), rtol=1e-3)
        assert step_distillation_loss(teacher, teacher, x0, t, t_mid, t_next, ab, noise, cond, w) > 1e-3
