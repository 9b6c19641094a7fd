"""TeaPearce's ContextUnet as published (Conditional_Diffusion_MNIST, `script.py`): the yardstick of
`bench_p1_sampling.py`, never trained here.

BatchNorm residual blocks (a residual only in `init_conv`), two blocks per up level, one-hot class
embedding masked by the sign trick, scalar time t / T embedded by an MLP. With 128 features it costs
about 2.75 GFLOP per 28x28 image forward (`classic_gflop_per_image`).
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


class ResidualConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, is_res: bool = False):
        super().__init__()
        self.same_channels, self.is_res = c_in == c_out, is_res
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.GELU())
        self.conv2 = nn.Sequential(nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.GELU())

    def forward(self, x):
        x1 = self.conv1(x)
        x2 = self.conv2(x1)
        if not self.is_res:
            return x2
        return ((x if self.same_channels else x1) + x2) / 1.414


class UnetDown(nn.Sequential):
    def __init__(self, c_in, c_out):
        super().__init__(ResidualConvBlock(c_in, c_out), nn.MaxPool2d(2))


class UnetUp(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.model = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 2, 2),
                                   ResidualConvBlock(c_out, c_out), ResidualConvBlock(c_out, c_out))

    def forward(self, x, skip):
        return self.model(torch.cat((x, skip), 1))


class EmbedFC(nn.Sequential):
    def __init__(self, input_dim, emb_dim):
        super().__init__(nn.Linear(input_dim, emb_dim), nn.GELU(), nn.Linear(emb_dim, emb_dim))


class ClassicContextUnet(nn.Module):
    """eps = net(x (B, 3, 28, 28), c (B,) int, t (B,) float in [0, 1], context_mask (B,) 1 = drop)."""

    def __init__(self, in_channels: int = 3, n_feat: int = 128, n_classes: int = 10):
        super().__init__()
        self.n_feat, self.n_classes = n_feat, n_classes
        self.init_conv = ResidualConvBlock(in_channels, n_feat, is_res=True)
        self.down1, self.down2 = UnetDown(n_feat, n_feat), UnetDown(n_feat, 2 * n_feat)
        self.to_vec = nn.Sequential(nn.AvgPool2d(7), nn.GELU())
        self.timeembed1, self.timeembed2 = EmbedFC(1, 2 * n_feat), EmbedFC(1, n_feat)
        self.contextembed1, self.contextembed2 = EmbedFC(n_classes, 2 * n_feat), EmbedFC(n_classes, n_feat)
        self.up0 = nn.Sequential(nn.ConvTranspose2d(2 * n_feat, 2 * n_feat, 7, 7), nn.GroupNorm(8, 2 * n_feat),
                                 nn.ReLU())
        self.up1, self.up2 = UnetUp(4 * n_feat, n_feat), UnetUp(2 * n_feat, n_feat)
        self.out = nn.Sequential(nn.Conv2d(2 * n_feat, n_feat, 3, 1, 1), nn.GroupNorm(8, n_feat), nn.ReLU(),
                                 nn.Conv2d(n_feat, in_channels, 3, 1, 1))

    def forward(self, x, c, t, context_mask):
        x = self.init_conv(x)                                    # (B, f, 28, 28)
        down1 = self.down1(x)                                    # (B, f, 14, 14)
        down2 = self.down2(down1)                                # (B, 2f, 7, 7)
        hiddenvec = self.to_vec(down2)                           # (B, 2f, 1, 1)
        c = F.one_hot(c, num_classes=self.n_classes).float()
        c = c * (-1 * (1 - context_mask[:, None].float()))        # the published sign trick
        f, t = self.n_feat, t.float().view(-1, 1)
        cemb1, temb1 = self.contextembed1(c).view(-1, 2 * f, 1, 1), self.timeembed1(t).view(-1, 2 * f, 1, 1)
        cemb2, temb2 = self.contextembed2(c).view(-1, f, 1, 1), self.timeembed2(t).view(-1, f, 1, 1)
        up1 = self.up0(hiddenvec)                                # (B, 2f, 7, 7)
        up2 = self.up1(cemb1 * up1 + temb1, down2)               # (B, f, 14, 14)
        up3 = self.up2(cemb2 * up2 + temb2, down1)               # (B, f, 28, 28)
        return self.out(torch.cat((up3, x), 1))


def gflop(fn, *args) -> float:
    """GFLOP of `fn(*args)` as torch's FlopCounterMode counts them (2 per multiply-add of convolutions and matmuls)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 1e9


def classic_gflop_per_image(net: ClassicContextUnet) -> float:
    """GFLOP of one image forward of the classic network (2.75 with 128 features)."""
    return gflop(net, torch.zeros(1, 3, 28, 28), torch.zeros(1, dtype=torch.int64), torch.zeros(1), torch.zeros(1))
