"""What `run_all.sh` is about to do, said before it does it: the device, which steps run and which are skipped
and why, and about how long each takes on this machine.

Times come from measured rates: on a CPU, each step's cost in units (measured by the benchmarks on 2-core
EPYC hosts, docs/results/) times this machine's unit, timed here in a few seconds (an eighth of
`bench_p1_sampling.py`'s unit: 250 of its 2,000 forwards of the classic ContextUnet-128 in fp32, scaled up). Steps
nobody has timed on a CPU (Stable Diffusion at 512x512) are estimated by their FLOPs against the unit's,
and say so. On a GPU the times are those measured on one H100 (other GPUs differ).

Usage (run_all.sh does this): python run_plan.py [--train] [--train-sd] [--data hw2_data]
"""
import argparse
from pathlib import Path

import torch

from benchmarks.bench_p1_sampling import time_unit
from benchmarks.classic_context_unet import ClassicContextUnet
from utils.runtime import cpu_capability, native_bf16

# Step costs in units (fp32 unless named): measured on 2-core EPYC hosts unless "by FLOPs".
P1_SAMPLE_UNITS = 1.4 + 0.3   # 1,000 graded images at the defaults (docs/results/p1_sampling.md) + grids, reverse process
# p1_ddpm_train.py --recipe cpu in fp32, by the kernels torch runs: a training step's backward costs more units
# with AVX2's than with AVX-512's (docs/results/p1_training.md, "On AVX2 kernels")
P1_TRAIN_CPU_UNITS = {"AVX512": 50.2, "AVX2": 58.0}
# how much faster bf16 runs where the CPU has it natively (docs/results/p1_training.md: 0.294 against 0.175 s a
# step; p1_sampling.md: 1.34 against 0.71 units)
P1_TRAIN_BF16_SPEEDUP, P1_SAMPLE_BF16_SPEEDUP = 1.68, 1.89
P1_CURVE_UNITS = 1.5          # scoring the kept checkpoints, 200 images a data set each
P2_IMAGE_UNITS = 1.0          # one 256x256 face, 50 DDIM steps of the 113.7 M UNet (docs/results/p2.md: ~51 s)
P2_IMAGES = 10 + 5 * 4 + 2 * 11  # the noises, the eta grid, the two interpolation rows
CLIP_UNITS = 10.0             # 2,500 images through ViT-B/32 (docs/results/p3.md: 8-9 minutes)
# Stable Diffusion v1 at 512x512 (64x64 latents), by FLOPs: a UNet forward is about 0.4 TFLOP and a unit
# 5.5 TFLOP (2,000 x 2.75 GFLOP); a training step of batch 4 is about 3 x 4 forwards
SD_TRAIN_STEP_UNITS = 3 * 4 * 0.4 / 5.5
SD_IMAGE_UNITS = 30 * 2 * 0.4 / 5.5  # 30 guided steps
TI_STEPS, TI_TOKENS, TI_IMAGES = 3000, 3, 4 * 25
CD_STEPS, CD_RUNS, CD_IMAGES = 500, 3, 3 * 4
# measured on one H100 (minutes), for a machine with CUDA
GPU_MINUTES = {"p1_train": 7, "p1_sample": 0.5, "p2": 0.2, "clip": 1, "ti_train": 3 * 11, "ti_sample": 1,
               "cd_train": 3 * 4, "judge": 1}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", action="store_true", help="run_all.sh --train: P1 and the SVHN judge are trained")
    p.add_argument("--train-sd", action="store_true",
                   help="run_all.sh --train-sd: train the Stable Diffusion concepts even without a GPU")
    p.add_argument("--data", type=Path, default=Path("hw2_data"), help="the data folder (run_all.sh's HW2_DATA)")
    p.add_argument("--unit-forwards", type=int, default=250,
                   help="classic forwards timed for the unit (250: about 6 s on 2 cores; fewer: quicker, noisier)")
    return p.parse_args(argv)


def p1_train_units() -> float:
    """Units of `--recipe cpu` in fp32 here: the AVX-512 figure where torch runs those kernels, else AVX2's."""
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    return P1_TRAIN_CPU_UNITS["AVX512" if avx512 else "AVX2"]


def minutes(m: float) -> str:
    if m < 1:
        return "under a minute"
    if m < 90:
        return f"about {m:.0f} minutes"
    if m < 36 * 60:
        return f"about {m / 60:.1f} hours"
    return f"about {m / 60 / 24:.1f} days"


