"""Smoke tests of p2_ddim.py and hw2_2.sh on 64x64 noises with a small random UNet state_dict."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.utils import save_image

import p2_ddim
from models.face_unet import FaceUNet
from utils.face_io import minmax_uint8

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["00", "01", "02", "03"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """noise/NN.pt (1, 3, 64, 64) and UNet.pt: a plain state_dict of a random width-32 FaceUNet."""
    root = tmp_path_factory.mktemp("p2")
    torch.manual_seed(0)
    torch.save(FaceUNet(channels=32).state_dict(), root / "UNet.pt")
    (root / "noise").mkdir()
    g = torch.Generator().manual_seed(0)
    for name in NAMES:
        torch.save(torch.randn(1, 3, 64, 64, generator=g), root / "noise" / f"{name}.pt")
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
    out = tmp_path / "out"
    p2_ddim.main([str(files / "noise"), str(out), str(files / "UNet.pt"), "--steps", "2"])
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.png" for n in NAMES]
    images = np.stack([read(out / f"{n}.png") for n in NAMES])
    assert images.shape == (4, 64, 64, 3)
    assert (images.reshape(4, -1).min(1) == 0).all() and (images.reshape(4, -1).max(1) == 255).all()

    gt = tmp_path / "gt"
    gt.mkdir()
    for n in NAMES:
        Image.fromarray(images[NAMES.index(n)]).save(gt / f"{n}.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(gt / "01.png")
    out2 = tmp_path / "out2"
    p2_ddim.main([str(files / "noise"), str(out2), str(files / "UNet.pt"), "--steps", "2", "--gt-dir", str(gt)])
    report = json.loads((out2 / "mse.json").read_text())
    expected_01 = (images[1].astype(np.float64) ** 2).mean()
    assert report["per_image"] == pytest.approx({"00": 0.0, "01": expected_01, "02": 0.0, "03": 0.0})
    assert report["mean"] == pytest.approx(expected_01 / 4)


def test_report_figures(files, tmp_path):
    out = tmp_path / "out"
    p2_ddim.main([str(files / "noise"), str(out), str(files / "UNet.pt"), "--steps", "2",
                  "--eta-sweep", "--interpolation", "--seed", "1"])
    sweep, interp = Image.open(out / "eta_sweep.png"), Image.open(out / "interpolation.png")
    assert sweep.width > 4 * 128 and sweep.height > 5 * 128  # 5 rows x 4 columns of 128-pixel tiles
    assert interp.width > 11 * 128 and 2 * 128 < interp.height < 3 * 128
    first = read(out / "eta_sweep.png")
    p2_ddim.main([str(files / "noise"), str(out), str(files / "UNet.pt"), "--steps", "2", "--eta-sweep",
                  "--seed", "1"])
    np.testing.assert_array_equal(read(out / "eta_sweep.png"), first)  # reproducible


@pytest.mark.parametrize("bad", [b"garbage", {"x": 1}, torch.zeros(1, 3, 64, 48), torch.zeros(1, 3, 32, 32)])
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
    with cli_error(r"UNet.pt does not fit FaceUNet:\n  missing keys \(1\): out.2.bias"):
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
