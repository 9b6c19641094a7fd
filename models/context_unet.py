"""A conditional UNet of the ContextUnet family for 28x28 digits (P1).

As TeaPearce's ContextUnet (the course's usual starting point): two residual down blocks,
a 7x7 bottleneck vector, two up blocks whose features are modulated by the condition
(`h * scale(c) + shift(t)`). Changes: a sinusoidal time embedding of the integer timestep,
two conditions (digit and data set) as embeddings, and the null condition of classifier-free
guidance as an explicit learned class (digit 10, data set `num_datasets`), not a sign trick.
"""
import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [cos, sin] of (B,) timesteps -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class GuidanceEmbedding(nn.Module):
    """w (B,) -> (B, dim): the guidance weight as an input of a guidance-distilled network (Meng et al. 2023).

    Sinusoidal features of 100 w (so w in 0..5 spreads like the timesteps), then an MLP whose last layer
    starts at zero: a student built from its teacher's weights starts as the teacher's conditional network.
    """

    def __init__(self, n_feat: int, dim: int):
        super().__init__()
        self.n_feat = n_feat
        self.mlp = nn.Sequential(nn.Linear(n_feat, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(100 * w, self.n_feat))


class ResidualConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, groups: int = 8):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.GELU())
        self.conv2 = nn.Sequential(nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.GELU())
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        return (self.skip(x) + self.conv2(self.conv1(x))) / math.sqrt(2)


class Down(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.block = nn.Sequential(ResidualConvBlock(c_in, c_out), nn.MaxPool2d(2))

    def forward(self, x):
        return self.block(x)


class Up(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
        self.block = ResidualConvBlock(c_out, c_out)

    def forward(self, x, skip):
        return self.block(self.up(torch.cat([x, skip], dim=1)))


class ContextUnet(nn.Module):
    """eps = net(x (B, 3, 28, 28), t (B,), digit (B,), dataset (B,)).

    `digit == 10` and `dataset == num_datasets` are the null (unconditional) classes. With
    `guidance_embed` the network also takes the guidance weight, `net(x, t, digit, dataset, w)` with
    w (B,): a guidance-distilled student (`p1_ddpm_train.py --distill-guidance`), added to the condition.
    """

    def __init__(self, in_channels: int = 3, n_feat: int = 64, num_digits: int = 10, num_datasets: int = 2,
                 guidance_embed: bool = False):
        super().__init__()
        self.null_digit, self.null_dataset = num_digits, num_datasets
        f, emb = n_feat, 2 * n_feat
        self.init_conv = ResidualConvBlock(in_channels, f)
        self.down1, self.down2 = Down(f, f), Down(f, 2 * f)
        self.to_vec = nn.Sequential(nn.AvgPool2d(7), nn.GELU())
        self.time_mlp = nn.Sequential(nn.Linear(f, emb), nn.GELU(), nn.Linear(emb, emb))
        self.digit_emb = nn.Embedding(num_digits + 1, emb)
        self.dataset_emb = nn.Embedding(num_datasets + 1, emb)
        self.w_emb = GuidanceEmbedding(f, emb) if guidance_embed else None
        # per-level modulation: scale from the condition, shift from time (as ContextUnet)
        self.cond1, self.time1 = nn.Linear(emb, 2 * f), nn.Linear(emb, 2 * f)
        self.cond2, self.time2 = nn.Linear(emb, f), nn.Linear(emb, f)
        self.up0 = nn.Sequential(nn.ConvTranspose2d(2 * f, 2 * f, 7, 7), nn.GroupNorm(8, 2 * f), nn.GELU())
        self.up1, self.up2 = Up(4 * f, f), Up(2 * f, f)
        self.out = nn.Sequential(nn.Conv2d(2 * f, f, 3, padding=1), nn.GroupNorm(8, f), nn.GELU(),
                                 nn.Conv2d(f, in_channels, 3, padding=1))
        self.n_feat = n_feat

    def encode(self, x, t) -> tuple[torch.Tensor, ...]:
        """Everything the condition does not reach (the down path, the bottleneck, the time embedding).

        Classifier-free guidance runs it once for the conditional and the null pass: about half the FLOPs.
        """
        x = self.init_conv(x)                       # (B, f, 28, 28)
        d1 = self.down1(x)                          # (B, f, 14, 14)
        d2 = self.down2(d1)                         # (B, 2f, 7, 7)
        h = self.up0(self.to_vec(d2))               # (B, 2f, 7, 7)
        temb = self.time_mlp(timestep_embedding(t, self.n_feat))
        return x, d1, d2, h, temb

    def decode(self, features: tuple[torch.Tensor, ...], digit, dataset, w=None) -> torch.Tensor:
        """eps from `encode`'s features and the condition (and w, for a guidance-distilled network): the up path."""
        x, d1, d2, h, temb = features
        cemb = condition_embedding(self, digit, dataset, w)
        h = h * (1 + self.cond1(cemb))[..., None, None] + self.time1(temb)[..., None, None]
        h = self.up1(h, d2)                         # (B, f, 14, 14)
        h = h * (1 + self.cond2(cemb))[..., None, None] + self.time2(temb)[..., None, None]
        h = self.up2(h, d1)                         # (B, f, 28, 28)
        return self.out(torch.cat([h, x], dim=1))   # (B, 3, 28, 28)

    def forward(self, x, t, digit, dataset, w=None):
        return self.decode(self.encode(x, t), digit, dataset, w)


def condition_embedding(net: nn.Module, digit, dataset, w=None) -> torch.Tensor:
    """digit_emb + dataset_emb (+ w_emb(w)) of a P1 network: (B, emb). A guidance-distilled network needs w,
    any other refuses it."""
    emb = net.digit_emb(digit) + net.dataset_emb(dataset)
    if (w is None) != (net.w_emb is None):
        raise ValueError("a guidance-distilled network needs w, any other takes none" if w is None else
                         "w given to a network without a guidance embedding (not guidance-distilled)")
    return emb if w is None else emb + net.w_emb(w)

