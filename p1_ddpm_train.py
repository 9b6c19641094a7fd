"""Train the conditional DDPM of P1 on MNIST-M + SVHN (digit and data-set labels, classifier-free guidance).

One device: `python p1_ddpm_train.py ...`. Several GPUs (data parallel, Hugging Face accelerate):
`accelerate launch --multi_gpu --num_processes N p1_ddpm_train.py ...`; each process draws its own
batches of --batch-size images, gradients are averaged, so the global batch is --batch-size x N.
Resumable: `--resume` continues from OUT_DIR/last.pt with the same optimizer, EMA, schedule and
random state. OUT_DIR/model.pt holds the EMA weights and config: all `p1_ddpm_sample.py` needs.
OUT_DIR/train_log.jsonl gets one line per logged step. docs/training.md has the details.

`--distill-guidance TEACHER` trains a guidance-distilled student instead (Meng et al. 2023, stage one):
the teacher's network plus an input for the guidance weight w, started from the teacher's weights and
trained to give, in one forward, the teacher's guided eps for any w in --w-range; sampling it costs one
forward a step instead of a shared encoder and two decoders (docs/p1.md). `--distill-steps TEACHER` then
halves a guidance-distilled network's DDIM steps (Salimans & Ho 2022, progressive distillation; Meng et al.
2023, stage two): the student's one step lands where the teacher's two land, on --student-steps K trailing
steps against the teacher's 2K; the student's checkpoint samples with DDIM K by default.
"""
import argparse
from pathlib import Path

import torch

from models import p1_training
from models.p1_networks import ARCHS, load_p1_model
from utils.checkpoint import load_checkpoint
from utils.cli import check_writable_dir, nonnegative_float, nonnegative_int, positive_float, positive_int, probability
from utils.digits import DATASETS, DigitData
from utils.errors import UserError, cli
from utils.runtime import add_dtype_flag, seed_everything
from utils.training import accelerated, describe, resume_note

