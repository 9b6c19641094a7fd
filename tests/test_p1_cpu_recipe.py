"""The CPU training recipe and what it is made of: the --recipe preset, Min-SNR-gamma weighting (against
diffusers' formula), the patch-2 channel-multiplier network, and run_all.sh's plan."""
import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from PIL import Image

import p1_ddpm_train
import run_plan
from benchmarks import bench_p1_train_step, bench_p1_training
from models.channel_mult_unet import ChannelMultUnet
from models.diffusion import alphas_cumprod, epsilon_loss, linear_betas


def test_recipe_is_a_preset_that_explicit_flags_override(monkeypatch):
    cpu = p1_ddpm_train.parse_args(["--recipe", "cpu"])
    assert (cpu.arch, cpu.n_feat, cpu.channel_mult, cpu.patch, cpu.cond_down, cpu.batch_size, cpu.min_snr_gamma) == \
        ("channel_mult_unet", 64, (1, 2), 2, True, 64, 5.0)
    assert cpu.steps == p1_ddpm_train.RECIPES["cpu"]["steps"] and not cpu.given  # presets are defaults, not "given"
    mine = p1_ddpm_train.parse_args(["--recipe", "cpu", "--n-feat", "96", "--lr", "3e-4"])
    assert (mine.n_feat, mine.lr, mine.patch) == (96, 3e-4, 2) and mine.given == {"n_feat"}
    assert not p1_ddpm_train.parse_args(["--recipe", "cpu", "--no-cond-down"]).cond_down
    gpu = p1_ddpm_train.parse_args([])
    assert (gpu.recipe, gpu.arch, gpu.n_feat, gpu.batch_size, gpu.min_snr_gamma, gpu.cond_down) == \
        ("gpu", "context_unet", 128, 256, 0, False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert p1_ddpm_train.parse_args(["--recipe", "auto"]).recipe == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert p1_ddpm_train.parse_args(["--recipe", "auto"]).arch == "context_unet"


def test_patch_and_cond_down_need_a_network_that_takes_them(cli_error):
    with cli_error("--patch 2: only the channel_mult_unet takes patches"):
        p1_ddpm_train.parse_args(["--patch", "2"])
    with cli_error("--cond-down: only the channel_mult_unet has it"):
        p1_ddpm_train.parse_args(["--cond-down"])
    with cli_error(r"--patch 2 with --channel-mult 1,2,4: .* must halve evenly 2 time\(s\)"):
        p1_ddpm_train.parse_args(["--arch", "channel_mult_unet", "--patch", "2"])


def test_min_snr_loss_matches_diffusers_weighting():
    """epsilon_loss(min_snr_gamma=5) equals diffusers' train_text_to_image.py --snr_gamma rule: the per-image MSE
    weighted by min(SNR, gamma) / SNR, SNR from diffusers' compute_snr on the same schedule."""
    betas = linear_betas(500, 1e-4, 2e-2)
    scheduler = DDPMScheduler(num_train_timesteps=500, beta_start=1e-4, beta_end=2e-2, beta_schedule="linear")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 3, 8, 8, generator=g)
    t = torch.tensor([0, 3, 40, 120, 300, 499])
    pred = torch.randn(6, 3, 8, 8, generator=g)
    snr = compute_snr(scheduler, t)
    weight = torch.stack([snr, 5 * torch.ones_like(snr)], dim=1).min(dim=1)[0] / snr
    expected = (torch.nn.functional.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
    loss = epsilon_loss(lambda x, t_: pred, x0, t, alphas_cumprod(betas).float(), noise, min_snr_gamma=5.0)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    plain = epsilon_loss(lambda x, t_: pred, x0, t, alphas_cumprod(betas).float(), noise)
    assert abs(plain - loss) > 0.1 * plain  # the nearly clean timesteps really are weighted down


def test_patch_network_sees_2x2_patches_and_gives_eps_back_per_pixel():
    """The first convolution sees each 2x2 patch's 12 values as channels (c, a, b at pixel (2i + a, 2j + b)),
    and eps at pixel (2i + a, 2j + b) is output channel 4c + 2a + b at (i, j): checked by hand-written reshapes."""
    torch.manual_seed(0)
    net = ChannelMultUnet(n_feat=8, channel_mult=(1, 2), patch=2)
    seen = {}
    net.conv_in.register_forward_hook(lambda m, inp, out: seen.update(conv_in=inp[0]))
    net.out.register_forward_hook(lambda m, inp, out: seen.update(out=out))
    x = torch.randn(3, 3, 28, 28)
    t, digit, dset = torch.tensor([1, 200, 499]), torch.tensor([0, 5, 10]), torch.tensor([0, 1, 2])
    eps = net(x, t, digit, dset)
    assert eps.shape == x.shape and seen["conv_in"].shape == (3, 12, 14, 14)
    patches = x.reshape(3, 3, 14, 2, 14, 2).permute(0, 1, 3, 5, 2, 4).reshape(3, 12, 14, 14)
    torch.testing.assert_close(seen["conv_in"], patches)
    pixels = seen["out"].reshape(3, 3, 2, 2, 14, 14).permute(0, 1, 4, 2, 5, 3).reshape(3, 3, 28, 28)
    torch.testing.assert_close(eps, pixels)
    torch.testing.assert_close(net.decode(net.encode(x, t), digit, dset), eps)  # guidance's shared encoder
    with pytest.raises(ValueError, match="must halve evenly"):
        ChannelMultUnet(n_feat=8, channel_mult=(1, 2, 4), patch=2)


@pytest.mark.parametrize("cond_down", [False, True])
def test_cond_down_brings_the_condition_to_the_down_path(cond_down):
    """With cond_down the digit changes the down path's maps (ADM-style conditioning); without, the down path
    sees only x and t. Same parameters either way: the flag changes where the embedding goes, not the weights."""
    torch.manual_seed(0)
    net = ChannelMultUnet(n_feat=8, channel_mult=(1, 2), patch=2, cond_down=cond_down)
    for p in net.parameters():  # zero-initialised convolutions would hide the embedding
        p.data.normal_(0, 0.2)
    maps = []
    net.down[0].register_forward_hook(lambda m, inp, out: maps.append(out))
    x, t, dset = torch.randn(2, 3, 28, 28), torch.tensor([100, 300]), torch.tensor([0, 1])
    with torch.no_grad():
        eps = [net(x, t, torch.tensor([d, d]), dset) for d in (3, 8)]
    assert (eps[0] - eps[1]).abs().max() > 0.1
    assert ((maps[0] - maps[1]).abs().max() > 0.1) == cond_down
    assert set(net.state_dict()) == set(ChannelMultUnet(n_feat=8, channel_mult=(1, 2), patch=2).state_dict())
    if cond_down:
        with pytest.raises(ValueError, match="no condition-free encode"):
            net.encode(x, t)


def test_plan_times_the_cpu_recipe_by_the_kernels_torch_runs(tmp_path, monkeypatch):
    """A training step's backward costs more units with AVX2 kernels: the plan's estimate follows the kernels."""
    args = run_plan.parse_args(["--data", str(tmp_path), "--train"])
    monkeypatch.setattr(run_plan, "native_bf16", lambda: False)
    said = {}
    for kernels in ("AVX512", "AVX2", "DEFAULT"):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda k=kernels: k)
        steps = {name: when for name, _, when in run_plan.plan(args, unit_s=60.0, gpu=None)}
        said[kernels] = steps["P1 training (p1_ddpm_train.py --recipe cpu)"]
    for kernels in ("AVX512", "AVX2"):
        units = run_plan.P1_TRAIN_CPU_UNITS[kernels]
        assert said[kernels].startswith(f"about {units:.0f} minutes ({units:,.0f} units)")
    assert said["DEFAULT"] == said["AVX2"] != said["AVX512"]


