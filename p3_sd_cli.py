"""Command-line pieces of the Stable Diffusion scripts (p3_textual_inversion.py, p3_custom_diffusion.py):
argument types for learned tokens, image sides and two-token templates, the flags every command has, the
sampling flags, and writing the course's image layout."""
import argparse
import re
import time
from pathlib import Path

from tqdm import tqdm

from models.stable_diffusion import SAMPLERS, Sampling, check_prompt_lengths, pipeline_prompts, sample
from utils.cli import finite_float, missing_paths, nonnegative_int, positive_int, skip_missing, staged_dir
from utils.clip_score import IMAGES_PER_PROMPT
from utils.runtime import add_dtype_flag
from utils.ti_data import LEARNED_TOKEN


def token_arg(text: str) -> str:
    """A learned token is written in angle brackets, as the course's input.json names them."""
    if not re.fullmatch(r"<\w[\w.-]*>", text):  # it names files: no '/'
        raise argparse.ArgumentTypeError(f"{text!r} must look like '<new1>': angle brackets around letters, "
                                         "digits, '_', '-' or '.'")
    return text


def resolution_arg(text: str) -> int:
    value = positive_int(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"{text} is not a multiple of 8 (the VAE downsamples by 8)")
    return value


def template_arg(text: str) -> str:
    """`figure --template`: exactly two '{}', one per token."""
    try:
        ok = text.count("{}") == 2 and text.format("A", "B").count("A") >= 1
    except (IndexError, KeyError, ValueError):
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r} must hold exactly two '{{}}' (one per token) and no other braces")
    return text


def common_flags(inputs: str) -> argparse.ArgumentParser:
    """--device, --dtype, --skip-missing (of `inputs`, e.g. 'model, weights, images') and --quiet."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (train under a launcher: auto or cuda)")
    add_dtype_flag(p, auto="bf16 to train, fp16 to sample on CUDA, fp32 on the CPU",
                   what="precision of the frozen UNet and VAE (to sample, of the whole pipeline); learned embeddings "
                        "and trained weights stay fp32")
    p.add_argument("--skip-missing", action="store_true",
                   help=f"if an input ({inputs}) is missing, say which and exit 0")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def sampling_flags(guidance: float, resolution: int | None, guidance_note: str = "") -> argparse.ArgumentParser:
    """--sampler, --steps, --guidance, --batch-size, --resolution, --seed (`sampling_of` reads them)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="dpm++", help="diffusers scheduler")
    p.add_argument("--steps", type=positive_int, default=30, help="denoising steps")
    p.add_argument("--guidance", type=finite_float, default=guidance,
                   help="classifier-free guidance scale" + guidance_note)
    p.add_argument("--batch-size", type=positive_int, default=5, help="images per pipeline call")
    p.add_argument("--resolution", type=resolution_arg, default=resolution,
                   help="image side in pixels" + ("" if resolution else " (default: the model's own, 512 for SD v1)"))
    p.add_argument("--seed", type=nonnegative_int, default=0, help="image i of every prompt starts from seed + i")
    return p


def sampling_of(args) -> Sampling:
    return Sampling(args.seed, args.batch_size, args.steps, args.guidance, args.resolution)


def missing(prog: str, args, paths: dict, hint: str = "") -> bool:
    """True if --skip-missing and some input is absent (after saying which); a UserError without the flag."""
    return skip_missing(f"{prog} {args.command}", missing_paths(paths), args.skip_missing, hint)


def prompt_tokens(concepts) -> list[str]:
    """Every learned token (`<...>`) the prompts of `concepts` (read_prompt_file) use, sorted."""
    return sorted({t for c in concepts for p in c.prompts for t in LEARNED_TOKEN.findall(p)})


def write_graded_images(pipe, concepts, out_dir: Path, settings: Sampling, source: str, quiet: bool) -> Path:
    """OUT_DIR/{concept id}/{prompt index}/0.png ... 24.png for every prompt of `concepts` (read from `source`);
    OUT_DIR is replaced whole at the end, so a rerun never leaves a mix of old and new images."""
    jobs = [(c.id, i, p) for c in concepts for i, p in enumerate(c.prompts)]
    check_prompt_lengths(pipe.tokenizer, [p for _, _, p in jobs], source, pipeline_prompts(pipe))
    start = time.time()
    with staged_dir(out_dir) as staging:
        for cid, i, prompt in tqdm(jobs, desc="generate", disable=quiet, dynamic_ncols=True):
            folder = staging / cid / str(i)
            folder.mkdir(parents=True)
            for k, image in enumerate(sample(pipe, prompt, IMAGES_PER_PROMPT, settings)):
                image.save(folder / f"{k}.png")
    print(f"wrote {len(jobs)} x {IMAGES_PER_PROMPT} images to {out_dir} in {time.time() - start:.0f} s")
    return out_dir
