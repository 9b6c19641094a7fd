"""slerp / lerp between starting noises (P2 report)."""
import math

import pytest
import torch

from models.face_ddim import interpolated_noises
from models.interpolation import lerp, slerp


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 32, 32, generator=g), torch.randn(3, 32, 32, generator=g)


@pytest.mark.parametrize("f", [slerp, lerp])
def test_end_points(pair, f):
    x0, x1 = pair
    torch.testing.assert_close(f(x0, x1, 0.0), x0)
    torch.testing.assert_close(f(x0, x1, 1.0), x1)


def test_slerp_on_the_unit_circle():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    for alpha in (0.1, 0.5, 0.8):
        angle = alpha * math.pi / 2
        torch.testing.assert_close(slerp(e1, e2, alpha), torch.tensor([math.cos(angle), math.sin(angle)]))


def test_slerp_keeps_the_norm_and_lerp_shrinks_it(pair):
    x0, x1 = pair
    x1 = x1 * x0.norm() / x1.norm()  # equal norms
    for alpha in (0.1, 0.3, 0.5, 0.9):
        assert slerp(x0, x1, alpha).norm() == pytest.approx(x0.norm().item(), rel=1e-5)
    # two independent Gaussian noises are nearly orthogonal: the lerp midpoint has ~1/sqrt(2) of the norm
    assert lerp(x0, x1, 0.5).norm() / x0.norm() == pytest.approx(1 / math.sqrt(2), abs=0.03)


def test_nearly_parallel_inputs_stay_finite(pair):
    x0, _ = pair
    for x1 in (x0.clone(), x0 * (1 + 1e-7), x0 + 1e-6 * torch.randn_like(x0)):
        out = slerp(x0, x1, 0.5)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)


def test_slerp_keeps_dtype_and_rejects_degenerate_inputs(pair):
    x0, x1 = pair
    assert slerp(x0, x1, 0.5).dtype == torch.float32
    with pytest.raises(ValueError):
        slerp(x0, -x0, 0.5)
    with pytest.raises(ValueError):
        slerp(x0, torch.zeros_like(x0), 0.5)
    with pytest.raises(ValueError):
        slerp(x0, x1[:2], 0.5)


def test_interpolated_noises_rows(pair):
    x0, x1 = pair
    alphas = (0.0, 0.5, 1.0)
    rows = interpolated_noises(x0, x1, alphas)
    assert rows.shape == (2, 3, 3, 32, 32)
    torch.testing.assert_close(rows[0, 1], slerp(x0, x1, 0.5))
    torch.testing.assert_close(rows[1, 1], lerp(x0, x1, 0.5))
