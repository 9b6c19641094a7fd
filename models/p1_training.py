"""P1's training loop: the simplified DDPM objective, or guidance / step distillation from a teacher, with
AdamW, a warm-up + cosine learning rate, gradient clipping and EMA sampling weights; on one device or data
parallel under Hugging Face `accelerate` (utils/training.py, docs/training.md).

`p1_ddpm_train.py` is the command line over it: it checks the flags and decides what a run starts from (a
fresh network, a resumed last.pt, a checkpoint's weights, a teacher), then calls `train`.
"""
import copy
import math
import time
from pathlib import Path
from typing import NamedTuple

import torch
from accelerate import Accelerator

from models.diffusion import (
    alphas_cumprod,
    drop_condition,
    epsilon_loss,
    guidance_distillation_loss,
    linear_betas,
    step_distillation_loss,
    trailing_timesteps,
)
from models.p1_networks import build_from_config
from utils.checkpoint import save_checkpoint
from utils.digits import DigitData
from utils.outputs import TRAIN_LOG_JSONL
from utils.training import generator_states, process_generator, run_steps


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from 1 to 0.1 at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def ema_update(ema_params: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * param, for all tensors in one fused foreach call."""
    torch._foreach_lerp_(ema_params, params, 1 - decay)


class Batch(NamedTuple):
    """One process's draw for one step (CPU tensors): image indices, conditions after dropout, timesteps, noise."""
    idx: torch.Tensor                  # (B,) rows of the data set
    cond: tuple[torch.Tensor, ...]     # (digit (B,), data set (B,)), null classes where dropped
    t: torch.Tensor                    # (B,) int64 in 0..T-1
    noise: torch.Tensor                # (B, 3, 28, 28)
    w: torch.Tensor | None = None      # (B,) guidance weights (guidance distillation only)


def draw_batch(gen: torch.Generator, weights: torch.Tensor, labels: tuple[torch.Tensor, ...], null: tuple[int, ...],
               n: int, num_timesteps: int, p_uncond: float, w_range: tuple[float, float] | None = None) -> Batch:
    """All of a step's randomness, from `gen` alone and in a fixed order (so a resumed run continues exactly)."""
    idx = torch.multinomial(weights, n, replacement=True, generator=gen)
    cond = drop_condition(tuple(label[idx] for label in labels), null, p_uncond, gen)
    t = torch.randint(0, num_timesteps, (n,), generator=gen)
    noise = torch.randn((n, 3, 28, 28), generator=gen)
    w = None if w_range is None else w_range[0] + (w_range[1] - w_range[0]) * torch.rand(n, generator=gen)
    return Batch(idx, cond, t, noise, w)


def train(accelerator: Accelerator, dtype: torch.dtype, config: dict, data: DigitData, out_dir: Path, *,
          steps: int, batch_size: int, lr: float, warmup: int, ema_decay: float, balanced: bool, seed: int,
          save_every: int, keep_every: int, log_every: int, min_snr_gamma: float | None = None,
          state: dict | None = None, init: dict | None = None, teacher: torch.nn.Module | None = None) -> Path:
    """Train the network `config` describes on `data` up to step `steps`; returns OUT_DIR/model.pt.

    Start: `state` (a last.pt: weights, EMA, optimizer, step, generators; the run continues exactly), else `init`
    (weights; a guidance-distilled student's w embedding, absent from its teacher, keeps its initialisation), else
    a fresh network drawn from torch's global generator (the caller seeds it, the same in every process).
    With a `teacher`, `config["distillation"]` says what the student learns: the teacher's guided eps for w in
    its `w_range` (Meng et al. 2023, stage one), or with `steps` K two teacher DDIM steps in one (Salimans & Ho
    2022). Each process draws `batch_size` images a step from its own generator (`seed`, `process_generator`).
    Writes OUT_DIR/last.pt and model.pt (config and EMA weights) every `save_every` steps and at the end,
    model_STEP.pt every `keep_every` steps (0 = never), a train_log.jsonl line every `log_every` steps.
    `dtype` is the precision the accelerator autocasts to (named in the first line printed). `min_snr_gamma`
    weights the loss of a network trained from data (not a distillation) by Min-SNR-gamma (`epsilon_loss`).
    """
    main_process, device = accelerator.is_main_process, accelerator.device
    distill = config.get("distillation")
    if teacher is not None:
        teacher = teacher.to(device).requires_grad_(False)
    config = {**config, "training": {"num_processes": accelerator.num_processes, "batch_per_process": batch_size,
                                     "global_batch": batch_size * accelerator.num_processes,
                                     **({"min_snr_gamma": min_snr_gamma} if min_snr_gamma else {})}}
    weights = data.balanced_weights() if balanced else torch.ones(len(data), dtype=torch.double)
    images, labels = data.images.to(device), (data.digits, data.sets)  # the images on the device once
    net = build_from_config(config)
    step = 0
    if state is not None:
        net.load_state_dict(state["model"])
        step = state["step"]
    elif init is not None:  # a distilled student's guidance embedding is not in its teacher: it starts at zero
        missing = net.load_state_dict(init, strict=teacher is None).missing_keys
        assert all(k.startswith("w_emb.") for k in missing), missing
    net.to(device)  # NCHW: channels_last did not pay on a CPU (docs/results/p1_training.md, "On AVX2 kernels")
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    if state is not None:
        ema.load_state_dict(state["ema"])
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
    saved_gens = None  # the checkpoint's generator states, one per process (an older one saved one "generator")
    if state is not None:
        saved_gens = state.get("generators", [state["generator"]] if "generator" in state else None)
    gen = process_generator(accelerator, seed, saved_gens, step)
    null = (net.null_digit, net.null_dataset)
    ema_params, params = list(ema.parameters()), list(net.parameters())
    model, opt = accelerator.prepare(net, opt)  # DDP under a launcher (averages gradients), autocast in `dtype`
    alpha_bar = alphas_cumprod(linear_betas(**config["schedule"])).float().to(device)
    if main_process:
        print(f"{sum(p.numel() for p in params) / 1e6:.2f} M parameters, {len(data)} images, "
              f"{str(dtype).removeprefix('torch.')}, batch {batch_size} x {accelerator.num_processes} "
              f"process(es), steps {step}->{steps}")

    def save_sampling(path, step):  # what p1_ddpm_sample.py needs: config and EMA weights
        save_checkpoint({"config": config, "ema": ema.state_dict(), "step": step}, path)

    def save(step):
        gens = generator_states(gen)  # collective: every process takes part
        if main_process:
            save_checkpoint({"config": config, "model": net.state_dict(), "ema": ema.state_dict(),
                             "optimizer": opt.state_dict(), "step": step, "generators": gens}, out_dir / "last.pt")
            save_sampling(out_dir / "model.pt", step)

    T = config["schedule"]["num_steps"]
    grid = mid = None
    if distill and "steps" in distill:  # step distillation: the student's step i is the teacher's 2i and 2i + 1
        K = distill["steps"]
        grid = torch.tensor(trailing_timesteps(T, K) + [-1], device=device)  # -1: the end (alpha_bar = 1)
        mid = torch.tensor(trailing_timesteps(T, 2 * K)[1::2], device=device)

    def step_lr(i):  # the learning rate of step i (0-based)
        return lr * lr_factor(i, warmup, steps)

    def train_step(i):
        batch = draw_batch(gen, weights, labels, null, batch_size, len(mid) if mid is not None else T,
                           0.0 if distill else config["p_uncond"], distill["w_range"] if distill else None)
        x0 = images[batch.idx.to(device)].float() / 127.5 - 1  # (B, 3, 28, 28) in [-1, 1]
        cond = tuple(c.to(device) for c in batch.cond)
        t, noise = batch.t.to(device), batch.noise.to(device)
        for group in opt.param_groups:
            group["lr"] = step_lr(i)
        if teacher is None:
            loss = epsilon_loss(model, x0, t, alpha_bar, noise, cond, min_snr_gamma)
        elif grid is not None:  # t indexes the student's grid
            with accelerator.autocast():
                loss = step_distillation_loss(model, teacher, x0, grid[t], mid[t], grid[t + 1], alpha_bar, noise,
                                              cond, batch.w.to(device))
        else:
            with accelerator.autocast():  # the teacher in the student's precision
                loss = guidance_distillation_loss(model, teacher, x0, t, alpha_bar, noise, cond,
                                                  tuple(torch.full_like(c, n) for c, n in zip(cond, null)),
                                                  batch.w.to(device))
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_update(ema_params, params, min(ema_decay, (2 + i) / (11 + i)))  # the warm-up decay at step i + 1
        if main_process and keep_every and (i + 1) % keep_every == 0:
            save_sampling(out_dir / f"model_{i + 1:06d}.pt", i + 1)
        return loss

    start_step, start = step, time.time()
    step = run_steps(accelerator, train_step, save, step=step, total=steps, lr=step_lr, log_every=log_every,
                     save_every=save_every, log_path=out_dir / TRAIN_LOG_JSONL)
    if main_process:
        print(f"done: {step - start_step} steps in {time.time() - start:.0f} s; "
              f"sampling checkpoint {out_dir / 'model.pt'}")
    return out_dir / "model.pt"