PROG = "p1_ddpm_train.py"
# the flags a checkpoint's config records: a resumed run keeps the checkpoint's values, and refuses one given
# explicitly that differs (one left at its default takes the checkpoint's without complaint)
# named presets of the flags below (a flag given explicitly still wins); docs/results/p1_training.md has their runs
RECIPES = {
    # the parser's own defaults: the shipped checkpoint's recipe, about 6 minutes on one H100 (22 hours on 2 CPU cores)
    "gpu": {},
    # from scratch on a CPU: the image as 2x2 patches (14x14 and 7x7 levels: about 0.2 GFLOP a forward against
    # the ContextUnet-128's 2.2), the condition in every block (it learns the digits' shapes about twice as fast),
    # small batches at a higher learning rate, Min-SNR-5 weighting
    "cpu": {"arch": "channel_mult_unet", "n_feat": 64, "channel_mult": (1, 2), "patch": 2, "cond_down": True,
            "batch_size": 64, "lr": 3e-3, "warmup": 200, "min_snr_gamma": 5.0, "steps": 8500},
}
CONFIG_FLAGS = ("arch", "n_feat", "channel_mult", "patch", "cond_down", "num_timesteps", "beta_start", "beta_end",
                "p_uncond")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recipe", choices=("auto", *RECIPES), default="gpu",
                   help="a named preset of the flags below (any flag given explicitly still wins); auto = gpu where "
                        "CUDA is available, cpu otherwise; gpu = the shipped checkpoint's (10,000 steps of the "
                        "ContextUnet-128 at batch 256: about 6 minutes on one H100, about 22 hours on 2 CPU cores); "
                        "cpu = a patch-2 channel_mult_unet with --cond-down, batch 64, lr 3e-3, Min-SNR-5, 8,500 "
                        "steps (in fp32 about 58 units of benchmarks/bench_p1_sampling.py with AVX2 kernels, 50 with "
                        "AVX-512's, on 2 cores: 35-45 minutes; faster in bf16 where the CPU has it natively)")
    p.add_argument("--data-root", type=Path, default=Path("hw2_data/digits"),
                   help="folder holding mnistm/ and svhn/ in the course layout (data/*.png + train.csv)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/p1"),
                   help="where last.pt, model.pt and train_log.jsonl go; must not hold a run unless --resume "
                        "(which needs its last.pt)")
    p.add_argument("--steps", type=positive_int, default=10000,
                   help="total optimisation steps (the defaults are the shipped checkpoint's recipe: about 6 minutes "
                        "on one H100; on a CPU see the README's smaller recipe)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="images per optimisation step and process: the global batch is this x the number of "
                        "processes (accelerate launch --num_processes N)")
    p.add_argument("--lr", type=positive_float, default=4e-4, help="peak learning rate (AdamW)")
    p.add_argument("--warmup", type=nonnegative_int, default=200, help="linear warm-up steps, then cosine decay to 10%%")
    p.add_argument("--arch", choices=ARCHS, default="context_unet",
                   help="the network: context_unet (the shipped checkpoint's: ContextUnet, n_feat channels at 28x28 "
                        "and 14x14, 2 n_feat at 7x7) or channel_mult_unet (n_feat x --channel-mult channels at 28, "
                        "14 and 7, attention at 7x7: about 0.57x the FLOPs of a guided step at the defaults)")
    p.add_argument("--n-feat", type=positive_int, default=None,
                   help="network width: n_feat of the ContextUnet, or the channels at 28x28 of the channel_mult_unet "
                        "(None: 128 and 64 respectively)")
    p.add_argument("--channel-mult", type=channel_mult, default=(1, 2, 4),
                   help="channel_mult_unet only: multipliers of --n-feat, one per level (the first at the size the "
                        "network sees, each next at half of it), comma-separated: 1 to 3 levels")
    p.add_argument("--patch", type=positive_int, default=1,
                   help="channel_mult_unet only: the network sees the image as PxP patches (pixel unshuffle: 3 P^2 "
                        "channels at 28/P x 28/P) and gives eps back the same way; 2 makes a 3x3 convolution of "
                        "the first level 4x cheaper (use --channel-mult with 2 levels: 14x14 and 7x7)")
    p.add_argument("--cond-down", action=argparse.BooleanOptionalAction, default=False,
                   help="channel_mult_unet only: the condition reaches the down path too, as the time does (ADM's "
                        "class conditioning), not only the up path; guidance then runs the whole network twice")
    p.add_argument("--num-timesteps", type=positive_int, default=500, help="diffusion steps T (linear betas)")
    p.add_argument("--beta-start", type=positive_float, default=1e-4, help="first beta of the linear schedule")
    p.add_argument("--beta-end", type=positive_float, default=2e-2, help="last beta of the linear schedule (< 1)")
    p.add_argument("--p-uncond", type=probability, default=0.1,
                   help="probability of training with the null condition (for classifier-free guidance)")
    p.add_argument("--min-snr-gamma", type=nonnegative_float, default=0.0,
                   help="weight each image's loss by min(SNR, gamma) / SNR (Min-SNR-gamma, Hang et al. 2023: less "
                        "weight on nearly clean timesteps, faster convergence); 0 = the plain loss")
    p.add_argument("--ema-decay", type=probability, default=0.999, help="EMA decay of the sampling weights")
    p.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=True,
                   help="sample every (data set, digit) pair equally often")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N rows of each train.csv")
    p.add_argument("--save-every", type=positive_int, default=500, help="checkpoint every N steps (and at the end)")
    p.add_argument("--keep-every", type=nonnegative_int, default=0,
                   help="also keep the sampling weights of every N-th step as OUT_DIR/model_STEP.pt (0 = never), "
                        "to measure accuracy against training time")
    p.add_argument("--log-every", type=positive_int, default=50,
                   help="every N steps: the mean loss since the last log to the progress bar and a line of "
                        "OUT_DIR/train_log.jsonl (the loss stays on the device in between)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT_DIR/last.pt if it exists, else start a fresh run there (refused if OUT_DIR "
                        "holds a model.pt but no last.pt); the network and schedule flags are the checkpoint's, and "
                        "one given that differs is an error")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from the weights of a P1 sampling checkpoint (e.g. checkpoints/p1_ddpm.pt; its "
                        "config wins) with a fresh optimizer and schedule; ignored when --resume finds last.pt")
    p.add_argument("--distill-guidance", type=Path, default=None, metavar="TEACHER",
                   help="train a guidance-distilled student of this P1 sampling checkpoint (its network and config, "
                        "plus a w input; starts from its weights): one forward a sampling step instead of the "
                        "guided pair. Use a lower --lr (e.g. 1e-4); --arch, --n-feat and --p-uncond do not apply")
    p.add_argument("--distill-steps", type=Path, default=None, metavar="TEACHER",
                   help="train a step-distilled student of this guidance-distilled checkpoint (starts from its "
                        "weights): one DDIM step of the student does the teacher's two, over --student-steps K "
                        "trailing steps against the teacher's 2K. Use a lower --lr (e.g. 1e-4)")
    p.add_argument("--student-steps", type=positive_int, default=2,
                   help="with --distill-steps: the student's DDIM steps K (the teacher takes 2K)")
    p.add_argument("--w-range", type=nonnegative_float, nargs=2, default=(0.0, 4.0), metavar=("LO", "HI"),
                   help="with --distill-guidance or --distill-steps: each training image's guidance weight w is "
                        "drawn uniformly from LO..HI (within the teacher's, for --distill-steps); sample the "
                        "student with --guidance inside it")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of process 0's generator behind all training randomness (other processes derive "
                        "theirs from it)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:1, ... (under a launcher each process takes its own GPU)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch per process "
                                                                      "(default: torch's choice)")
    add_dtype_flag(p, auto="bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX: about 2x faster there), "
                           "fp32 otherwise", bf16_alias=True)
    recipe = argparse.ArgumentParser(add_help=False)
    recipe.add_argument("--recipe", default="gpu")
    name = recipe.parse_known_args(argv)[0].recipe
    if name == "auto":
        name = "gpu" if torch.cuda.is_available() else "cpu"
    p.set_defaults(**RECIPES.get(name, {}), recipe=name)  # an unknown name: the full parser says so
    unset = object()  # a flag still unset after parsing was not given: it may take a resumed checkpoint's value
    args = p.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(CONFIG_FLAGS, unset)))
    args.recipe = name  # auto resolved
    args.given = {k for k in CONFIG_FLAGS if getattr(args, k) is not unset}
    for k in set(CONFIG_FLAGS) - args.given:
        setattr(args, k, p.get_default(k))
    if args.n_feat is None:
        args.n_feat = 128 if args.arch == "context_unet" else 64
    if args.arch == "channel_mult_unet":
        size = 28 // args.patch
        if 28 % args.patch or size % 2 ** (len(args.channel_mult) - 1):
            p.error(f"--patch {args.patch} with --channel-mult {','.join(map(str, args.channel_mult))}: 28x28 in "
                    f"{args.patch}x{args.patch} patches is {28 / args.patch:g} wide, which must halve evenly "
                    f"{len(args.channel_mult) - 1} time(s) (e.g. --patch 2 --channel-mult 1,2)")
    elif args.patch != 1:
        p.error(f"--patch {args.patch}: only the channel_mult_unet takes patches (add --arch channel_mult_unet)")
    elif args.cond_down:
        p.error("--cond-down: only the channel_mult_unet has it (add --arch channel_mult_unet)")
    if not args.beta_start <= args.beta_end < 1:
        p.error(f"--beta-start {args.beta_start} and --beta-end {args.beta_end}: need beta-start <= beta-end < 1")
    starts = [f for f in ("init_from", "distill_guidance", "distill_steps") if getattr(args, f) is not None]
    if len(starts) > 1:
        p.error(" and ".join("--" + f.replace("_", "-") for f in starts) + ": give one (a distillation starts from "
                "its teacher's weights)")
    if args.w_range[0] > args.w_range[1]:
        p.error(f"argument --w-range: LO {args.w_range[0]} > HI {args.w_range[1]}")
    return args


