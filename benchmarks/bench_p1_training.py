"""P1 trained from scratch for a budget of units: accuracy against training time, on this machine.

The unit is `bench_p1_sampling.py`'s (2,000 image forwards of the classic ContextUnet-128 in fp32), timed
before and after the run; the training's wall time is counted in units of their mean, so a host twice as
slow at convolutions spends about the same units. The run:
1. time the unit; time --calibrate steps of the recipe (a throwaway run) to know its seconds a step here;
2. train `p1_ddpm_train.py --recipe R` for as many steps as fit --units (the cosine schedule spans them),
   keeping the EMA weights at --points equal fractions of the run (and passing any flags after `--` on to
   p1_ddpm_train.py, to try a lever: `-- --min-snr-gamma 0`);
3. time the unit again; score each kept checkpoint on --curve-per-digit images per digit and data set
   (200 per data set by default, about +-0.03), with its own sampler defaults;
4. sample the final model.pt as `hw2_1.sh OUT --ckpt` does (the graded 1,000, seed 0) and score them as
   `p1_ddpm_eval.py` does (MNIST-M: the course's classifier; SVHN*: the project's judge).
Prints the unit, the CPU capability and threads, a table; writes JSON and a plot of accuracy against units
(and minutes on this host).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import p1_ddpm_eval
import p1_ddpm_sample
import p1_ddpm_train
from benchmarks.bench_p1_sampling import UNIT_FORWARDS, time_unit
from benchmarks.classic_context_unet import ClassicContextUnet
from models.p1_networks import load_p1_model
from models.p1_sampling import checkpoint_defaults, sample
from utils.cli import positive_float, positive_int, write_json
from utils.outputs import TRAIN_LOG_JSONL
from utils.runtime import cpu_capability

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HW2_SHARED", ROOT.parent / "shared"))


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s [options] [-- p1_ddpm_train.py flags]")
    p.add_argument("--recipe", choices=tuple(p1_ddpm_train.RECIPES), default="cpu", help="the recipe (default cpu)")
    p.add_argument("--units", type=positive_float, default=60.0, help="training budget in units (default 60)")
    p.add_argument("--points", type=positive_int, default=4,
                   help="checkpoints kept and scored, at equal fractions of the run (default 4: 1/4 .. 4/4)")
    p.add_argument("--calibrate", type=positive_int, default=30,
                   help="steps of a throwaway run timed to size the budget (the first 5 untimed; default 30)")
    p.add_argument("--curve-per-digit", type=positive_int, default=20,
                   help="images per digit and data set scored at each kept checkpoint (default 20: 200 a data set)")
    p.add_argument("--final-per-digit", type=positive_int, default=50,
                   help="images per digit and data set of the final score (default 50: the graded 1,000)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="the training's precision (p1_ddpm_train.py --bf16); the unit is always fp32 (default auto)")
    p.add_argument("--unit-forwards", type=positive_int, default=UNIT_FORWARDS,
                   help=f"classic forwards timed for each unit measurement (default {UNIT_FORWARDS}; fewer: quicker, "
                        "noisier)")
    p.add_argument("--data-root", type=Path, default=ROOT / "hw2_data" / "digits", help="the digits folder")
    p.add_argument("--mnistm-classifier", type=Path, default=SHARED / "grader" / "Classifier.pth",
                   help="the course's MNIST-M classifier (default: in $HW2_SHARED or ../shared)")
    p.add_argument("--svhn-classifier", type=Path, default=ROOT / "checkpoints" / "svhn_classifier.pt",
                   help="the project's SVHN judge")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="where the run's checkpoints go (default: a temporary folder, removed at the end)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "p1_training.json",
                   help="the JSON (the plot goes beside it, .png)")
    args = p.parse_args(argv)
    args.extra = extra
    return args


def train_argv(args, out_dir: Path, steps: int, keep_every: int, log_every: int) -> list[str]:
    return ["--recipe", args.recipe, "--data-root", str(args.data_root), "--out-dir", str(out_dir),
            "--steps", str(steps), "--keep-every", str(keep_every), "--log-every", str(log_every),
            "--save-every", str(steps), "--bf16", args.bf16, *args.extra]


def seconds_per_step(args, scratch: Path) -> float:
    """Seconds a training step of the recipe takes here: a throwaway run of --calibrate steps, timed from its
    log after the first 5 (the first steps pay one-off costs)."""
    out = scratch / "calibrate"
    p1_ddpm_train.main(train_argv(args, out, args.calibrate, 0, 5))
    log = [json.loads(line) for line in (out / TRAIN_LOG_JSONL).read_text().splitlines()]
    first, last = log[0], log[-1]
    return (last["time"] - first["time"]) / (last["step"] - first["step"])


def curve_scores(ckpt: Path, judges: dict, per_digit: int) -> dict:
    """Accuracy of a checkpoint's images (its own sampler defaults, seed 0) per data set, scored in memory."""
    net, config = load_p1_model(ckpt)
    images = sample(net, config, checkpoint_defaults(config), per_digit=per_digit, seed=0)
    labels = torch.arange(10).repeat_interleave(per_digit)
    return {name: p1_ddpm_eval.score(judges[name], torch.from_numpy(images[s]).reshape(-1, 28, 28, 3)
                                     .permute(0, 3, 1, 2), labels)["accuracy"]
            for s, name in enumerate(config["datasets"])}


