"""Smoke tests of p2_ddim.py and hw2_2.sh on 32x32 noises with a small random UNet state_dict."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from torchvision.utils import save_image

import p2_ddim
from models.face_ddim import ALPHAS, ETAS, eta_sweep, interpolated_noises, sample_faces
from models.face_unet import FaceUNet, load_face_unet
from utils.face_io import load_noises, minmax_uint8
from utils.images import grid_tiles

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["00", "01", "02", "03"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """noise/NN.pt (1, 3, 32, 32) and UNet.pt: a plain state_dict of a random width-32 FaceUNet."""
    root = tmp_path_factory.mktemp("p2")
    torch.manual_seed(0)
    torch.save(FaceUNet(channels=32).state_dict(), root / "UNet.pt")
    (root / "noise").mkdir()
    g = torch.Generator().manual_seed(0)
    for name in NAMES:
        torch.save(torch.randn(1, 3, 32, 32, generator=g), root / "noise" / f"{name}.pt")
    return root


def read(path):
    return np.asarray(Image.open(path))


def test_minmax_uint8_equals_torchvision_save_image(tmp_path):
    x = torch.randn(3, 3, 16, 16) * torch.tensor([1.0, 5.0, 0.01]).view(3, 1, 1, 1)
    ours = minmax_uint8(x)
    for i in range(3):
        save_image(x[i:i + 1], tmp_path / "tv.png", normalize=True)
        np.testing.assert_array_equal(ours[i], read(tmp_path / "tv.png"))


def test_writes_one_png_per_noise_and_scores_mse(files, tmp_path):
    """The course's pipeline rebuilt from outside references: diffusers' DDIMScheduler with SD v1's settings
    (the ldm convention) over the same UNet, saved with torchvision's save_image(normalize=True); and the MSE
    computed here with numpy from the PNG files, against ground truth that is not the run's own output."""
    out = tmp_path / "out"
    p2_ddim.main([str(files / "noise"), str(out), str(files / "UNet.pt"), "--steps", "2"])
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.png" for n in NAMES]
    model = load_face_unet(files / "UNet.pt")
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=True)
    scheduler.set_timesteps(2)
    assert scheduler.timesteps.tolist() == [501, 1]
    for n in NAMES:
        x = torch.load(files / "noise" / f"{n}.pt")
        for t in scheduler.timesteps:
            with torch.no_grad():
                x = scheduler.step(model(x, t.expand(1)), t, x, eta=0.0).prev_sample
        save_image(x, tmp_path / "reference.png", normalize=True)
        assert np.abs(read(out / f"{n}.png").astype(int) - read(tmp_path / "reference.png")).max() <= 1, n

    gt = tmp_path / "gt"
    gt.mkdir()
    rng = np.random.default_rng(0)
    for n in NAMES:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(gt / f"{n}.png")
    out2 = tmp_path / "out2"
    p2_ddim.main([str(files / "noise"), str(out2), str(files / "UNet.pt"), "--steps", "2", "--gt-dir", str(gt)])
    report = json.loads((out2 / "mse.json").read_text())
    expected = {n: ((read(out2 / f"{n}.png").astype(np.float64) - read(gt / f"{n}.png")) ** 2).mean() for n in NAMES}
    assert report["per_image"] == pytest.approx(expected, rel=1e-9) and min(expected.values()) > 1000
    assert report["mean"] == pytest.approx(np.mean(list(expected.values())), rel=1e-9)
    assert report["passed"] is False and report["baseline"] == 20.0


def sweep_options(**extra):
    return dict(num_steps=2, batch_size=10, dtype=torch.float32, **extra)