def channel_mult(text: str) -> tuple[int, ...]:
    """--channel-mult '1,2,4': one to three positive integers, one per level (e.g. 28x28, 14x14, 7x7)."""
    try:
        mult = tuple(int(m) for m in text.split(","))
    except ValueError:
        mult = ()
    if not 1 <= len(mult) <= 3 or min(mult) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need one to three positive integers, e.g. 1,2,4")
    return mult


def check_out_dir(out_dir: Path, resume: bool) -> Path | None:
    """OUT_DIR/last.pt to resume from (or None); refuse to start a fresh run over an earlier one."""
    check_writable_dir(out_dir, "--out-dir")
    last = out_dir / "last.pt"
    if resume:
        if not last.exists() and (out_dir / "model.pt").exists():
            raise UserError(f"--out-dir {out_dir}: --resume, but there is no last.pt to resume from (only model.pt, "
                            "which a fresh run would overwrite); choose another --out-dir")
        return last if last.exists() else None
    earlier = [p.name for p in (last, out_dir / "model.pt") if p.exists()]
    if earlier:
        raise UserError(f"--out-dir {out_dir}: already holds a run ({', '.join(earlier)}); add --resume to "
                        "continue it, or choose another --out-dir")
    return None


def check_resumed_flags(args, config: dict, last: Path) -> None:
    """Refuse CONFIG_FLAGS given explicitly with values other than those the resumed checkpoint's `config`
    records (a flag that does not apply to its network, such as --channel-mult of a ContextUnet, is not asked)."""
    model, schedule = config["model"], config["schedule"]
    saved = {"arch": model.get("arch", "context_unet"), "n_feat": model.get("n_feat"),
             "channel_mult": tuple(model["channel_mult"]) if "channel_mult" in model else None,
             "patch": model.get("patch", 1) if "channel_mult" in model else None,
             "cond_down": model.get("cond_down", False) if "channel_mult" in model else None,
             "num_timesteps": schedule.get("num_steps"), "beta_start": schedule.get("beta_start"),
             "beta_end": schedule.get("beta_end"), "p_uncond": config.get("p_uncond")}
    differ = [f"--{k.replace('_', '-')} {getattr(args, k)} (it has {saved[k]})" for k in CONFIG_FLAGS
              if k in args.given and saved[k] is not None and saved[k] != getattr(args, k)]
    if differ:
        raise UserError(f"{last}: --resume with {', '.join(differ)}; a resumed run keeps its checkpoint's network "
                        "and schedule, so drop those flags or choose another --out-dir")


