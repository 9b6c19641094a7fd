"""Interpolation between two starting noises x_T (the P2 report's slerp / lerp study).

Each tensor is treated as one vector (all its elements), as in the DDIM paper's interpolation
experiment (sec. 5.3, which uses slerp between two x_T).
"""
import torch

# Above this cosine the angle is too small for sin(theta) in the denominator: use lerp, which
# then differs from slerp by O(theta^2) (the usual threshold of slerp implementations).
PARALLEL_COS = 0.9995


def lerp(x0: torch.Tensor, x1: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) x0 + alpha x1."""
    return (1.0 - alpha) * x0 + alpha * x1


def slerp(x0: torch.Tensor, x1: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985):
    sin((1 - alpha) theta) / sin(theta) x0 + sin(alpha theta) / sin(theta) x1, theta = angle(x0, x1).

    For x0, x1 of equal norm the norm stays constant along the path, unlike lerp, whose midpoint
    of two independent Gaussian noises has about 1/sqrt(2) of their norm. Computed in float64,
    returned in x0's dtype; nearly parallel inputs fall back to lerp (finite, no 0/0).
    """
    if x0.shape != x1.shape:
        raise ValueError(f"slerp needs tensors of one shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    a, b = x0.double(), x1.double()
    norms = a.norm() * b.norm()
    if norms == 0:
        raise ValueError("slerp is undefined for a zero vector (no angle)")
    cos = (a.flatten() @ b.flatten() / norms).clamp(-1.0, 1.0).item()
    if cos > PARALLEL_COS:
        return lerp(a, b, alpha).to(x0.dtype)
    if cos < -PARALLEL_COS:
        raise ValueError("slerp is undefined between opposite vectors (no unique great circle)")
    theta = torch.tensor(cos, dtype=torch.float64).acos()
    out = (torch.sin((1.0 - alpha) * theta) * a + torch.sin(alpha * theta) * b) / torch.sin(theta)
    return out.to(x0.dtype)


def rms(x: torch.Tensor) -> float:
    """Root mean square ||x|| / sqrt(numel), in float64: about 1 for standard Gaussian noise."""
    return (x.double().norm() / x.numel() ** 0.5).item()