def plan(args, unit_s: float | None, gpu: str | None) -> list[tuple[str, str, str]]:
    """(step, "run" or "skip", when / why) for each step of run_all.sh."""
    bf16 = gpu is None and native_bf16()

    def took(units: float, gpu_key: str, by_flops: bool = False, bf16_speedup: float = 1.0) -> str:
        if gpu is not None:
            return minutes(GPU_MINUTES[gpu_key]) + " (measured on one H100)"
        u = units / bf16_speedup if bf16 else units
        return f"{minutes(u * unit_s / 60)} ({u:,.0f} unit{'' if round(u) == 1 else 's'}{', by FLOPs' if by_flops else ''})"

    data = args.data
    steps = []
    if args.train:
        recipe = "gpu" if gpu else "cpu"
        steps.append(("P1 training (p1_ddpm_train.py --recipe " + recipe + ")", "run",
                      took(p1_train_units(), "p1_train", bf16_speedup=P1_TRAIN_BF16_SPEEDUP)
                      + ("" if gpu else "; no GPU here, so the CPU recipe")))
        steps.append(("SVHN judge training, accuracy curve", "run", took(P1_CURVE_UNITS + 2, "judge")))
    steps.append(("P1 sampling: 1,000 images, grids, reverse process, scores", "run",
                  took(P1_SAMPLE_UNITS, "p1_sample", bf16_speedup=P1_SAMPLE_BF16_SPEEDUP)))
    face = data / "face" / "UNet.pt"
    steps.append(("P2 DDIM: 10 faces, MSE, eta grid, interpolation", *(
        ("run", took(P2_IMAGE_UNITS * P2_IMAGES, "p2")) if face.is_file() else
        ("skip", f"{face} is missing (the course's face UNet; see hw2_data/README.md)"))))
    val = data / "clip_zeroshot" / "val"
    steps.append(("P3 CLIP zero-shot", *(("run", took(CLIP_UNITS, "clip")) if val.is_dir() else
                                         ("skip", f"{val} is missing (see hw2_data/README.md)"))))
    sd = data / "sd-v1-4.ckpt"
    if not sd.exists():
        steps.append(("P3 textual inversion and Custom Diffusion", "skip",
                      f"{sd} is missing (Stable Diffusion v1; see hw2_data/README.md)"))
    else:
        train = took(SD_TRAIN_STEP_UNITS * (TI_STEPS * TI_TOKENS), "ti_train", by_flops=True)
        cd = took(SD_TRAIN_STEP_UNITS * 1.12 * CD_STEPS * CD_RUNS, "cd_train", by_flops=True)
        if gpu is None and not args.train_sd:
            why = "no GPU: --train-sd trains them anyway; the shipped or earlier embeddings are used if present"
            steps.append(("P3 textual inversion training (3 tokens)", "skip", f"{train}; {why}"))
            steps.append(("P3 Custom Diffusion training (joint, two apart, merge)", "skip", f"{cd}; {why}"))
        else:
            steps.append(("P3 textual inversion training (3 tokens, resumable)", "run", train))
            steps.append(("P3 Custom Diffusion training (joint, two apart, merge)", "run", cd))
        steps.append(("P3 textual inversion images, scores, two-concept figures", "run",
                      took(SD_IMAGE_UNITS * (TI_IMAGES + CD_IMAGES), "ti_sample", by_flops=True)))
    steps.append(("report.md and report.pdf", "run", "under a minute"))
    return steps


def main(argv=None):
    args = parse_args(argv)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    unit_s = None
    if gpu is None:
        torch.manual_seed(0)
        unit_s = time_unit(ClassicContextUnet(n_feat=128).eval(), args.unit_forwards)
    device = f"GPU: {gpu}" if gpu else (f"CPU ({cpu_capability()}), no GPU; "
                                        f"unit {unit_s:.0f} s here (timed just now)")
    print(f"run_all.sh will run on {device}")
    steps = plan(args, unit_s, gpu)
    width = max(len(name) for name, _, _ in steps)
    for name, what, when in steps:
        print(f"  {what:4s}  {name:{width}s}  {when}")
    print("(times: measured step costs times this machine's speed; see run_plan.py)", flush=True)
    return steps


if __name__ == "__main__":
    main()