def distillation_config(args, config: dict) -> dict:
    """The student's config from its teacher's (`config`), for --distill-guidance or --distill-steps; else `config`.

    A guidance-distilled student gains `model.guidance_embed`; a step-distilled one keeps its teacher's model
    and records its DDIM `steps`. Either records `distillation: {teacher, w_range[, steps]}`.
    """
    teacher = config.get("distillation", {})
    if args.distill_guidance is not None:
        if config["model"].get("guidance_embed"):
            raise UserError(f"--distill-guidance {args.distill_guidance}: already a guidance-distilled student; "
                            "give the guided network it was distilled from")
        return {**config, "model": {**config["model"], "guidance_embed": True},
                "distillation": {"teacher": str(args.distill_guidance), "w_range": list(args.w_range)}}
    if args.distill_steps is None:
        return config
    if not config["model"].get("guidance_embed"):
        raise UserError(f"--distill-steps {args.distill_steps}: not a guidance-distilled network; distil its "
                        "guidance first (--distill-guidance)")
    lo, hi = teacher["w_range"]
    if not lo <= args.w_range[0] <= args.w_range[1] <= hi:
        raise UserError(f"--w-range {args.w_range[0]} {args.w_range[1]}: outside {lo}..{hi}, the teacher's")
    teacher_steps = teacher.get("steps")
    if teacher_steps is not None and teacher_steps != 2 * args.student_steps:
        hint = f"give --student-steps {teacher_steps // 2}" if teacher_steps % 2 == 0 else "they cannot be halved"
        raise UserError(f"--student-steps {args.student_steps}: the teacher {args.distill_steps} samples in "
                        f"{teacher_steps} steps; {hint}")
    if 2 * args.student_steps > config["schedule"]["num_steps"]:
        raise UserError(f"--student-steps {args.student_steps}: the teacher's 2K steps exceed T = "
                        f"{config['schedule']['num_steps']}")
    return {**config, "distillation": {"teacher": str(args.distill_steps), "w_range": list(args.w_range),
                                       "steps": args.student_steps}}