def test_report_figures_hold_the_sampled_images_in_order(files, tmp_path):
    out = tmp_path / "out"
    p2_ddim.main([str(files / "noise"), str(out), str(files / "UNet.pt"), "--steps", "2",
                  "--eta-sweep", "--interpolation", "--seed", "1"])
    model = load_face_unet(files / "UNet.pt")
    _, x_T = load_noises(files / "noise")
    rows = eta_sweep(model, x_T[:4], ETAS, seed=1, **sweep_options())  # (5, 4, 3, 32, 32)
    expected = minmax_uint8(rows.flatten(0, 1)).reshape(5, 4, 32, 32, 3)
    tiles = grid_tiles(out / "eta_sweep.png", expected.shape, [f"eta={e:g}" for e in ETAS], NAMES,
                       "DDIM 2 steps (ldm), eta sweep (seed 1)", scale=4)
    np.testing.assert_array_equal(tiles, expected)
    assert not np.array_equal(tiles[0], tiles[-1])  # eta changes the images

    noises = interpolated_noises(x_T[0], x_T[1], ALPHAS)
    x0 = sample_faces(model, noises.flatten(0, 1), **sweep_options())
    expected = minmax_uint8(x0).reshape(2, 11, 32, 32, 3)
    tiles = grid_tiles(out / "interpolation.png", expected.shape, ["slerp", "lerp"], [f"{a:.1f}" for a in ALPHAS],
                       "x_T from 00 (alpha 0) to 01 (alpha 1), DDIM eta 0 (ldm)", scale=4)
    np.testing.assert_array_equal(tiles, expected)
    np.testing.assert_array_equal(tiles[0, 0], read(out / "00.png"))  # alpha 0 is the first noise itself
    np.testing.assert_array_equal(tiles[1, -1], read(out / "01.png"))

    first = read(out / "eta_sweep.png")
    p2_ddim.main([str(files / "noise"), str(out), str(files / "UNet.pt"), "--steps", "2", "--eta-sweep",
                  "--seed", "1"])
    np.testing.assert_array_equal(read(out / "eta_sweep.png"), first)  # reproducible


def test_conventions_side_by_side(files, tmp_path, capsys):
    ldm, paper = tmp_path / "ldm", tmp_path / "paper"
    p2_ddim.main([str(files / "noise"), str(paper), str(files / "UNet.pt"), "--steps", "2", "--convention", "paper"])
    p2_ddim.main([str(files / "noise"), str(ldm), str(files / "UNet.pt"), "--steps", "2", "--compare-conventions"])
    said = capsys.readouterr().out
    expected = np.stack([np.stack([read(folder / f"{n}.png") for n in NAMES]) for folder in (ldm, paper)])
    assert not np.array_equal(expected[0], expected[1])  # the two conventions give other images
    report = json.loads((ldm / "conventions.json").read_text())
    mse = ((expected[0].astype(np.float64) - expected[1]) ** 2).mean(axis=(1, 2, 3))
    assert report["per_image"] == pytest.approx(dict(zip(NAMES, mse)))
    assert report["mean"] == pytest.approx(mse.mean()) and f"mean MSE {mse.mean():.3f}" in said
    title = f"DDIM 2 steps, eta 0: ldm (981..1, clamped) vs paper (980..0) grid; mean MSE {mse.mean():.2f}"
    tiles = grid_tiles(ldm / "conventions.png", expected.shape, ["ldm", "paper"], NAMES, title, scale=4)
    np.testing.assert_array_equal(tiles, expected)


def test_mse_pass_fail_against_the_baseline(files, tmp_path, capsys):
    out, gt = tmp_path / "out", tmp_path / "gt"
    p2_ddim.main([str(files / "noise"), str(gt), str(files / "UNet.pt"), "--steps", "2"])
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(gt / "03.png")
    p2_ddim.main([str(files / "noise"), str(out), str(files / "UNet.pt"), "--steps", "2", "--gt-dir", str(gt)])
    report = json.loads((out / "mse.json").read_text())
    mse_03 = (read(out / "03.png").astype(np.float64) ** 2).mean()
    assert report["per_image"] == pytest.approx({"00": 0.0, "01": 0.0, "02": 0.0, "03": mse_03})
    assert report["convention"] == "ldm" and report["baseline"] == 20 and report["passed"] is False
    assert f"FAIL: mean MSE {mse_03 / 4:.3f} >= baseline 20" in capsys.readouterr().out
    p2_ddim.main([str(files / "noise"), str(out), str(files / "UNet.pt"), "--steps", "2", "--gt-dir", str(gt),
                  "--baseline", str(mse_03)])
    assert json.loads((out / "mse.json").read_text())["passed"] is True
    assert f"PASS: mean MSE {mse_03 / 4:.3f} < baseline" in capsys.readouterr().out


