"""The numbers beside P2's figures: the pixel statistics against numpy, colorsys and PIL, the noise RMS
against the analytical values, and p2_ddim.py's eta_sweep.json / interpolation.json against its PNGs."""
import colorsys
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import p2_ddim
from models.face_ddim import ALPHAS, ETAS, eta_sweep_stats, interpolated_noises, interpolation_stats
from models.interpolation import lerp, rms, slerp
from standins import face_files
from utils.images import grid_tiles, luma_contrast, mean_abs_difference, mean_saturation

NAMES = ["00", "01", "02", "03"]


def test_noise_rms_of_lerp_and_slerp_between_independent_gaussians():
    """For independent standard Gaussian x0, x1 of the course's size, |x| / sqrt(n) -> 1 at the ends,
    sqrt(0.5^2 + 0.5^2) = 1/sqrt(2) at lerp's midpoint, and slerp keeps it at 1."""
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(1, 3, 256, 256, generator=g), torch.randn(1, 3, 256, 256, generator=g)
    assert rms(x0) == pytest.approx(1, abs=0.01) and rms(x1) == pytest.approx(1, abs=0.01)
    assert rms(lerp(x0, x1, 0.5)) == pytest.approx(1 / math.sqrt(2), abs=0.01)
    assert rms(slerp(x0, x1, 0.5)) == pytest.approx(1, abs=0.01)
    assert rms(torch.full((2, 5), -3.0)) == pytest.approx(3.0, rel=1e-12)


