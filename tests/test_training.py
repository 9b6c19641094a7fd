"""Training pieces against independent expectations: condition dropout and the epsilon loss (models/),
the learning-rate schedule, the textual-inversion augmentation, the training log, and bad input."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

import p1_ddpm_train
import p1_svhn_classifier_train
from models import p1_training
from models.diffusion import alphas_cumprod, drop_condition, epsilon_loss, linear_betas
from utils.ti_data import ConceptImages, Crop

TINY = ["--limit", "40", "--n-feat", "8", "--num-timesteps", "50", "--batch-size", "4", "--dtype", "fp32"]


# ------------------------------------------------------------------------------ library: dropout and loss
def test_drop_condition_replaces_both_conditions_together():
    digit, dataset = torch.arange(1000) % 10, torch.arange(1000) % 2
    kept = drop_condition((digit, dataset), (10, 2), 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(kept[0], digit) and torch.equal(kept[1], dataset)
    gone = drop_condition((digit, dataset), (10, 2), 1.0, torch.Generator().manual_seed(0))
    assert (gone[0] == 10).all() and (gone[1] == 2).all()
    d, s = drop_condition((digit, dataset), (10, 2), 0.3, torch.Generator().manual_seed(1))
    dropped = d == 10
    assert torch.equal(dropped, s == 2)  # one draw per image drops both of its conditions
    assert torch.equal(dropped, torch.rand(1000, generator=torch.Generator().manual_seed(1)) < 0.3)
    assert torch.equal(d[~dropped], digit[~dropped]) and 0.25 < dropped.float().mean() < 0.35


def test_epsilon_loss_against_diffusers_forward_process():
    """With a 'network' that returns its input x_t, the loss is mean (x_t - eps)^2, x_t from diffusers."""
    betas = linear_betas(50, 1e-4, 2e-2)
    scheduler = DDPMScheduler(num_train_timesteps=50, beta_start=1e-4, beta_end=2e-2, beta_schedule="linear")
    g = torch.Generator().manual_seed(0)
    x0, noise, t = torch.randn(6, 3, 8, 8, generator=g), torch.randn(6, 3, 8, 8, generator=g), torch.arange(6) * 9
    x_t = scheduler.add_noise(x0, noise, t)
    seen = {}

    def echo(x, t_, *cond):
        seen["cond"] = cond
        return x

    loss = epsilon_loss(echo, x0, t, alphas_cumprod(betas).float(), noise, (torch.ones(6), torch.zeros(6)))
    assert loss.item() == pytest.approx(((x_t - noise) ** 2).mean().item(), rel=1e-5)
    assert len(seen["cond"]) == 2  # the conditions reach the network
    oracle = epsilon_loss(lambda x, t_: noise, x0, t, alphas_cumprod(betas).float(), noise)
    assert oracle.item() == 0.0


# ------------------------------------------------------------------------------------ learning rate
def test_lr_schedule_exact_values():
    f = p1_training.lr_factor
    # linear warm-up over 200 steps, then cosine from 1 to 0.1 over the remaining 9,800
    assert [f(s, 200, 10000) for s in (0, 99, 199)] == [0.005, 0.5, 1.0]
    assert f(200, 200, 10000) == 1.0
    assert f(5100, 200, 10000) == pytest.approx(0.55)              # half-way: 0.1 + 0.9 / 2
    assert f(2650, 200, 10000) == pytest.approx(0.1 + 0.45 * (1 + 2 ** -0.5))  # a quarter: cos(pi/4)
    assert f(10000, 200, 10000) == pytest.approx(0.1) and f(12000, 200, 10000) == pytest.approx(0.1)
    assert f(0, 0, 10) == 1.0  # no warm-up


def test_training_log_has_the_learning_rate_of_every_step(shared, tmp_path):
    digits = shared / "hw2_data" / "digits"
    p1_ddpm_train.main(["--data-root", str(digits), "--out-dir", str(tmp_path), "--steps", "6", "--lr", "1e-3",
                        "--warmup", "2", "--log-every", "1", *TINY])
    p1_ddpm_train.main(["--data-root", str(digits), "--out-dir", str(tmp_path), "--steps", "8", "--lr", "1e-3",
                        "--warmup", "2", "--log-every", "1", "--resume", *TINY])
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6, 7, 8]  # appended on resume, not rewritten
    assert all(set(line) == {"step", "loss", "lr", "time"} and isinstance(line["loss"], float) for line in lines)
    # warm-up 0.5, 1, then cosine over 4 steps to 0.1: 1, 0.1 + 0.45 (1 + cos(pi/4)), 0.55, 0.1 + 0.45 (1 - cos(pi/4));
    # the resumed run asks for 8 steps: the cosine now spans 6 steps, at 4/6 and 5/6 of it
    expected = [0.5e-3, 1e-3, 1e-3, 0.86819805e-3, 0.55e-3, 0.23180195e-3, 0.325e-3, 0.16028857e-3]
    assert [line["lr"] for line in lines] == pytest.approx(expected, rel=1e-7)
    # a line logs the mean loss of the steps since the previous line: the same run logged every 3 steps
    p1_ddpm_train.main(["--data-root", str(digits), "--out-dir", str(tmp_path / "every3"), "--steps", "6", "--lr",
                        "1e-3", "--warmup", "2", "--log-every", "3", *TINY])
    every3 = [json.loads(line) for line in (tmp_path / "every3" / "train_log.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines[:6]]
    assert len(set(losses)) == 6 and [line["step"] for line in every3] == [3, 6]
    assert [line["loss"] for line in every3] == pytest.approx([np.mean(losses[:3]), np.mean(losses[3:])], rel=1e-5)


# ----------------------------------------------------------------------------------- TI augmentation
@pytest.fixture
def halves(tmp_path):
    """One 48 x 64 image: left half black, right half white, a grey dot top-left (asymmetric both ways)."""
    x = np.zeros((48, 64, 3), dtype=np.uint8)
    x[:, 32:] = 255
    x[2:6, 2:6] = 128
    Image.fromarray(x).save(tmp_path / "a.png")
    return tmp_path


def test_augmentation_crops_are_75_to_100_percent_and_reproducible(halves):
    data = ConceptImages(halves, resolution=48)
    draw = [data.crop_params(48, 64, torch.Generator().manual_seed(s)) for s in range(300)]
    again = [data.crop_params(48, 64, torch.Generator().manual_seed(s)) for s in range(300)]
    assert draw == again
    sides = [c.side for c in draw]
    assert min(sides) >= 36 and max(sides) <= 48  # 75-100 % of the short side (48)
    assert min(sides) <= 38 and max(sides) >= 46  # and the whole range is used
    assert all(0 <= c.top and c.top + c.side <= 48 and 0 <= c.left and c.left + c.side <= 64 for c in draw)
    assert 0.4 < np.mean([c.flip for c in draw]) < 0.6
    assert len({c.left for c in draw}) > 10


def test_augmentation_crop_and_flip_are_what_they_say(halves):
    data = ConceptImages(halves, resolution=48)
    x = data.images[0]                                             # (3, 48, 64)
    crop = data.apply_crop(x, Crop(0, 8, 48, False))
    assert torch.equal(crop, x[:, :, 8:56])                        # a full-size crop is the pixels themselves
    mirrored = data.apply_crop(x, Crop(0, 8, 48, True))
    assert torch.equal(mirrored, x[:, :, 8:56].flip(-1)) and not torch.equal(mirrored, crop)
    assert mirrored[:, :, :24].mean() > 0.9 and crop[:, :, :24].mean() < -0.5  # white on the left once mirrored
    small = data.apply_crop(x, Crop(4, 10, 40, False))             # resized to 48
    assert small.shape == (3, 48, 48) and small.min() >= -1 and small.max() <= 1
    plain = ConceptImages(halves, resolution=48, augment=False)
    assert plain.crop_params(48, 64, torch.Generator()) == Crop(0, 8, 48, False)  # the centre, never flipped
    pixels, _ = data.batch(64, torch.Generator().manual_seed(0))
    left_white = (pixels[:, :, :, :4].mean(dim=(1, 2, 3)) > 0.5).float().mean()
    assert 0.3 < left_white < 0.7  # about half of a batch is mirrored


# ------------------------------------------------------------------------------------- bad input (P1)
@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps: 0 is out of range"), (["--batch-size", "0"], "--batch-size: 0 is out of range"),
    (["--save-every", "0"], "--save-every: 0 is out of range"), (["--lr", "nan"], "--lr: 'nan' is not a finite"),
    (["--p-uncond", "1.5"], "--p-uncond: 1.5 is out of range"), (["--log-every", "-1"], "--log-every: -1 is out"),
    (["--beta-start", "0.5", "--beta-end", "0.1"], "need beta-start <= beta-end < 1"),
])
def test_p1_flags_out_of_range_are_refused(flags, message, tmp_path, cli_error):
    with cli_error(message):
        p1_ddpm_train.main(["--out-dir", str(tmp_path / "run"), *flags])
    assert not (tmp_path / "run").exists()


def test_p1_refuses_to_replace_a_run_or_write_where_it_cannot(shared, tmp_path, cli_error):
    digits = shared / "hw2_data" / "digits"
    p1_ddpm_train.main(["--data-root", str(digits), "--out-dir", str(tmp_path), "--steps", "1", *TINY])
    before = (tmp_path / "last.pt").read_bytes()
    with cli_error("already holds a run \\(last.pt, model.pt\\); add --resume"):
        p1_ddpm_train.main(["--data-root", str(digits), "--out-dir", str(tmp_path), "--steps", "2", *TINY])
    assert (tmp_path / "last.pt").read_bytes() == before
    (tmp_path / "file").write_text("x")
    # found before the data are read (the data root does not even exist)
    with cli_error("--out-dir .*file/run: .*file is a file"):
        p1_ddpm_train.main(["--data-root", str(tmp_path / "none"), "--out-dir", str(tmp_path / "file" / "run"),
                            "--steps", "1"])


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs: 0 is out of range"), (["--batch-size", "0"], "--batch-size: 0 is out of range"),
    (["--lr", "nan"], "--lr: 'nan' is not a finite"), (["--width", "0"], "--width: 0 is out of range"),
    (["--limit", "0"], "--limit: 0 is out of range"), (["--seed", "-1"], "--seed: -1 is out of range"),
])
def test_svhn_judge_flags_out_of_range_are_refused(flags, message, tmp_path, cli_error):
    with cli_error(message):
        p1_svhn_classifier_train.main(["--out", str(tmp_path / "judge.pt"), *flags])


def test_svhn_judge_refuses_a_batch_larger_than_the_data(shared, tmp_path, cli_error):
    with cli_error("--batch-size 64: larger than the 20 training images"):
        p1_svhn_classifier_train.main(["--data-root", str(shared / "hw2_data" / "digits"), "--limit", "20",
                                       "--batch-size", "64", "--out", str(tmp_path / "judge.pt")])
    assert not (tmp_path / "judge.pt").exists()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        p1_svhn_classifier_train.parse_args(["--help"])
    assert out.getvalue().count("(default:") == 10  # all ten flags have a help text (argparse adds the default)


def test_training_log_drops_the_steps_a_resumed_run_logs_again(tmp_path):
    from utils.training import TrainLog
    path = tmp_path / "train_log.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0, "lr": 0.1}) + "\n" for s in (1, 2, 3, 4)) + "oops\n")
    TrainLog(path, enabled=False, resumed_at=2)  # not the main process: leaves the file alone
    assert len(path.read_text().splitlines()) == 5
    TrainLog(path, enabled=True, resumed_at=2).write(3, 0.5, 0.1)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines if line != "oops"] == [1, 2, 3] and "oops" in lines
    assert json.loads(lines[-1])["loss"] == 0.5 and [p.name for p in tmp_path.iterdir()] == ["train_log.jsonl"]
