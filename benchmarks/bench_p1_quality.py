"""P1 sample quality against guidance weight and step count: accuracy and time, to choose defaults.

For each (guidance, steps) pair: `p1_ddpm_sample.py` writes `--per-digit` images per digit per
data set, `p1_ddpm_eval.py` scores them (MNIST-M with the course's classifier, SVHN with the
project's judge). Several checkpoints (`--ckpt A B ...`) give accuracy against training time.
Prints a table, writes JSON.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import p1_ddpm_eval  # noqa: E402
import p1_ddpm_sample  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", type=Path, nargs="+", default=[ROOT / "checkpoints" / "p1_ddpm.pt"])
    p.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    p.add_argument("--steps", type=int, nargs="+", default=[50])
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--per-digit", type=int, default=20, help="images per digit per data set (50 = the graded 1,000)")
    p.add_argument("--mnistm-classifier", type=Path, default=ROOT.parent / "shared" / "grader" / "Classifier.pth")
    p.add_argument("--svhn-classifier", type=Path, default=ROOT / "checkpoints" / "svhn_classifier.pt")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "p1_quality.json")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rows = []
    for ckpt in args.ckpt:
        step = torch.load(ckpt, map_location="cpu", weights_only=True).get("step")
        for steps in args.steps:
            for w in args.guidance:
                with tempfile.TemporaryDirectory() as out:
                    start = time.perf_counter()
                    p1_ddpm_sample.main([out, "--ckpt", str(ckpt), "--guidance", str(w), "--steps", str(steps),
                                         "--sampler", args.sampler, "--per-digit", str(args.per_digit), "--quiet"])
                    seconds = time.perf_counter() - start
                    scores = p1_ddpm_eval.main([out, "--mnistm-classifier", str(args.mnistm_classifier),
                                                "--svhn-classifier", str(args.svhn_classifier)])
                rows.append({"ckpt": str(ckpt), "train_step": step, "sampler": args.sampler, "steps": steps,
                             "guidance": w, "mnistm": scores["mnistm"]["accuracy"], "svhn": scores["svhn"]["accuracy"],
                             "mean": scores["mean"], "seconds": seconds,
                             "seconds_per_1000": seconds * 1000 / (20 * args.per_digit)})
    print(f"\n{'train step':>10s} {'steps':>5s} {'w':>4s} {'MNIST-M':>8s} {'SVHN*':>6s} {'mean':>6s} {'s/1000 img':>10s}")
    for r in rows:
        print(f"{r['train_step']!s:>10s} {r['steps']:5d} {r['guidance']:4.1f} {r['mnistm']:8.3f} {r['svhn']:6.3f} "
              f"{r['mean']:6.3f} {r['seconds_per_1000']:10.0f}")
    print("* SVHN here is the synthetic stand-in of ../shared, judged by the project's classifier")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"per_digit": args.per_digit, "threads": torch.get_num_threads(), "rows": rows},
                                   indent=2))
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