def test_mean_abs_difference_of_known_shifts():
    rng = np.random.default_rng(0)
    base = rng.integers(10, 200, (2, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(mean_abs_difference(base + 10, base), [10.0, 10.0])
    np.testing.assert_array_equal(mean_abs_difference(base - 10, base), [10.0, 10.0])  # absolute, no uint8 wrap
    red_only = base.copy()
    red_only[..., 0] += 30  # a third of the values move by 30
    np.testing.assert_allclose(mean_abs_difference(red_only, base), [10.0, 10.0], rtol=1e-12)


def test_eta_sweep_stats_of_hand_made_rows():
    """Rows shifted by 0, +10, -20 from row 0 (noise 0), and only noise 1's red channel by 0, 30, 60."""
    rng = np.random.default_rng(1)
    base = rng.integers(30, 200, (2, 4, 4, 3), dtype=np.uint8)  # (N, H, W, 3)
    tiles = np.stack([base.copy() for _ in range(3)])  # (E=3, N=2, H, W, 3)
    tiles[1, 0] += 10
    tiles[2, 0] -= 20
    tiles[1, 1, ..., 0] += 30
    tiles[2, 1, ..., 0] += 60
    stats = eta_sweep_stats(tiles, (0.0, 0.5, 1.0))
    assert stats["etas"] == [0.0, 0.5, 1.0] and stats["reference_eta"] == 0.0
    np.testing.assert_allclose(stats["mad_from_eta0"], [[0, 0], [10, 10], [20, 20]], rtol=1e-12)
    np.testing.assert_allclose(stats["mad_between_rows"], [[10, 10], [30, 10]], rtol=1e-12)
    np.testing.assert_allclose(stats["mean_from_eta0"], [0, 10, 20], rtol=1e-12)
    np.testing.assert_allclose(stats["mean_between_rows"], [10, 20], rtol=1e-12)

    # without eta 0 the first row is the reference; with 0 in the middle, that row is
    assert eta_sweep_stats(tiles, (0.5, 0.75, 1.0))["reference_eta"] == 0.5
    moved = eta_sweep_stats(tiles, (0.5, 0.0, 1.0))
    assert moved["reference_eta"] == 0.0
    np.testing.assert_allclose(moved["mad_from_eta0"], [[10, 10], [0, 0], [30, 10]], rtol=1e-12)
    with pytest.raises(ValueError, match="expected uint8 tiles"):
        eta_sweep_stats(tiles.astype(np.float32), (0.0, 0.5, 1.0))
    with pytest.raises(ValueError, match="expected uint8 tiles"):
        eta_sweep_stats(tiles, ETAS)


def test_luma_contrast_against_known_values_and_pil():
    half = np.zeros((1, 4, 4, 3), np.uint8)
    half[:, :2] = 255  # half white (luma 255), half black: std 127.5
    assert luma_contrast(half) == pytest.approx([127.5], rel=1e-12)
    assert luma_contrast(np.full((1, 4, 4, 3), 77, np.uint8)) == pytest.approx([0.0], abs=1e-9)
    image = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    y = 0.299 * image[..., 0].astype(float) + 0.587 * image[..., 1] + 0.114 * image[..., 2]
    assert luma_contrast(image) == pytest.approx(np.std(y), rel=1e-12)
    pil = np.asarray(Image.fromarray(image).convert("L"), dtype=float)  # PIL's 601 luma, rounded to integers
    assert luma_contrast(image) == pytest.approx(pil.std(), abs=0.3)


def test_mean_saturation_against_colorsys():
    red, gray, black = (np.broadcast_to(np.array(c, np.uint8), (4, 4, 3)) for c in ([255, 0, 0], [128] * 3, [0] * 3))
    np.testing.assert_array_equal(mean_saturation(np.stack([red, gray, black])), [1.0, 0.0, 0.0])
    image = np.random.default_rng(3).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    image[0, 0] = 0  # a black pixel: saturation 0, not 0/0
    expected = np.mean([colorsys.rgb_to_hsv(*(image[i, j] / 255))[1] for i in range(6) for j in range(5)])
    assert mean_saturation(image) == pytest.approx(expected, rel=1e-12)


def read_rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_p2_writes_the_figures_numbers(tmp_path):
    """eta_sweep.json and interpolation.json hold the statistics of the tiles read back from the PNGs it
    wrote (MAD computed here with numpy), and the noise RMS of the interpolated noise files."""
    files = face_files(tmp_path / "face")
    out = tmp_path / "out"
    p2_ddim.main([str(files / "noise"), str(out), str(files / "UNet.pt"), "--steps", "2", "--eta-sweep",
                  "--interpolation"])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}.png" for n in NAMES] + ["eta_sweep.png", "eta_sweep.json", "interpolation.png", "interpolation.json",
                                       "interpolation_stats.png"])

    sweep = json.loads((out / "eta_sweep.json").read_text())
    assert list(sweep) == ["etas", "noises", "pixel_scale", "reference_eta", "mad_from_eta0", "mad_between_rows",
                           "mean_from_eta0", "mean_between_rows", "perceptual"]
    assert sweep["etas"] == list(ETAS) and sweep["noises"] == NAMES and sweep["reference_eta"] == 0.0
    assert sweep["pixel_scale"] == "0-255" and sweep["perceptual"] is None
    tiles = grid_tiles(out / "eta_sweep.png", (5, 4, 32, 32, 3), [f"eta={e:g}" for e in ETAS], NAMES,
                       "DDIM 2 steps (ldm), eta sweep (seed 0)", scale=4).astype(np.float64)
    np.testing.assert_array_equal(tiles[0], np.stack([read_rgb(out / f"{n}.png") for n in NAMES]))
    from_0 = np.abs(tiles - tiles[0]).mean(axis=(2, 3, 4))  # (5, 4)
    between = np.abs(tiles[1:] - tiles[:-1]).mean(axis=(2, 3, 4))  # (4, 4)
    np.testing.assert_allclose(sweep["mad_from_eta0"], from_0, rtol=1e-12)
    np.testing.assert_allclose(sweep["mad_between_rows"], between, rtol=1e-12)
    np.testing.assert_allclose(sweep["mean_from_eta0"], from_0.mean(1), rtol=1e-12)
    np.testing.assert_allclose(sweep["mean_between_rows"], between.mean(1), rtol=1e-12)
    assert min(sweep["mean_from_eta0"][1:]) > 0  # eta moves the images

    stats = json.loads((out / "interpolation.json").read_text())
    assert list(stats) == ["alphas", "noise_rms", "noise_rms_ends", "contrast", "saturation"]
    assert stats["alphas"] == list(ALPHAS)
    assert all(list(stats[k]) == ["slerp", "linear"] and all(len(v) == 11 for v in stats[k].values())
               for k in ("noise_rms", "contrast", "saturation"))
    x0, x1 = (torch.load(files / "noise" / f"{n}.pt").double().numpy() for n in ("00", "01"))
    theta = np.arccos((x0 * x1).sum() / np.linalg.norm(x0) / np.linalg.norm(x1))
    for kind, mix in (("linear", lambda a: (1 - a) * x0 + a * x1),
                      ("slerp", lambda a: (np.sin((1 - a) * theta) * x0 + np.sin(a * theta) * x1) / np.sin(theta))):
        np.testing.assert_allclose(stats["noise_rms"][kind], [np.sqrt((mix(a) ** 2).mean()) for a in ALPHAS],
                                   rtol=1e-5)
    assert stats["noise_rms_ends"] == pytest.approx((np.sqrt((x0 ** 2).mean()) + np.sqrt((x1 ** 2).mean())) / 2)
    assert stats["noise_rms"]["linear"][5] < 0.8 < 0.95 < stats["noise_rms"]["slerp"][5]
    tiles = grid_tiles(out / "interpolation.png", (2, 11, 32, 32, 3), ["slerp", "lerp"], [f"{a:.1f}" for a in ALPHAS],
                       "x_T from 00 (alpha 0) to 01 (alpha 1), DDIM eta 0 (ldm)", scale=4)
    for i, kind in enumerate(("slerp", "linear")):
        np.testing.assert_allclose(stats["contrast"][kind], luma_contrast(tiles[i]), rtol=1e-12)
        np.testing.assert_allclose(stats["saturation"][kind], mean_saturation(tiles[i]), rtol=1e-12)
    assert len(set(stats["contrast"]["slerp"])) > 1  # one number per image, not one per row

    with Image.open(out / "interpolation_stats.png") as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1] > 300  # three panels side by side


def test_interpolation_stats_checks_its_inputs():
    x, y = torch.randn(2, 3, 32, 32)
    noises = interpolated_noises(x, y, ALPHAS[:3])
    with pytest.raises(ValueError, match=r"expected noises and uint8 tiles of \(2, 3\)"):
        interpolation_stats(x, x, noises, np.zeros((2, 4, 32, 32, 3), np.uint8), ALPHAS[:3])
