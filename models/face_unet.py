"""The course's pretrained face UNet of P2 (DDPM-style, 256x256, 113.7 M parameters).

The module names and shapes are those of the course's `UNet.pt`, a plain state_dict, so it loads
with `strict=True`: `time`, `down1..down18`, `mid1, mid2`, `up1..up23`, `out`
(the layout of rosinality's denoising-diffusion-pytorch, with which the weights were trained).
Widths 128 * (1, 1, 2, 2, 4, 4) over six resolutions, two residual blocks per resolution on the way
down and three on the way up, self-attention at 1/16 of the input size, five downsamplings:
an input's height and width must be multiples of 32.
"""
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from utils.checkpoint import load_checkpoint, load_state_dict_strict
from utils.errors import UserError


class TimeEmbedding(nn.Module):
    """Sinusoidal features [sin(t w_i), cos(t w_i)] of a float timestep, w_i = 10000^(-2i / dim)."""

    def __init__(self, dim: int):
        super().__init__()
        inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000) / dim))  # (dim / 2,)
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.to(self.inv_freq.dtype)[:, None] * self.inv_freq[None]  # (B, dim / 2)
        return torch.cat([args.sin(), args.cos()], dim=1)  # (B, dim)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, time_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, c_out))
        self.norm2 = nn.GroupNorm(32, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.silu(self.norm1(x)))
        out = out + self.time(temb)[:, :, None, None]  # (B, C_out, 1, 1) broadcast over H, W
        out = self.conv2(self.dropout(F.silu(self.norm2(out))))
        return out + (x if self.skip is None else self.skip(x))


class SelfAttention(nn.Module):
    """Single-head self-attention over all H*W positions, plus the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(32, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).chunk(3, dim=1)  # each (B, C, HW)
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # (B, HW_query, HW_key)
        out = (v @ weights.transpose(1, 2)).view(b, c, h, w)  # out[:, :, i] = sum_j weights[i, j] v[:, :, j]
        return self.out(out) + x


class ResAttnBlock(nn.Module):
    """A residual block, followed by self-attention where enabled (`resblocks`, `attention`)."""

    def __init__(self, c_in: int, c_out: int, time_dim: int, dropout: float, attention: bool):
        super().__init__()
        self.resblocks = ResBlock(c_in, c_out, time_dim, dropout)
        self.attention = SelfAttention(c_out) if attention else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = self.resblocks(x, temb)
        return x if self.attention is None else self.attention(x)


def downsample(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, stride=2, padding=1))


def upsample(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1))


class FaceUNet(nn.Module):
    """eps = net(x (B, 3, H, W), t (B,)); H and W multiples of 32, t the timestep value (0..999)."""

    def __init__(self, channels: int = 128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks: int = 2,
                 attention_levels=(4,), dropout: float = 0.1):
        super().__init__()
        time_dim = 4 * channels
        self.time = nn.Sequential(TimeEmbedding(channels), nn.Linear(channels, time_dim), nn.SiLU(),
                                  nn.Linear(time_dim, time_dim))
        widths = [channels * m for m in channel_mult]

        # down1 (stem conv), then per level num_res_blocks blocks and a downsampling (not after the last)
        down = [nn.Conv2d(3, channels, 3, padding=1)]
        skip_widths, c = [channels], channels
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                down.append(ResAttnBlock(c, width, time_dim, dropout, level in attention_levels))
                c = width
                skip_widths.append(c)
            if level + 1 < len(widths):
                down.append(downsample(c))
                skip_widths.append(c)
        mid = [ResAttnBlock(c, c, time_dim, dropout, True), ResAttnBlock(c, c, time_dim, dropout, False)]

        # per level from the bottom, num_res_blocks + 1 blocks each taking one skip, then an upsampling
        up = []
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks + 1):
                up.append(ResAttnBlock(c + skip_widths.pop(), width, time_dim, dropout, level in attention_levels))
                c = width
            if level > 0:
                up.append(upsample(c))

        # the course's names: down1.., mid1.., up1..
        for prefix, modules in (("down", down), ("mid", mid), ("up", up)):
            for i, module in enumerate(modules, start=1):
                self.add_module(f"{prefix}{i}", module)
        self.down_names = [f"down{i}" for i in range(1, len(down) + 1)]
        self.mid_names = [f"mid{i}" for i in range(1, len(mid) + 1)]
        self.up_names = [f"up{i}" for i in range(1, len(up) + 1)]
        self.out = nn.Sequential(nn.GroupNorm(32, c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1))
        self.size_multiple = 2 ** (len(widths) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.size_multiple or x.shape[-2] % self.size_multiple:
            raise ValueError(f"FaceUNet needs H and W multiples of {self.size_multiple}, got {tuple(x.shape[-2:])}")
        temb = self.time(t)  # (B, 4C)
        skips = []
        for name in self.down_names:
            module = getattr(self, name)
            x = module(x, temb) if isinstance(module, ResAttnBlock) else module(x)
            skips.append(x)
        for name in self.mid_names:
            x = getattr(self, name)(x, temb)
        for name in self.up_names:
            module = getattr(self, name)
            if isinstance(module, ResAttnBlock):
                x = module(torch.cat((x, skips.pop()), dim=1), temb)  # skips last-in first-out
            else:
                x = module(x)
        return self.out(x)


def load_face_unet(path: Path) -> FaceUNet:
    """Build a FaceUNet and load the course's `UNet.pt` (a plain state_dict) into it, strictly.

    The width is read from `down1.weight` (128 for the course's weights), so smaller nets of the
    same layout load too. Raises UserError naming the file for an unreadable or unfit file.
    """
    state = load_checkpoint(path, what="UNet state_dict")
    if any(not isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a plain state_dict (values that are not tensors)")
    stem = state.get("down1.weight")
    channels = stem.shape[0] if isinstance(stem, torch.Tensor) and stem.ndim == 4 else 128
    if channels % 32:
        raise UserError(f"{path}: down1.weight has {channels} output channels, not a multiple of 32")
    model = FaceUNet(channels=channels)
    load_state_dict_strict(model, state, str(path))
    return model.eval()
