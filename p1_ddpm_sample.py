"""Sample the graded P1 images: OUT_DIR/{mnistm,svhn}/{digit}_{k:03d}.png, 50 per digit per data set.

All starting noise (and the noise of every ancestral step) comes from one seeded CPU generator,
so the same seed and flags give the same bytes on the same machine. `--grid` adds one 10x10
grid per data set (rows digits 0-9, columns the first 10 samples); `--reverse-process` adds,
per data set, the first "0" at six points of its reverse process.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from models.context_unet import load_p1_model
from models.diffusion import SAMPLERS, ClassifierFreeGuidance, alphas_cumprod, linear_betas, spaced_timesteps
from utils.errors import UserError, cli
from utils.images import labelled_grid, save_png, to_uint8
from utils.runtime import Autocast, add_dtype_flag, pick_device, resolve_dtype, seed_everything

DEFAULT_CKPT = Path(__file__).resolve().parent / "checkpoints" / "p1_ddpm.pt"
REVERSE_POINTS_500 = (500, 320, 200, 120, 40, 1)  # the report's points for a 500-step model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir", type=Path, help="output folder; mnistm/ and svhn/ are created inside")
    p.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT, help="P1 checkpoint (carries its own config)")
    p.add_argument("--guidance", type=float, default=4.0,
                   help="classifier-free guidance weight w: eps = (1+w) eps_cond - w eps_uncond (0 = none)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="ddim", help="ancestral DDPM or DDIM")
    p.add_argument("--steps", type=int, default=10,
                   help="number of denoising steps (evenly spaced; ddpm with steps = T is the classic sampler)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 deterministic, 1 DDPM-like)")
    p.add_argument("--per-digit", type=int, default=50, help="images per digit per data set")
    p.add_argument("--batch-size", type=int, default=64,
                   help="images per network call (doubled by guidance); small batches stay in the CPU cache")
    add_dtype_flag(p, auto="bf16 on CUDA and on CPUs with native bf16, fp32 otherwise", bf16_alias=True)
    p.add_argument("--seed", type=int, default=0, help="seed of the one CPU generator behind all sampling noise")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--grid", action="store_true", help="also write grid_{mnistm,svhn}.png in OUT_DIR")
    p.add_argument("--reverse-process", action="store_true",
                   help="also write reverse_process_{mnistm,svhn}.png in OUT_DIR (the first '0' at six timesteps)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def reverse_points(num_train_steps: int) -> list[int]:
    """The report's 1-indexed timesteps (t = 500 is pure noise, t = 1 the last step) scaled to T."""
    return sorted({max(1, round(t * num_train_steps / 500)) for t in REVERSE_POINTS_500}, reverse=True)


def sample(net, config, args, device):
    """Generate every graded image; returns uint8 images (S, 10, per_digit, 28, 28, 3) and the snapshots."""
    datasets, n = config["datasets"], args.per_digit
    T = config["schedule"]["num_steps"]
    alpha_bar = alphas_cumprod(linear_betas(**config["schedule"]))
    timesteps = spaced_timesteps(T, args.steps)
    # order: data set, digit, k  (so image 0 of each data set is its first "0")
    digit = torch.arange(10).repeat_interleave(n).repeat(len(datasets))
    dset = torch.arange(len(datasets)).repeat_interleave(10 * n)
    gen = seed_everything(args.seed)
    x_T = torch.randn(len(digit), 3, 28, 28, generator=gen)
    model = ClassifierFreeGuidance(
        Autocast(net, resolve_dtype(args.dtype, device, cpu="bf16")), (digit.to(device), dset.to(device)),
        (torch.full_like(digit, net.null_digit).to(device), torch.full_like(dset, net.null_dataset).to(device)),
        w=args.guidance, chunk=args.batch_size)

    snapshots = {}  # 1-indexed t -> images of the first "0" of each data set, (S, 3, 28, 28)
    wanted = reverse_points(T) if args.reverse_process else []
    firsts = torch.arange(len(datasets)) * 10 * n

    def callback(i, t, x, eps):
        snapshots[t + 1] = x[firsts].cpu().clone()

    kwargs = {"eta": args.eta} if args.sampler == "ddim" else {}
    x0 = SAMPLERS[args.sampler](model, x_T.to(device), alpha_bar, timesteps=timesteps, generator=gen,
                                callback=callback if wanted else None, progress=not args.quiet, **kwargs)
    snapshots[0] = x0[firsts].cpu()
    images = to_uint8(x0).reshape(len(datasets), 10, n, 28, 28, 3)
    # each wanted point -> the nearest visited timestep (all of them with the full ancestral sampler)
    chosen = {w: min(snapshots, key=lambda s: (abs(s - w), s)) for w in wanted}
    return images, {w: snapshots[s] for w, s in chosen.items()}, chosen


def write_outputs(images, snaps, chosen, config, args):
    for s, name in enumerate(config["datasets"]):
        folder = args.out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for d in range(10):
            for k in range(args.per_digit):
                save_png(images[s, d, k], folder / f"{d}_{k + 1:03d}.png")
        if args.grid:
            cols = min(10, args.per_digit)
            labelled_grid(images[s, :, :cols], row_labels=list(range(10)),
                          title=f"{name}: rows digits 0-9, columns samples 1-{cols} (w={args.guidance})"
                          ).save(args.out_dir / f"grid_{name}.png")
        if snaps:
            tiles = np.stack([to_uint8(snaps[w][s:s + 1])[0] for w in sorted(snaps, reverse=True)])
            labels = [f"t={chosen[w]}" for w in sorted(snaps, reverse=True)]
            labelled_grid(tiles[None], col_labels=labels, scale=4,
                          title=f"{name}: reverse process of the first '0'").save(
                args.out_dir / f"reverse_process_{name}.png")


@cli('p1_ddpm_sample.py')
def main(argv=None):
    args = parse_args(argv)
    try:
        net, config = load_p1_model(args.ckpt)
    except UserError as e:
        raise UserError(f"{e}\n(train one with p1_ddpm_train.py, or pass --ckpt PATH)") from None
    if not 1 <= args.steps <= config["schedule"]["num_steps"]:
        raise UserError(f"--steps must be in 1..{config['schedule']['num_steps']}")
    device = pick_device(args.device)
    images, snaps, chosen = sample(net.to(device), config, args, device)
    write_outputs(images, snaps, chosen, config, args)
    total = images.shape[0] * images.shape[1] * images.shape[2]
    print(f"wrote {total} images to {args.out_dir}")
    return args.out_dir


if __name__ == "__main__":
    main()
