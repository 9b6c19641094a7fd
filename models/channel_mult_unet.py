"""A UNet with channel multipliers for 28x28 digits (P1): fewer FLOPs where the 28x28 convolutions cost most.

ContextUnet-128 spends most of its FLOPs in 128-channel 3x3 convolutions at 28x28. This network
is narrow where the image is large and wide where it is small: `n_feat * mult` channels at
28x28, 14x14 and 7x7 (default 64 / 128 / 256), so a 3x3 convolution costs the same at every level,
with self-attention at 7x7, where the digit's identity is decided (ADM-style residual blocks,
Dhariwal & Nichol 2021, at a smaller scale).

The same interface as `ContextUnet`: `net(x, t, digit, dataset)` (and `w` with `guidance_embed`),
null classes `digit == 10` and `dataset == num_datasets`, and `encode(x, t)` / `decode(features,
digit, dataset)`: the condition reaches only the up path, so classifier-free guidance runs the down
path once for both passes. With `cond_down` (the CPU training recipe's) the condition reaches the
down path too, and the network has no such split.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from models.context_unet import GuidanceEmbedding, condition_embedding, timestep_embedding


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the embedding scales and shifts the second norm (AdaGN)."""

    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as its skip path
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[..., None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a (B, C, H, W) map, residual."""

    def __init__(self, channels: int, head_dim: int = 64):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm, self.qkv, self.proj = _norm(channels), nn.Conv2d(channels, 3 * channels, 1), nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C / heads)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class ChannelMultUnet(nn.Module):
    """eps = net(x (B, 3, 28, 28), t (B,), digit (B,), dataset (B,)).

    Down path: a block at each level, halving the size between levels, then a middle block with
    attention at 7x7. Up path: at each level a block on the concatenation of the current map and the
    down path's map of that level, attention at 7x7, nearest upsampling between levels. The blocks
    take the time embedding plus, in the up path, the condition's; with `cond_down` the condition
    reaches the down path too, as in ADM (faster to learn each digit's shape, but guidance then runs
    the whole network for both passes).
    """

    def __init__(self, in_channels: int = 3, n_feat: int = 64, channel_mult: tuple[int, ...] = (1, 2, 4),
                 num_digits: int = 10, num_datasets: int = 2, guidance_embed: bool = False, patch: int = 1,
                 image_size: int = 28, cond_down: bool = False):
        super().__init__()
        levels, size = len(channel_mult), image_size // patch
        if patch < 1 or image_size % patch or levels < 1 or size % 2 ** (levels - 1):
            raise ValueError(f"patch {patch} and channel_mult {channel_mult}: the {image_size}x{image_size} image "
                             f"split into {patch}x{patch} patches must halve evenly {levels - 1} time(s)")
        self.null_digit, self.null_dataset = num_digits, num_datasets
        self.n_feat, self.channel_mult, self.patch = n_feat, tuple(channel_mult), patch
        self.cond_down = cond_down
        ch = [n_feat * m for m in channel_mult]
        emb = 4 * n_feat
        self.time_mlp = nn.Sequential(nn.Linear(n_feat, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.digit_emb = nn.Embedding(num_digits + 1, emb)
        self.dataset_emb = nn.Embedding(num_datasets + 1, emb)
        self.w_emb = GuidanceEmbedding(n_feat, emb) if guidance_embed else None
        self.conv_in = nn.Conv2d(in_channels * patch ** 2, ch[0], 3, padding=1)
        self.down = nn.ModuleList([ResBlock(c_in, c, emb) for c_in, c in zip([ch[0]] + ch[:-1], ch)])
        self.mid, self.mid_attn = ResBlock(ch[-1], ch[-1], emb), Attention(ch[-1])
        c_up = [ch[-1]] + ch[::-1][:-1]  # what arrives at each up level, deepest first
        self.up = nn.ModuleList([ResBlock(c_prev + c, c, emb) for c_prev, c in zip(c_up, ch[::-1])])
        self.up_attn = Attention(ch[-1])
        self.out = nn.Sequential(_norm(ch[0]), nn.SiLU(), nn.Conv2d(ch[0], in_channels * patch ** 2, 3, padding=1))

    def encode(self, x, t) -> tuple[torch.Tensor, ...]:
        """The time embedding, each level's map of the down path and the middle: what the condition does not
        reach, shared by the two passes of classifier-free guidance (not with cond_down, where it reaches both)."""
        if self.cond_down:
            raise ValueError("cond_down: the condition reaches the down path, so it has no condition-free encode")
        temb = self.time_mlp(timestep_embedding(t, self.n_feat))
        return (temb, *self._down(x, temb))

    def decode(self, features: tuple[torch.Tensor, ...], digit, dataset, w=None) -> torch.Tensor:
        """eps from `encode`'s features and the condition (and w, if guidance-distilled): the up path."""
        temb, *maps = features
        return self._up(maps, temb + condition_embedding(self, digit, dataset, w))

    def forward(self, x, t, digit, dataset, w=None):
        if not self.cond_down:
            return self.decode(self.encode(x, t), digit, dataset, w)
        emb = self.time_mlp(timestep_embedding(t, self.n_feat)) + condition_embedding(self, digit, dataset, w)
        return self._up(self._down(x, emb), emb)

    def _down(self, x, emb) -> list[torch.Tensor]:
        """[middle, level 0, level 1, ...]: the middle's map and each level's map of the down path."""
        h, skips = self.conv_in(F.pixel_unshuffle(x, self.patch)), []
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.avg_pool2d(h, 2), emb)
            skips.append(h)                          # (B, ch[i], 28 / (patch 2^i), 28 / (patch 2^i))
        return [self.mid_attn(self.mid(h, emb)), *skips]  # the middle: (B, ch[-1], 7, 7) at the default levels

    def _up(self, maps: list[torch.Tensor], emb) -> torch.Tensor:
        """eps from `_down`'s maps: at each level, deepest first, a block on the current map and that level's."""
        h, *skips = maps
        for i, block in enumerate(self.up):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skips[-1 - i]], dim=1), emb)
            if i == 0:
                h = self.up_attn(h)
        return F.pixel_shuffle(self.out(h), self.patch)