def test_plan_says_what_runs_and_why_a_step_is_skipped(tmp_path):
    data = tmp_path / "hw2_data"
    (data / "clip_zeroshot" / "val").mkdir(parents=True)
    args = run_plan.parse_args(["--data", str(data), "--train"])
    steps = {name: (what, when) for name, what, when in run_plan.plan(args, unit_s=50.0, gpu=None)}
    train = steps["P1 training (p1_ddpm_train.py --recipe cpu)"]
    assert train[0] == "run" and "no GPU here, so the CPU recipe" in train[1]
    units = run_plan.p1_train_units() / (run_plan.P1_TRAIN_BF16_SPEEDUP if run_plan.native_bf16() else 1)
    assert f"({units:,.0f} units)" in train[1] and f"about {units * 50 / 60:.0f} minutes" in train[1]
    assert steps["P2 DDIM: 10 faces, MSE, eta grid, interpolation"] == ("skip", f"{data / 'face/UNet.pt'} is missing "
                                                                              "(the course's face UNet; see hw2_data/README.md)")
    assert steps["P3 CLIP zero-shot"][0] == "run"
    assert steps["P3 textual inversion and Custom Diffusion"][0] == "skip"
    # with the SD model but no GPU, its training is skipped with its estimate unless asked for
    (data / "sd-v1-4.ckpt").write_bytes(b"")
    steps = {name: (what, when) for name, what, when in run_plan.plan(args, unit_s=50.0, gpu=None)}
    what, when = steps["P3 textual inversion training (3 tokens)"]
    assert what == "skip" and "days" in when and "by FLOPs" in when and "--train-sd" in when
    asked = run_plan.parse_args(["--data", str(data), "--train-sd"])
    steps = {name: what for name, what, _ in run_plan.plan(asked, unit_s=50.0, gpu=None)}
    assert steps["P3 textual inversion training (3 tokens, resumable)"] == "run"
    assert "P1 training (p1_ddpm_train.py --recipe cpu)" not in steps  # no --train
    # on a GPU: measured H100 minutes, the GPU recipe
    steps = {name: when for name, _, when in run_plan.plan(args, unit_s=None, gpu="NVIDIA H100")}
    assert steps["P1 training (p1_ddpm_train.py --recipe gpu)"] == "about 7 minutes (measured on one H100)"


