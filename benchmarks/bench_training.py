"""Benchmark P1 training: steps per second with and without accelerate, and at 1 and N processes.

Rows, all on the same data, network and per-process batch, measured in one run:
  legacy loop      the training step as it was before accelerate (images gathered on the CPU and copied
                   each step, EMA one tensor at a time, `loss.item()` every step), no accelerate
  plain loop       today's step without accelerate: images on the device once, one fused foreach EMA,
                   the loss kept on the device (what the script does, minus the Accelerator)
  accelerate x1    `p1_ddpm_train.py` itself, one process (timed from its train_log.jsonl)
  accelerate xN    the same under `torchrun --nproc_per_node N` (N = the GPUs here, or --cpu-processes
                   on a machine without CUDA), scaling efficiency = images/s at N / (N x images/s at 1)
accelerate's overhead is `accelerate x1` against `plain loop`; the GPU-side fixes are `plain` against
`legacy`. Prints a table with cpu_capability() and writes benchmarks/results/training.json.
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import p1_ddpm_train
from models import p1_training
from models.context_unet import ContextUnet
from models.diffusion import alphas_cumprod, drop_condition, epsilon_loss, linear_betas, q_sample
from utils.cli import write_json
from utils.digits import DigitData
from utils.outputs import TRAIN_LOG_JSONL
from utils.runtime import autocast, cpu_capability

ROOT = Path(__file__).resolve().parents[1]



def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=ROOT / "hw2_data" / "digits", help="the digits folder")
    p.add_argument("--limit", type=int, default=2000, help="rows of each train.csv loaded")
    p.add_argument("--n-feat", type=int, default=None, help="UNet width (default 128 on CUDA, 16 on a CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="images per process (default 256 on CUDA, 32 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 300 on CUDA, 20 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 50 on CUDA, 5 on CPU)")
    p.add_argument("--cpu-processes", type=int, default=2, help="N of the multi-process row without CUDA")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per process on a machine without CUDA (the same in every row, so that N "
                        "processes use N times the cores of one)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "training.json", help="JSON results")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    for name, gpu, cpu in (("n_feat", 128, 16), ("batch_size", 256, 32), ("steps", 300, 20), ("warmup", 50, 5)):
        if getattr(args, name) is None:
            setattr(args, name, gpu if cuda else cpu)
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_loop(data: DigitData, args, device: torch.device, legacy: bool) -> float:
    """Steps per second of the training step, without accelerate (fp32 on a CPU, bf16 autocast on CUDA)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = ContextUnet(n_feat=args.n_feat).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    alpha_bar = alphas_cumprod(linear_betas(500)).float().to(device)
    weights, n = data.balanced_weights(), args.batch_size
    images = data.images if legacy else data.images.to(device)
    ema_params, params = list(ema.parameters()), list(net.parameters())
    amp = autocast(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    total = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            start = time.perf_counter()
        idx = torch.multinomial(weights, n, replacement=True, generator=gen)
        if legacy:
            x0 = (images[idx].float() / 127.5 - 1).to(device)
        else:
            x0 = images[idx.to(device)].float() / 127.5 - 1
        digit, dset = (c.to(device) for c in drop_condition((data.digits[idx], data.sets[idx]), (10, 2), 0.1, gen))
        t = torch.randint(0, 500, (n,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        with amp:
            if legacy:
                loss = torch.nn.functional.mse_loss(net(q_sample(x0, t, alpha_bar, noise), t, digit, dset).float(),
                                                    noise)
            else:
                loss = epsilon_loss(net, x0, t, alpha_bar, noise, (digit, dset))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            if legacy:
                for e, m in zip(ema.parameters(), net.parameters()):
                    e.lerp_(m, 1 - 0.999)
                loss.item()
            else:
                p1_training.ema_update(ema_params, params, 0.999)
                total = loss.detach() if total is None else total + loss.detach()
    sync(device)
    return args.steps / (time.perf_counter() - start)


def script_argv(args, out: Path) -> list[str]:
    return ["--data-root", str(args.data_root), "--out-dir", str(out), "--limit", str(args.limit),
            "--n-feat", str(args.n_feat), "--batch-size", str(args.batch_size),
            "--steps", str(args.warmup + args.steps), "--log-every", str(args.warmup), "--save-every", "1000000",
            "--dtype", "bf16" if torch.cuda.is_available() else "fp32",
            *([] if torch.cuda.is_available() else ["--threads", str(args.threads)])]


def steps_per_second(log: Path, warmup: int) -> float:
    """From train_log.jsonl: steps between the line of step `warmup` and the last, over the time between them."""
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    first = next(line for line in lines if line["step"] == warmup)
    return (lines[-1]["step"] - first["step"]) / (lines[-1]["time"] - first["time"])


def main(argv=None):
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    nproc = torch.cuda.device_count() if cuda else args.cpu_processes
    if not cuda:
        torch.set_num_threads(args.threads)
    print(f"cpu: {cpu_capability()}; device: {torch.cuda.get_device_name() if cuda else 'cpu'}; "
          f"n_feat {args.n_feat}, batch {args.batch_size} per process, {args.steps} timed steps")
    data = DigitData(args.data_root, limit=args.limit)
    rows = [{"setup": "legacy loop (no accelerate)", "processes": 1,
             "steps_per_s": time_loop(data, args, device, legacy=True)},
            {"setup": "plain loop (no accelerate)", "processes": 1,
             "steps_per_s": time_loop(data, args, device, legacy=False)}]
    with tempfile.TemporaryDirectory() as tmp:
        p1_ddpm_train.main(script_argv(args, Path(tmp) / "one"))
        rows.append({"setup": "accelerate, p1_ddpm_train.py", "processes": 1,
                     "steps_per_s": steps_per_second(Path(tmp) / "one" / TRAIN_LOG_JSONL, args.warmup)})
        if nproc > 1:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            if not cuda:
                env["OMP_NUM_THREADS"] = str(args.threads)
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                            str(nproc), str(ROOT / "p1_ddpm_train.py"), *script_argv(args, Path(tmp) / "many")],
                           check=True, env=env, cwd=ROOT)
            rows.append({"setup": "accelerate, p1_ddpm_train.py", "processes": nproc,
                         "steps_per_s": steps_per_second(Path(tmp) / "many" / TRAIN_LOG_JSONL, args.warmup)})
        else:
            print("one device: the multi-process row did not run")
    single = rows[2]["steps_per_s"]
    print(f"\n{'setup':32} {'processes':>9} {'steps/s':>8} {'images/s':>9} {'ms/step':>8}  vs")
    for r in rows:
        r["images_per_s"] = r["steps_per_s"] * args.batch_size * r["processes"]
        if r["processes"] > 1:
            r["scaling_efficiency"] = r["steps_per_s"] / single
            note = f"scaling efficiency {r['scaling_efficiency']:.2f} (images/s over {r['processes']} x accelerate x1)"
        elif r["setup"].startswith("accelerate"):
            note = f"accelerate overhead {rows[1]['steps_per_s'] / single - 1:+.1%} against the plain loop"
        elif r["setup"].startswith("plain"):
            note = f"{r['steps_per_s'] / rows[0]['steps_per_s']:.2f}x the legacy loop"
        else:
            note = ""
        print(f"{r['setup']:32} {r['processes']:9d} {r['steps_per_s']:8.2f} {r['images_per_s']:9.0f} "
              f"{1000 / r['steps_per_s']:8.1f}  {note}")
    write_json(args.out, {"cpu": cpu_capability(), "cuda": cuda, "torch": torch.__version__,
                          "config": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