def plot(result: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["points"]
    units = [r["units"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=150)
    for key, name in (("mnistm", "MNIST-M"), ("svhn", "SVHN*")):
        ax.plot(units, [r[key] for r in rows], marker="o", label=f"{name} ({result['curve_per_digit'] * 10} images)")
    final = result["final"]
    ax.scatter([units[-1]] * 2, [final["mnistm"], final["svhn"]], marker="*", s=120, color="k", zorder=3,
               label="graded 1,000 at the end")
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"training time (units; 1 unit = {result['unit_s']:.1f} s on this host)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    precision = {"off": "fp32", "on": "bf16"}.get(result["precision"], result["precision"])
    ax.set_title(f"P1 from scratch, recipe {result['recipe']} ({result['cpu']}; training in {precision})", fontsize=9)
    minutes = ax.secondary_xaxis("top", functions=(lambda u: u * result["unit_s"] / 60,
                                                   lambda m: m * 60 / result["unit_s"]))
    minutes.set_xlabel("minutes on this host")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    print(f"{cpu_capability()}, torch {torch.__version__}", flush=True)
    judges = {"mnistm": p1_ddpm_eval.load_judge("mnistm", args.mnistm_classifier),
              "svhn": p1_ddpm_eval.load_judge("svhn", args.svhn_classifier)}
    classic = ClassicContextUnet(n_feat=128).eval()
    unit_before = time_unit(classic, args.unit_forwards)
    print(f"unit: {unit_before:.1f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_p1_training_") as tmp:
        scratch = Path(tmp)
        step_s = seconds_per_step(args, scratch)
        steps = max(args.points, int(args.units * unit_before / step_s) // args.points * args.points)
        keep = steps // args.points
        print(f"{step_s:.3f} s a step -> {steps} steps for {args.units:g} units", flush=True)
        run = args.run_dir or scratch / "run"
        start = time.perf_counter()
        p1_ddpm_train.main(train_argv(args, run, steps, keep, keep))
        train_s = time.perf_counter() - start
        unit_after = time_unit(classic, args.unit_forwards)
        unit = (unit_before + unit_after) / 2
        print(f"trained {steps} steps in {train_s:.0f} s = {train_s / unit:.1f} units "
              f"(unit {unit_before:.1f} s before, {unit_after:.1f} s after)", flush=True)
        log = {r["step"]: r for r in map(json.loads, (run / TRAIN_LOG_JSONL).read_text().splitlines())}
        setup_s = train_s - log[steps]["time"]  # data loading, network, first save: before the log's clock
        points = []
        for k in range(1, args.points + 1):
            ckpt = run / f"model_{k * keep:06d}.pt"
            seconds = setup_s + log[k * keep]["time"]
            scores = curve_scores(ckpt, judges, args.curve_per_digit)
            points.append({"step": k * keep, "seconds": seconds, "units": seconds / unit, "loss": log[k * keep]["loss"],
                           **scores})
            print(f"step {k * keep:6d}  {seconds / unit:6.1f} units  MNIST-M {scores['mnistm']:.3f}  "
                  f"SVHN* {scores['svhn']:.3f}", flush=True)
        graded = scratch / "graded"
        p1_ddpm_sample.main([str(graded), "--ckpt", str(run / "model.pt"), "--per-digit", str(args.final_per_digit),
                             "--quiet"])
        final = p1_ddpm_eval.evaluate(graded, {"mnistm": args.mnistm_classifier, "svhn": args.svhn_classifier})
        config = torch.load(run / "model.pt", map_location="cpu", weights_only=True)["config"]
    result = {"recipe": args.recipe, "extra_flags": args.extra, "budget_units": args.units, "steps": steps,
              "seconds_per_step_calibrated": step_s, "cpu": cpu_capability(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "precision": args.bf16 if args.bf16 != "auto" else
              f"auto ({'bf16' if 'native bf16' in cpu_capability() else 'fp32'})",
              "unit_s": unit, "units_timed_s": [unit_before, unit_after], "train_s": train_s,
              "train_units": train_s / unit, "config": config, "curve_per_digit": args.curve_per_digit,
              "points": points, "final": {"per_digit": args.final_per_digit, "mnistm": final["mnistm"]["accuracy"],
                                          "svhn": final["svhn"]["accuracy"], "mean": final["mean"]}}
    print(f"\n{result['cpu']}, unit {unit:.1f} s, recipe {args.recipe} "
          f"{' '.join(args.extra)}, precision {result['precision']}")
    print(f"{'step':>6s} {'units':>6s} {'minutes':>8s} {'loss':>7s} {'MNIST-M':>8s} {'SVHN*':>6s}")
    for r in points:
        print(f"{r['step']:6d} {r['units']:6.1f} {r['seconds'] / 60:8.1f} {r['loss']:7.4f} {r['mnistm']:8.3f} "
              f"{r['svhn']:6.3f}")
    f = result["final"]
    print(f"graded {20 * args.final_per_digit} at the end ({result['train_units']:.1f} units): MNIST-M {f['mnistm']:.3f}, "
          f"SVHN* {f['svhn']:.3f}, mean {f['mean']:.3f}  (SVHN*: the synthetic stand-in, the project's judge)")
    write_json(args.out, result)
    png = args.out.with_suffix(".png")
    plot(result, png)
    print(f"wrote {args.out} and {png}")
    return result


if __name__ == "__main__":
    main()
