"""Seconds a P1 training step takes here, by memory layout and torch.compile, side by side in one run.

Times forward + backward + AdamW of a recipe's network (default `--recipe cpu`) at the recipe's batch
size with its loss (Min-SNR where the recipe has it), on random images and labels: NCHW (what
`p1_ddpm_train.py` uses) against channels_last, eager against `torch.compile` of the network. Each variant
runs --warmup untimed steps (compilation included, reported apart), then --steps timed ones; the median
is taken. The unit (`bench_p1_sampling.py`'s, from --unit-forwards forwards) is timed first, so each row
also says what the recipe's steps cost here in units: whether `p1_ddpm_train.py --recipe cpu` fits its 60
units on this machine (the training's EMA, data and checkpoints not counted). Prints the CPU capability
and threads, a table with each variant's speed as a ratio to the first (eager, NCHW), and writes JSON.

    python benchmarks/bench_p1_train_step.py               # the CPU recipe, fp32
    python benchmarks/bench_p1_train_step.py --bf16        # bf16 autocast (where the CPU has it natively)
"""
import argparse
import statistics
import time
from pathlib import Path

import torch

import p1_ddpm_train
from benchmarks.bench_p1_sampling import time_unit
from benchmarks.classic_context_unet import ClassicContextUnet
from models.diffusion import alphas_cumprod, epsilon_loss, linear_betas
from models.p1_networks import build_from_config
from utils.cli import positive_int, write_json
from utils.runtime import cpu_capability

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = (("eager, NCHW", False, False), ("eager, channels_last", True, False),
            ("compiled, NCHW", False, True), ("compiled, channels_last", True, True))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=tuple(p1_ddpm_train.RECIPES), default="cpu",
                   help="whose network, batch size and loss (default cpu)")
    p.add_argument("--steps", type=positive_int, default=30, help="timed steps per variant (default 30)")
    p.add_argument("--warmup", type=positive_int, default=10,
                   help="untimed steps per variant first, torch.compile's compilation among them (default 10)")
    p.add_argument("--bf16", action="store_true", help="autocast the network to bf16 (default fp32)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="leave out the torch.compile variants (they take a minute or more to compile)")
    p.add_argument("--unit-forwards", type=positive_int, default=500,
                   help="classic forwards timed for the unit (default 500 of its 2,000, about 11 s on 2 cores)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "p1_train_step.json",
                   help="the JSON written")
    return p.parse_args(argv)


def time_variant(args, recipe, channels_last: bool, compiled: bool) -> dict:
    """Median seconds a step over --steps timed steps, and the seconds of the --warmup untimed ones."""
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = build_from_config({"model": p1_ddpm_train.model_config(recipe)}).to(memory_format=layout)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr)
    forward = torch.compile(net) if compiled else net
    alpha_bar = alphas_cumprod(linear_betas(recipe.num_timesteps, recipe.beta_start, recipe.beta_end)).float()
    b = recipe.batch_size
    x0 = torch.rand(b, 3, 28, 28).mul(2).sub(1).contiguous(memory_format=layout)
    cond = (torch.randint(0, 11, (b,)), torch.randint(0, 3, (b,)))
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        t = torch.randint(0, recipe.num_timesteps, (b,))
        with torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
            loss = epsilon_loss(forward, x0, t, alpha_bar, torch.randn_like(x0), cond, recipe.min_snr_gamma or None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return {"seconds_per_step": statistics.median(times[args.warmup:]), "warmup_s": sum(times[:args.warmup])}


def main(argv=None):
    args = parse_args(argv)
    recipe = p1_ddpm_train.parse_args(["--recipe", args.recipe])
    print(f"{cpu_capability()}, torch {torch.__version__}, recipe {args.recipe}, batch {recipe.batch_size}, "
          f"{'bf16' if args.bf16 else 'fp32'}", flush=True)
    torch.manual_seed(0)
    with torch.inference_mode():
        unit_s = time_unit(ClassicContextUnet().eval(), args.unit_forwards)
    print(f"  unit: {unit_s:.1f} s", flush=True)
    rows = []
    for name, channels_last, compiled in VARIANTS:
        if compiled and not args.compile:
            continue
        rows.append({"variant": name, "channels_last": channels_last, "compiled": compiled,
                     **time_variant(args, recipe, channels_last, compiled)})
        print(f"  {name}: {rows[-1]['seconds_per_step'] * 1000:.0f} ms a step", flush=True)
    reference = rows[0]["seconds_per_step"]
    units_col = f"units/{recipe.steps:,} steps"
    print(f"\n{'variant':24s} {'ms/step':>8s} {'speed':>6s} {units_col:>20s} {'warm-up s':>10s}")
    for r in rows:
        r["speed_vs_first"] = reference / r["seconds_per_step"]
        r["units_for_recipe_steps"] = recipe.steps * r["seconds_per_step"] / unit_s
        print(f"{r['variant']:24s} {r['seconds_per_step'] * 1000:8.0f} {r['speed_vs_first']:5.2f}x "
              f"{r['units_for_recipe_steps']:20.1f} {r['warmup_s']:10.1f}")
    result = {"cpu": cpu_capability(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "recipe": args.recipe, "batch_size": recipe.batch_size, "recipe_steps": recipe.steps,
              "precision": "bf16" if args.bf16 else "fp32", "unit_s": unit_s, "unit_forwards": args.unit_forwards,
              "steps": args.steps, "warmup": args.warmup, "rows": rows}
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
