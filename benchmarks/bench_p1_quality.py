"""P1 sample quality against sampler, step count, guidance weight and guidance interval, to choose defaults.

For each setting (the product of the lists given): `models.p1_sampling.sample` makes `--per-digit` images
per digit per data set and `p1_ddpm_eval.score` scores them in memory (MNIST-M with the course's
classifier, SVHN with the project's judge; a PNG round trip is lossless, so the numbers are those
`p1_ddpm_eval.py` gives for the written files). Cost is given in GFLOP per image and in units of
`bench_p1_sampling.py`: units by FLOPs (GFLOP over the unit's 2 x 2.75) times the measured units per
FLOP unit of the default's fp32 run, read from its JSON when present. Several checkpoints
(`--ckpt A B ...`) give accuracy against training time. Prints a table, writes JSON.
"""
import argparse
import itertools
import json
import os
import time
from pathlib import Path

import torch

from benchmarks.bench_p1_sampling import UNIT_FORWARDS, gflop_per_image
from benchmarks.classic_context_unet import ClassicContextUnet, classic_gflop_per_image
from models.p1_networks import load_p1_model
from models.p1_sampling import DEFAULTS, Settings, checkpoint_defaults, sample
from p1_ddpm_eval import load_judge, score
from utils.cli import write_json
from utils.runtime import cpu_capability, resolve_dtype

ROOT = Path(__file__).resolve().parents[1]



def interval(text: str) -> tuple[int, int] | None:
    """'all' (guide every step) or 'LO:HI' (guide where LO <= t <= HI)."""
    if text == "all":
        return None
    lo, hi = text.split(":")
    return int(lo), int(hi)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", type=Path, nargs="+", default=[ROOT / "checkpoints" / "p1_ddpm.pt"],
                   help="P1 checkpoints to compare")
    p.add_argument("--sampler", nargs="+", default=None,
                   help="samplers (see p1_ddpm_sample.py) (default: each checkpoint's, as hw2_1.sh samples it)")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="step counts (default: each checkpoint's)")
    p.add_argument("--spacing", nargs="+", default=None,
                   help="timestep grids (leading, trailing) (default: each checkpoint's)")
    p.add_argument("--guidance", type=float, nargs="+", default=[DEFAULTS.guidance], help="guidance weights w")
    p.add_argument("--interval", type=interval, nargs="+", default=[DEFAULTS.guidance_interval],
                   help="guidance intervals: 'all' or LO:HI in 0-indexed timesteps")
    p.add_argument("--per-digit", type=int, default=10, help="images per digit per data set (50 = the graded 1,000)")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="sampling seeds (one row per seed)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="precision of the network")
    p.add_argument("--mnistm-classifier", type=Path, default=Path(os.environ.get("HW2_SHARED", ROOT.parent / "shared")) / "grader" / "Classifier.pth",
                   help="the course's MNIST-M classifier (default: in $HW2_SHARED or ../shared)")
    p.add_argument("--svhn-classifier", type=Path, default=ROOT / "checkpoints" / "svhn_classifier.pt",
                   help="the project's SVHN judge")
    p.add_argument("--units-json", type=Path, default=ROOT / "benchmarks" / "results" / "p1_sampling.json",
                   help="bench_p1_sampling.py's JSON, for the cost of one forward in units")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "p1_quality.json",
                   help="where to write the JSON")
    return p.parse_args(argv)


def _label(ckpt: Path) -> str:
    """The checkpoint in a table row: its folder and name (runs/p1/model_001500.pt -> p1/model_001500.pt)."""
    return f"{ckpt.parent.name}/{ckpt.name}"


def main(argv=None):
    args = parse_args(argv)
    judges = {"mnistm": load_judge("mnistm", args.mnistm_classifier),
              "svhn": load_judge("svhn", args.svhn_classifier)}
    units_json = json.loads(args.units_json.read_text()) if args.units_json.is_file() else {}
    ratio = units_json.get("units_per_flop_unit_fp32")
    unit_gflop = UNIT_FORWARDS / 1000 * classic_gflop_per_image(ClassicContextUnet(n_feat=128))
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    rows = []
    for ckpt in args.ckpt:
        net, config = load_p1_model(ckpt)
        train_step = torch.load(ckpt, map_location="cpu", weights_only=True).get("step")
        default = checkpoint_defaults(config)
        for sampler, steps, spacing, w, iv, seed in itertools.product(
                args.sampler or [default.sampler], args.steps or [default.steps], args.spacing or [default.spacing],
                args.guidance, args.interval, args.seed):
            settings = Settings(sampler, steps, spacing, w, iv)
            start = time.perf_counter()
            images = sample(net, config, settings, per_digit=args.per_digit, seed=seed, dtype=dtype)
            seconds = time.perf_counter() - start
            scores = {}
            for s, name in enumerate(config["datasets"]):
                x = torch.from_numpy(images[s]).reshape(-1, 28, 28, 3).permute(0, 3, 1, 2)
                scores[name] = score(judges[name], x, torch.arange(10).repeat_interleave(args.per_digit))["accuracy"]
            gflops = gflop_per_image(net, config, settings)
            rows.append({"ckpt": str(ckpt), "train_step": train_step, "sampler": sampler, "steps": steps,
                         "spacing": spacing, "guidance": w, "interval": iv, "seed": seed, "gflop_per_image": gflops,
                         "flop_units": gflops / unit_gflop,
                         "units": None if ratio is None else gflops / unit_gflop * ratio,
                         "mnistm": scores["mnistm"], "svhn": scores["svhn"],
                         "mean": (scores["mnistm"] + scores["svhn"]) / 2,
                         "seconds_per_1000": seconds * 1000 / (20 * args.per_digit)})
            r = rows[-1]
            print(f"{_label(ckpt)} {sampler:9s} {steps:3d} {spacing:8s} {w:4.1f} {iv!s:12s} seed {seed} {gflops:5.1f} GFLOP "
                  f"units={r['units'] if ratio is None else round(r['units'], 2)!s:5s} "
                  f"MNIST-M {r['mnistm']:.3f} SVHN* {r['svhn']:.3f}  {r['seconds_per_1000']:.0f} s/1000", flush=True)
    print(f"\n{cpu_capability()}, {args.dtype}, {20 * args.per_digit} images per row")
    width = max(len(_label(c)) for c in args.ckpt)
    print(f"{'checkpoint':{width}s} {'sampler':9s} {'steps':>5s} {'spacing':>8s} {'w':>4s} {'interval':>12s} {'seed':>4s} {'GFLOP':>5s} {'units':>5s} "
          f"{'MNIST-M':>8s} {'SVHN*':>6s} {'mean':>6s} {'s/1000':>7s}")
    for r in rows:
        units = "" if r["units"] is None else f"{r['units']:.2f}"
        print(f"{_label(Path(r['ckpt'])):{width}s} {r['sampler']:9s} {r['steps']:5d} {r['spacing']:>8s} {r['guidance']:4.1f} {r['interval']!s:>12s} "
              f"{r['seed']:4d} {r['gflop_per_image']:5.1f} {units:>5s} {r['mnistm']:8.3f} {r['svhn']:6.3f} {r['mean']:6.3f} "
              f"{r['seconds_per_1000']:7.0f}")
    print("GFLOP per image; units estimated from them (see the docstring); "
          "* SVHN here is the synthetic stand-in of ../shared, judged by the "
          "project's classifier")
    write_json(args.out, {"per_digit": args.per_digit, "seeds": args.seed, "dtype": args.dtype,
                          "cpu": cpu_capability(), "rows": rows})
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