def test_plan_prints_the_device_first(capsys, tmp_path):
    run_plan.main(["--data", str(tmp_path), "--unit-forwards", "10"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("run_all.sh will run on CPU (") and "unit" in first


def test_training_benchmark_end_to_end(shared, tmp_path):
    """bench_p1_training.py on tiny settings: the unit timed before and after, the steps sized from a timed
    calibration run, the kept checkpoints scored at equal fractions, the final one as hw2_1.sh samples it,
    units = seconds / the mean unit; a table, the JSON and a plot."""
    out = tmp_path / "bench.json"
    result = bench_p1_training.main([
        "--units", "0.02", "--points", "2", "--calibrate", "6", "--curve-per-digit", "1", "--final-per-digit", "1",
        "--unit-forwards", "20", "--bf16", "off", "--data-root", str(shared / "hw2_data/digits"), "--out", str(out),
        "--mnistm-classifier", str(shared / "grader/Classifier.pth"), "--run-dir", str(tmp_path / "run"),
        "--", "--n-feat", "8", "--limit", "40", "--num-timesteps", "50", "--batch-size", "8"])
    saved = json.loads(out.read_text())
    assert saved["steps"] == result["steps"] and saved["steps"] % 2 == 0
    assert [p["step"] for p in saved["points"]] == [saved["steps"] // 2, saved["steps"]]
    unit = saved["unit_s"]
    assert unit == pytest.approx(sum(saved["units_timed_s"]) / 2)
    assert saved["train_units"] == pytest.approx(saved["train_s"] / unit)
    units = [p["units"] for p in saved["points"]]
    assert 0 < units[0] < units[1] <= saved["train_units"] + 1e-9
    assert all(0 <= p[k] <= 1 for p in saved["points"] for k in ("mnistm", "svhn"))
    assert saved["final"]["per_digit"] == 1 and 0 <= saved["final"]["mean"] <= 1
    assert saved["config"]["model"]["patch"] == 2 and saved["config"]["model"]["cond_down"]
    assert saved["config"]["training"]["min_snr_gamma"] == 5.0
    assert saved["extra_flags"][-1] == "8" and "cpu" in saved and saved["precision"]
    assert (tmp_path / "run" / f"model_{saved['steps']:06d}.pt").is_file()
    plot = np.asarray(Image.open(out.with_suffix(".png")).convert("L"), dtype=float)
    assert plot.shape[1] > 500 and plot.std() > 10


def test_train_step_benchmark_times_each_layout_against_the_first(tmp_path, monkeypatch):
    """bench_p1_train_step.py --bf16: the recipe's step timed in NCHW and channels_last (compile left out: it
    takes a minute), ratios to the first row, the layout really used, the recipe's steps in units, JSON written."""
    layouts, build = [], bench_p1_train_step.build_from_config

    def spy(config):
        net = build(config)
        net.conv_in.register_forward_hook(lambda m, inp, out: layouts.append(
            m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()))
        return net

    monkeypatch.setattr(bench_p1_train_step, "build_from_config", spy)
    result = bench_p1_train_step.main(["--bf16", "--steps", "2", "--warmup", "1", "--no-compile",
                                       "--unit-forwards", "2", "--out", str(tmp_path / "step.json")])
    saved = json.loads((tmp_path / "step.json").read_text())
    assert saved == json.loads(json.dumps(result)) and saved["batch_size"] == 64 and saved["precision"] == "bf16"
    assert [(r["variant"], r["channels_last"]) for r in saved["rows"]] == [("eager, NCHW", False),
                                                                            ("eager, channels_last", True)]
    assert saved["rows"][0]["speed_vs_first"] == 1.0 and all(r["seconds_per_step"] > 0 for r in saved["rows"])
    first, second = saved["rows"]
    assert second["speed_vs_first"] == pytest.approx(first["seconds_per_step"] / second["seconds_per_step"])
    assert saved["recipe_steps"] == p1_ddpm_train.RECIPES["cpu"]["steps"] and saved["unit_s"] > 0
    for r in saved["rows"]:
        units = saved["recipe_steps"] * r["seconds_per_step"] / saved["unit_s"]
        assert r["units_for_recipe_steps"] == pytest.approx(units)
    assert layouts == [False] * 3 + [True] * 3  # 1 warm-up + 2 timed steps each
