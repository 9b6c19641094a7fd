"""Sample the graded P1 images: OUT_DIR/{mnistm,svhn}/{digit}_{k:03d}.png, 50 per digit per data set.

All starting noise (and the noise of every ancestral step) comes from one seeded CPU generator,
so the same seed and flags give the same bytes on the same machine. `--grid` adds one 10x10
grid per data set (rows digits 0-9, columns the first 10 samples); `--reverse-process` adds,
per data set, a "0" at t = 500, 320, 200, 120, 40, 1 of the ancestral DDPM sampler over all T steps.
A rerun replaces the earlier output whole: the images are written into temporary folders that
replace mnistm/ and svhn/ only once every image is written. The sampler, steps and grid default to
the checkpoint's own: UniPC 5 (trailing), or DDIM over the K trailing steps a step-distilled student
(`p1_ddpm_train.py --distill-steps`) was trained for. OUT_DIR/sampling.json records the settings used
(the report's captions read it).
"""
import argparse
from dataclasses import asdict
from pathlib import Path

from models.diffusion import SAMPLERS
from models.p1_networks import load_p1_model
from models.p1_sampling import DEFAULTS, SPACINGS, Settings, checkpoint_defaults, reverse_process, sample, write_outputs
from utils.cli import check_writable_dir, nonnegative_float, nonnegative_int, positive_int, probability, write_json
from utils.errors import UserError, cli
from utils.outputs import SAMPLING_JSON
from utils.runtime import add_dtype_flag, dtype_name, pick_device, resolve_dtype

PROG = "p1_ddpm_sample.py"
DEFAULT_CKPT = Path(__file__).resolve().parent / "checkpoints" / "p1_ddpm.pt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir", type=Path, help="output folder; mnistm/ and svhn/ are created inside")
    p.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT, help="P1 checkpoint (carries its own config)")
    p.add_argument("--guidance", type=nonnegative_float, default=DEFAULTS.guidance,
                   help="classifier-free guidance weight w: eps = (1+w) eps_cond - w eps_uncond (0 = none); a "
                        "guidance-distilled checkpoint (the shipped one) takes w as an input, within the range it was "
                        "distilled for (0..4)")
    p.add_argument("--guidance-interval", type=nonnegative_int, nargs=2, metavar=("LO", "HI"),
                   default=DEFAULTS.guidance_interval,
                   help="guide only at timesteps LO <= t <= HI (0-indexed, T-1 is pure noise); the other "
                        "steps run the conditional network alone, one forward instead of two (default: every step)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default=None,
                   help="ddpm (ancestral), ddim, dpmpp_2m (DPM-Solver++(2M)) or unipc (UniPC-2, bh2, with corrector) "
                        f"(None: the checkpoint's, {DEFAULTS.sampler}, or ddim for a step-distilled one)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="number of denoising steps (evenly spaced; ddpm with steps = T is the classic sampler) "
                        f"(None: the checkpoint's, {DEFAULTS.steps}, or a step-distilled one's own K)")
    p.add_argument("--spacing", choices=sorted(SPACINGS), default=None,
                   help="timestep grid: leading = 400, 300, ..., 0 (the DDIM paper's), trailing = 499, 399, ..., 99 "
                        f"(for T = 500 and 5 steps) (None: the checkpoint's, {DEFAULTS.spacing})")
    p.add_argument("--eta", type=probability, default=DEFAULTS.eta,
                   help="DDIM eta (0 deterministic, 1 DDPM-like); --sampler ddim only")
    p.add_argument("--per-digit", type=positive_int, default=50, help="images per digit per data set")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size,
                   help="images per network call (guidance doubles the decoder's batch); small batches stay in the "
                        "CPU cache")
    add_dtype_flag(p, auto="bf16 on CUDA and on CPUs with native bf16, fp32 otherwise", bf16_alias=True)
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of the one CPU generator behind all sampling noise")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--grid", action="store_true", help="also write grid_{mnistm,svhn}.png in OUT_DIR")
    p.add_argument("--reverse-process", action="store_true",
                   help="also write reverse_process_{mnistm,svhn}.png in OUT_DIR: a '0' at t = 500, 320, 200, "
                        "120, 40, 1 (scaled to T) of the ancestral DDPM sampler over all T steps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.guidance_interval is not None:
        if args.guidance_interval[0] > args.guidance_interval[1]:
            p.error(f"argument --guidance-interval: LO {args.guidance_interval[0]} > HI {args.guidance_interval[1]}")
        args.guidance_interval = tuple(args.guidance_interval)
    return args


@cli(PROG)
def main(argv=None):
    args = parse_args(argv)
    check_writable_dir(args.out_dir)
    try:
        net, config = load_p1_model(args.ckpt)
    except UserError as e:
        raise UserError(f"{e}; train one with p1_ddpm_train.py, or pass --ckpt PATH") from None
    lo, hi = config.get("distillation", {}).get("w_range", (0, float("inf")))
    if not lo <= args.guidance <= hi:
        raise UserError(f"--guidance {args.guidance}: outside {lo}..{hi}, the range of w this guidance-distilled "
                        f"checkpoint was trained for")
    default = checkpoint_defaults(config)
    settings = Settings(args.sampler or default.sampler, args.steps or default.steps, args.spacing or default.spacing,
                        args.guidance, args.guidance_interval, args.eta, args.batch_size)
    T = config["schedule"]["num_steps"]
    if settings.steps > T:
        raise UserError(f"--steps {settings.steps}: must be in 1..{T} for this checkpoint")
    if settings.eta != 0 and settings.sampler != "ddim":
        raise UserError(f"--eta {settings.eta}: applies to --sampler ddim only "
                        f"(this run's sampler: {settings.sampler})")
    device = pick_device(args.device)
    dtype = resolve_dtype(args.dtype, device, cpu="bf16")
    net = net.to(device)
    images = sample(net, config, settings, per_digit=args.per_digit, seed=args.seed, dtype=dtype, device=device,
                    progress=not args.quiet)
    reverse = (reverse_process(net, config, settings, seed=args.seed, dtype=dtype, device=device,
                               progress=not args.quiet) if args.reverse_process else None)
    steps = f"{settings.steps} step{'s' if settings.steps > 1 else ''}"
    caption = f"{settings.sampler}, {steps}, w={settings.guidance}" if args.grid else None
    write_outputs(args.out_dir, config["datasets"], images, grid_caption=caption, reverse=reverse)
    record = {"ckpt": str(args.ckpt), **asdict(settings), "timesteps": settings.timesteps(T), "seed": args.seed,
              "per_digit": args.per_digit, "dtype": dtype_name(dtype),
              "device": str(device)}
    write_json(args.out_dir / SAMPLING_JSON, record)
    print(f"wrote {images.shape[0] * images.shape[1] * images.shape[2]} images to {args.out_dir}")
    return args.out_dir


if __name__ == "__main__":
    main()
