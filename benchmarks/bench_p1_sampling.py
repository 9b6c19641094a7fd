"""P1 sampling cost: the project's sampler against the classic recipe, in the same run.

Classic recipe (TeaPearce's ContextUnet as the course's students use it): 128 features, 400
ancestral DDPM steps, guidance by doubling the batch, fp32. Ours: the shipped checkpoint's network
and `p1_ddpm_sample.py`'s defaults, in fp32 and under bf16 autocast (the default where the CPU
has native bf16). Both are timed on the same batch of images for a few steps;
the time of the 1,000 graded images is projected from the measured time per step (`--full`
also times our whole 1,000-image run end to end). Prints a table, writes JSON.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import p1_ddpm_sample  # noqa: E402
from models.context_unet import ContextUnet, load_p1_model  # noqa: E402
from models.diffusion import ClassifierFreeGuidance  # noqa: E402
from utils.runtime import Autocast, native_bf16  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", type=Path, default=ROOT / "checkpoints" / "p1_ddpm.pt")
    p.add_argument("--batch", type=int, default=500, help="images per timed network call")
    p.add_argument("--timed-steps", type=int, default=3, help="denoising steps timed per configuration")
    p.add_argument("--full", action="store_true", help="also time our full 1,000-image run end to end")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "p1_sampling.json")
    return p.parse_args(argv)


def time_per_step(net, batch: int, steps: int, chunk: int, bf16: bool = False) -> float:
    """Seconds for one guided denoising step of `batch` images (median of `steps`, after a warm-up)."""
    x = torch.randn(batch, 3, 28, 28)
    digit, dset = torch.arange(batch) % 10, torch.arange(batch) % 2
    net = Autocast(net, torch.bfloat16 if bf16 else torch.float32)
    model = ClassifierFreeGuidance(net, (digit, dset), (torch.full_like(digit, 10), torch.full_like(dset, 2)),
                                   w=2.0, chunk=chunk)
    t = torch.full((batch,), 100)
    times = []
    with torch.no_grad():
        model(x, t)
        for _ in range(steps):
            start = time.perf_counter()
            model(x, t)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    args = parse_args(argv)
    net, config = load_p1_model(args.ckpt)
    defaults = p1_ddpm_sample.parse_args(["unused"])
    rows = []
    configs = [("classic: ContextUnet 128, 400 DDPM steps", ContextUnet(n_feat=128).eval(), 400, False),
               ("ours (shipped ckpt, DDIM), fp32", net, defaults.steps, False)]
    if native_bf16():
        configs.append(("ours (shipped ckpt, DDIM), bf16", net, defaults.steps, True))
    for name, model, steps, bf16 in configs:
        per_step = time_per_step(model, args.batch, args.timed_steps, defaults.batch_size, bf16)
        rows.append({"config": name, "n_feat": model.n_feat, "steps": steps, "bf16": bf16,
                     "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                     "s_per_step_per_1000": per_step * 1000 / args.batch,
                     "projected_s_1000_images": per_step * 1000 / args.batch * steps})
    ratio = rows[0]["projected_s_1000_images"] / rows[-1]["projected_s_1000_images"]
    result = {"threads": torch.get_num_threads(), "batch": args.batch, "guidance": defaults.guidance,
              "rows": rows, "speedup_vs_classic": ratio}
    if args.full:
        start = time.perf_counter()
        p1_ddpm_sample.main([str(ROOT / "outputs" / "bench_p1"), "--ckpt", str(args.ckpt), "--quiet"])
        result["measured_full_s_1000_images"] = time.perf_counter() - start
    print(f"{'configuration':45s} {'n_feat':>6s} {'steps':>5s} {'params':>7s} {'s/step/1000':>11s} {'1000 images':>12s}")
    for r in rows:
        print(f"{r['config']:45s} {r['n_feat']:6d} {r['steps']:5d} {r['params_M']:6.2f}M "
              f"{r['s_per_step_per_1000']:11.2f} {r['projected_s_1000_images']:11.0f}s")
    print(f"speed-up of ours (as sampled by default) over the classic recipe: {ratio:.1f}x  ({torch.get_num_threads()} threads)")
    if "measured_full_s_1000_images" in result:
        print(f"measured: our full 1,000-image run took {result['measured_full_s_1000_images']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