def test_out_dir_equal_to_gt_is_refused_and_gt_untouched(files, tmp_path, cli_error):
    gt = tmp_path / "gt"
    gt.mkdir()
    for n in NAMES:
        (gt / f"{n}.png").write_bytes(b"course ground truth")
    with cli_error("is the --gt-dir .*gt: it would be overwritten"):
        p2_ddim.main([str(files / "noise"), str(tmp_path / "gt" / "."), str(files / "UNet.pt"), "--gt-dir", str(gt)])
    assert all((gt / f"{n}.png").read_bytes() == b"course ground truth" for n in NAMES)


@pytest.mark.parametrize("flags, message", [
    (["--eta", "nan"], "argument --eta: 'nan' is not a finite number"),
    (["--eta", "-0.5"], "argument --eta: -0.5 is out of range"),
    (["--eta", "1.5"], "argument --eta: 1.5 is out of range: must be between 0 and 1"),
    (["--batch-size", "0"], "argument --batch-size: 0 is out of range"),
    (["--steps", "0"], "argument --steps: 0 is out of range"),
    (["--baseline", "0"], "argument --baseline: 0 is out of range")])
def test_bad_flags_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit) as exc:
        p2_ddim.parse_args(["noise", "out", "UNet.pt", *flags])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_unwritable_out_dir_is_found_before_sampling(files, tmp_path, cli_error, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(p2_ddim, "sample_faces", lambda *a, **k: pytest.fail("sampled before checking OUT_DIR"))
    with cli_error("is a file, not a folder"):
        p2_ddim.main([str(files / "noise"), str(tmp_path / "file" / "out"), str(files / "UNet.pt")])


@pytest.mark.parametrize("bad", [b"garbage", {"x": 1}, torch.zeros(1, 3, 32, 48), torch.zeros(1, 3, 64, 64)])
def test_bad_noise_file_is_named_and_nothing_is_written(files, tmp_path, bad, cli_error):
    noise = tmp_path / "noise"
    noise.mkdir()
    for name in NAMES:
        (noise / f"{name}.pt").write_bytes((files / "noise" / f"{name}.pt").read_bytes())
    if isinstance(bad, bytes):
        (noise / "02.pt").write_bytes(bad)
    else:
        torch.save(bad, noise / "02.pt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "00.png").write_bytes(b"earlier result")
    with cli_error("02.pt"):
        p2_ddim.main([str(noise), str(out), str(files / "UNet.pt"), "--steps", "2"])
    assert [p.name for p in out.iterdir()] == ["00.png"] and (out / "00.png").read_bytes() == b"earlier result"


def test_unfit_unet_is_named(files, tmp_path, cli_error):
    state = torch.load(files / "UNet.pt", weights_only=True)
    del state["out.2.bias"]
    torch.save(state, tmp_path / "UNet.pt")
    with cli_error(r"UNet.pt does not fit FaceUNet: missing key out.2.bias\n$"):
        p2_ddim.main([str(files / "noise"), str(tmp_path / "out"), str(tmp_path / "UNet.pt")])
    assert not (tmp_path / "out").exists()


def test_hw2_2_sh_passes_its_arguments(files, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    usage = subprocess.run(["bash", str(ROOT / "hw2_2.sh"), "a"], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
    noise = tmp_path / "noise"
    noise.mkdir()
    (noise / "07.pt").write_bytes((files / "noise" / "00.pt").read_bytes())
    run = subprocess.run(["bash", str(ROOT / "hw2_2.sh"), str(noise), str(tmp_path / "out"), str(files / "UNet.pt")],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["07.png"]


def test_steps_must_divide_1000(capsys):
    with pytest.raises(SystemExit):
        p2_ddim.parse_args(["noise", "out", "UNet.pt", "--steps", "30"])
    assert "must divide 1000" in capsys.readouterr().err


def test_skip_missing_says_what_is_missing(tmp_path, capsys):
    out = tmp_path / "out"
    assert p2_ddim.main([str(tmp_path / "noise"), str(out), str(tmp_path / "UNet.pt"), "--skip-missing"]) is None
    said = capsys.readouterr().out
    assert "skipped, missing" in said and "noise" in said and "UNet.pt" in said
    assert not out.exists()
    with pytest.raises(SystemExit):  # without the flag a missing input is an error
        p2_ddim.main([str(tmp_path / "noise"), str(out), str(tmp_path / "UNet.pt")])


def test_all_documented_flags_together(files, tmp_path):
    """--gt-dir, --eta-sweep, --interpolation and --compare-conventions in one run: the conventions figure
    compares the main samples (not the interpolation's) with the paper grid's."""
    gt, out = tmp_path / "gt", tmp_path / "out"
    p2_ddim.main([str(files / "noise"), str(gt), str(files / "UNet.pt"), "--steps", "2", "--convention", "paper"])
    p2_ddim.main([str(files / "noise"), str(out), str(files / "UNet.pt"), "--steps", "2", "--gt-dir", str(gt),
                  "--eta-sweep", "--interpolation", "--compare-conventions"])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}.png" for n in NAMES] + ["mse.json", "eta_sweep.png", "eta_sweep.json", "interpolation.png",
                                       "interpolation.json", "interpolation_stats.png", "conventions.png",
                                       "conventions.json"])
    # the ground truth is the paper grid's images, so both files hold the same per-image MSE
    assert json.loads((out / "conventions.json").read_text())["per_image"] == pytest.approx(
        json.loads((out / "mse.json").read_text())["per_image"])


def copy_noise(files, folder: Path, names=NAMES) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / f"{name}.pt").write_bytes((files / "noise" / f"{name}.pt").read_bytes())
    return folder


def test_rerun_replaces_out_dir_whole_and_a_failed_run_leaves_it(files, tmp_path, cli_error):
    noise, out = copy_noise(files, tmp_path / "noise"), tmp_path / "out"
    p2_ddim.main([str(noise), str(out), str(files / "UNet.pt"), "--steps", "2", "--eta-sweep"])
    (noise / "02.pt").unlink()
    (noise / "03.pt").unlink()
    p2_ddim.main([str(noise), str(out), str(files / "UNet.pt"), "--steps", "2"])
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png"]  # no eta_sweep.png, 02.png of the first run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    torch.save(torch.load(noise / "01.pt") * 1e30, noise / "01.pt")  # finite, but sampling overflows
    with cli_error(r"NN.png: sampling gave NaN or inf for 1 of 2 columns, first 01.pt"):
        p2_ddim.main([str(noise), str(out), str(files / "UNet.pt"), "--steps", "2"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noise", "out"]  # no staging folder left behind


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_noise_is_named_as_such(files, tmp_path, value, cli_error):
    noise = copy_noise(files, tmp_path / "noise")
    x = torch.load(noise / "02.pt")
    x[0, 1, 3, 4] = value
    torch.save(x, noise / "02.pt")
    with cli_error(r"02.pt: the noise holds NaN or inf \(1 values\)\n$"):
        p2_ddim.main([str(noise), str(tmp_path / "out"), str(files / "UNet.pt"), "--steps", "2"])
    assert not (tmp_path / "out").exists()


def test_non_finite_unet_weight_is_named(files, tmp_path, cli_error):
    state = torch.load(files / "UNet.pt", weights_only=True)
    state["mid1.attention.qkv.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "UNet.pt")
    with cli_error(r"UNet.pt: NaN or inf in tensor mid1.attention.qkv.weight\n$"):
        p2_ddim.main([str(files / "noise"), str(tmp_path / "out"), str(tmp_path / "UNet.pt"), "--steps", "2"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out, relation", [("noise", "is"), (".", "contains"), ("noise/out", "lies inside")])
def test_out_dir_apart_from_the_inputs(files, tmp_path, out, relation, cli_error):
    """OUT_DIR is replaced whole: one that is or holds an input would delete it."""
    noise = copy_noise(files, tmp_path / "noise")
    with cli_error(f"OUT_DIR .* {relation} the noise folder .*noise: it would be overwritten"):
        p2_ddim.main([str(noise), str(tmp_path / out), str(files / "UNet.pt"), "--steps", "2"])
    assert sorted(p.name for p in noise.iterdir()) == [f"{n}.pt" for n in NAMES]


def test_out_dir_holding_other_files_is_not_replaced(files, tmp_path, cli_error):
    """OUT_DIR is replaced whole: one that holds files P2 does not write (a folder named by mistake) is refused."""
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "todo.txt").write_text("keep me")
    with cli_error(r"OUT_DIR .*out: holds notes/todo.txt, which this program does not write"):
        p2_ddim.main([str(files / "noise"), str(out), str(files / "UNet.pt"), "--steps", "2"])
    assert (out / "notes" / "todo.txt").read_text() == "keep me"
