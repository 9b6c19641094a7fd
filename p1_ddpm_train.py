"""Train the conditional DDPM of P1 on MNIST-M + SVHN (digit and data-set labels, classifier-free guidance).

Resumable: `--resume` continues from OUT_DIR/last.pt with the same optimizer, EMA, schedule and
random state. OUT_DIR/model.pt holds the EMA weights and config: all `p1_ddpm_sample.py` needs.
"""
import argparse
import copy
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.context_unet import build_from_config, load_p1_model
from models.diffusion import alphas_cumprod, linear_betas, q_sample
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.digits import DATASETS, DigitData
from utils.errors import cli
from utils.runtime import add_dtype_flag, pick_device, resolve_dtype, seed_everything


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path("hw2_data/digits"),
                   help="folder holding mnistm/ and svhn/ in the course layout (data/*.png + train.csv)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/p1"), help="where last.pt and model.pt go")
    p.add_argument("--steps", type=int, default=10000,
                   help="total optimisation steps (the defaults are the shipped checkpoint's recipe: about 6 minutes "
                        "on one H100; on a CPU see the README's smaller recipe)")
    p.add_argument("--batch-size", type=int, default=256, help="images per optimisation step")
    p.add_argument("--lr", type=float, default=4e-4, help="peak learning rate (AdamW)")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps, then cosine decay to 10%%")
    p.add_argument("--n-feat", type=int, default=128, help="UNet width (ContextUnet n_feat)")
    p.add_argument("--num-timesteps", type=int, default=500, help="diffusion steps T (linear betas)")
    p.add_argument("--beta-start", type=float, default=1e-4, help="first beta of the linear schedule")
    p.add_argument("--beta-end", type=float, default=2e-2, help="last beta of the linear schedule")
    p.add_argument("--p-uncond", type=float, default=0.1,
                   help="probability of training with the null condition (for classifier-free guidance)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the sampling weights")
    p.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=True,
                   help="sample every (data set, digit) pair equally often")
    p.add_argument("--limit", type=int, default=None, help="use only the first N rows of each train.csv")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (and at the end)")
    p.add_argument("--keep-every", type=int, default=0,
                   help="also keep the sampling weights of every N-th step as OUT_DIR/model_STEP.pt (0 = never), "
                        "to measure accuracy against training time")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt if it exists")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from the weights of a P1 sampling checkpoint (e.g. checkpoints/p1_ddpm.pt; its "
                        "config wins) with a fresh optimizer and schedule; ignored when --resume finds last.pt")
    p.add_argument("--seed", type=int, default=0, help="seed of the one generator behind all training randomness")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    add_dtype_flag(p, auto="bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX: about 2x faster there), "
                           "fp32 otherwise", bf16_alias=True)
    return p.parse_args(argv)


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, m in zip(ema.parameters(), model.parameters()):
        e.lerp_(m, 1 - decay)


def train(args) -> Path:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    gen = seed_everything(args.seed)
    config = {"model": {"in_channels": 3, "n_feat": args.n_feat, "num_digits": 10, "num_datasets": len(DATASETS)},
              "schedule": {"num_steps": args.num_timesteps, "beta_start": args.beta_start, "beta_end": args.beta_end},
              "datasets": list(DATASETS), "image_size": 28, "p_uncond": args.p_uncond}
    last = args.out_dir / "last.pt"
    state = None
    if args.resume and last.exists():
        state = load_checkpoint(last, required=("config", "model", "ema", "optimizer", "step", "generator"),
                                what="training checkpoint")
        config = state["config"]
        print(f"resuming from {last} at step {state['step']}")
    init = None
    if state is None and args.init_from is not None:
        init_net, config = load_p1_model(args.init_from)
        init = init_net.state_dict()
        print(f"starting from the weights of {args.init_from}")

    data = DigitData(args.data_root, limit=args.limit)
    weights = data.balanced_weights() if args.balanced else torch.ones(len(data), dtype=torch.double)
    net = build_from_config(config).to(device)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    alpha_bar = alphas_cumprod(linear_betas(**config["schedule"])).float().to(device)
    step = 0
    if state is not None:
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step = state["step"]
    elif init is not None:
        net.load_state_dict(init)
        ema.load_state_dict(init)
    dtype = resolve_dtype(args.dtype, device, cpu="bf16")
    print(f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters, {len(data)} images, "
          f"device {device}, {str(dtype).removeprefix('torch.')}, steps {step}->{args.steps}")

    def save_sampling(path):  # what p1_ddpm_sample.py needs: config and EMA weights
        save_checkpoint({"config": config, "ema": ema.state_dict(), "step": step}, path)

    def save():
        save_checkpoint({"config": config, "model": net.state_dict(), "ema": ema.state_dict(),
                         "optimizer": opt.state_dict(), "step": step, "generator": gen.get_state()}, last)
        save_sampling(args.out_dir / "model.pt")

    amp = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    T, null_digit, null_set = config["schedule"]["num_steps"], net.null_digit, net.null_dataset
    bar = tqdm(total=args.steps, initial=step, desc="train", dynamic_ncols=True)
    running, start = None, time.time()
    while step < args.steps:
        # all randomness comes from `gen` (saved in the checkpoint) so a resumed run continues exactly
        idx = torch.multinomial(weights, args.batch_size, replacement=True, generator=gen)
        x0, digit, dset = data.images[idx].float() / 127.5 - 1, data.digits[idx], data.sets[idx]
        drop = torch.rand(args.batch_size, generator=gen) < config["p_uncond"]
        digit, dset = digit.masked_fill(drop, null_digit), dset.masked_fill(drop, null_set)
        t = torch.randint(0, T, (args.batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        x0, digit, dset, t, noise = (v.to(device) for v in (x0, digit, dset, t, noise))
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_factor(step, args.warmup, args.steps)
        with amp:
            loss = F.mse_loss(net(q_sample(x0, t, alpha_bar, noise), t, digit, dset).float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        ema_update(ema, net, min(args.ema_decay, (1 + step) / (10 + step)))
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if step % args.save_every == 0 or step == args.steps:
            save()
        if args.keep_every and step % args.keep_every == 0:
            save_sampling(args.out_dir / f"model_{step:06d}.pt")
    bar.close()
    if state is None or step != state["step"]:
        save()
    print(f"done: {step} steps in {time.time() - start:.0f} s; sampling checkpoint {args.out_dir / 'model.pt'}")
    return args.out_dir / "model.pt"


@cli('p1_ddpm_train.py')
def main(argv=None):
    args = parse_args(argv)
    return train(args)


if __name__ == "__main__":
    main()