def model_config(args) -> dict:
    """A fresh network's `config["model"]` from the flags (what `build_from_config` builds)."""
    model = {"in_channels": 3, "n_feat": args.n_feat, "num_digits": 10, "num_datasets": len(DATASETS)}
    if args.arch == "channel_mult_unet":
        model = {"arch": args.arch, **model, "channel_mult": list(args.channel_mult)}
        if args.patch != 1:
            model["patch"] = args.patch
        if args.cond_down:
            model["cond_down"] = True
    return model


def starting_point(args, accelerator) -> tuple[dict, dict | None, dict | None, torch.nn.Module | None]:
    """(config, state, init, teacher) of the run the flags ask for: a fresh network's config from the flags, or
    OUT_DIR/last.pt to resume (`state`, its config), or --init-from / --distill-* weights to start from (`init`,
    their config), and for a distillation the teacher network."""
    main_process = accelerator.is_main_process
    last = check_out_dir(args.out_dir, args.resume)
    config = {"model": model_config(args),
              "schedule": {"num_steps": args.num_timesteps, "beta_start": args.beta_start, "beta_end": args.beta_end},
              "datasets": list(DATASETS), "image_size": 28, "p_uncond": args.p_uncond}
    state = init = teacher = None
    start_from = args.init_from or args.distill_guidance or args.distill_steps  # at most one (parse_args)
    if last is not None:
        state = load_checkpoint(last, required=("config", "model", "ema", "optimizer", "step"),
                                what="training checkpoint")
        config = state["config"]
        check_resumed_flags(args, config, last)
        if main_process:
            print(f"resuming from {last} at step {state['step']}")
            note = resume_note(config.get("training"), accelerator, args.batch_size)
            if note:
                print(note)
    elif start_from is not None:
        init_net, config = load_p1_model(start_from)
        init = init_net.state_dict()
        config = distillation_config(args, config)
        if main_process:
            print(f"starting from the weights of {start_from}")
    if "distillation" in config:
        # the flag's teacher, or on resume the one the config names
        teacher_path = args.distill_guidance or args.distill_steps or config["distillation"]["teacher"]
        teacher, teacher_config = load_p1_model(teacher_path)
        if teacher_config["schedule"] != config["schedule"]:
            raise UserError(f"teacher {teacher_path}: its noise schedule "
                            f"{teacher_config['schedule']} is not the student's {config['schedule']}")
    return config, state, init, teacher


def train(args) -> Path:
    with accelerated(args.device, args.dtype, cuda="bf16", cpu="bf16") as (accelerator, dtype):
        about = describe(accelerator)  # collective: every process takes part
        if accelerator.is_main_process:
            print(f"{about}; recipe {args.recipe}", flush=True)
        if args.threads:
            torch.set_num_threads(args.threads)
        seed_everything(args.seed)  # the network's initialisation: the same in every process
        config, state, init, teacher = starting_point(args, accelerator)
        data = DigitData(args.data_root, limit=args.limit)
        return p1_training.train(accelerator, dtype, config, data, args.out_dir, steps=args.steps,
                                 batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                                 ema_decay=args.ema_decay, balanced=args.balanced, seed=args.seed,
                                 save_every=args.save_every, keep_every=args.keep_every, log_every=args.log_every,
                                 min_snr_gamma=args.min_snr_gamma or None, state=state, init=init, teacher=teacher)


@cli(PROG)
def main(argv=None):
    args = parse_args(argv)
    return train(args)


if __name__ == "__main__":
    main()
