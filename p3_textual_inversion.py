"""P3: textual inversion on Stable Diffusion v1 -- learn a concept, generate the graded images, score them.

  train    CONCEPT_DIR MODEL --token '<new1>' --initializer dog   learn the token's embedding
  generate INPUT_JSON OUT_DIR MODEL      OUT_DIR/{concept id}/{prompt index}/0.png ... 24.png
  evaluate INPUT_JSON OUT_DIR --concept-root DIR --clip CLIP_DIR   the course's CLIP scores
  figure   MODEL OUT_PNG --tokens '<new1>' '<new3>'              two learned concepts in one prompt

MODEL is a diffusers folder or the original single-file checkpoint (sd-v1-4.ckpt, .safetensors);
nothing is downloaded. Learned embeddings live in EMBEDS_DIR/{token without <>}.safetensors.
"""
import argparse
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach a model hub

import numpy as np
import torch
from diffusers import DDPMScheduler
from tqdm import tqdm

from models.sd_loading import load_pipeline
from models.textual_inversion import (
    SAMPLERS,
    Sampling,
    adam_rows,
    add_placeholder,
    check_prompt_lengths,
    diffusion_loss,
    embeds_path,
    expand_placeholder,
    load_adam_rows,
    optimise,
    pipeline_prompts,
    prepare_sampling,
    sample,
    save_learned_embeds,
    setup_training,
)
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.cli import (
    check_replaceable,
    check_writable_dir,
    finite_float,
    missing_paths,
    nonnegative_int,
    positive_float,
    positive_int,
    skip_missing,
    staged_dir,
)
from utils.clip_score import IMAGES_PER_PROMPT, ClipScorer, generated_file, load_generated, top_k_means
from utils.errors import UserError, cli
from utils.images import labelled_grid, load_rgb
from utils.runtime import DTYPES, pick_device, seed_everything
from utils.ti_data import LEARNED_TOKEN, ConceptImages, image_files, read_prompt_file
from utils.training import (
    LossMeter,
    TrainLog,
    accelerated,
    describe,
    generator_states,
    process_generator,
    resume_note,
)

ROOT = Path(__file__).resolve().parent
DEFAULT_EMBEDS = ROOT / "checkpoints" / "p3_textual_inversion"
PROG = "p3_textual_inversion.py"


def token_arg(text: str) -> str:
    """`--token`: a learned token is written in angle brackets, as the course's input.json names them."""
    if not (LEARNED_TOKEN.fullmatch(text) and re.fullmatch(r"<\w[\w.-]*>", text)):  # it names files: no '/'
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


def parse_args(argv=None):
    fmt = argparse.ArgumentDefaultsHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (train under a launcher: auto or cuda)")
    common.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="model precision; learned embeddings stay fp32 "
                             "(auto: bf16 to train, fp16 to sample on CUDA, fp32 on CPU)")
    common.add_argument("--skip-missing", action="store_true",
                        help="if an input (model, embeddings, images, CLIP) is missing, say which and exit 0")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument("--embeds-dir", type=Path, default=DEFAULT_EMBEDS,
                          help="folder of learned embeddings, one {token without <>}.safetensors per token")
    sampling.add_argument("--sampler", choices=sorted(SAMPLERS), default="dpm++", help="diffusers scheduler")
    sampling.add_argument("--steps", type=positive_int, default=30, help="denoising steps")
    sampling.add_argument("--guidance", type=finite_float, default=7.5, help="classifier-free guidance scale")
    sampling.add_argument("--batch-size", type=positive_int, default=5, help="images per pipeline call")
    sampling.add_argument("--resolution", type=resolution_arg, default=None,
                          help="image side in pixels (default: the model's own, 512 for SD v1)")
    sampling.add_argument("--seed", type=nonnegative_int, default=0, help="image i of every prompt starts from seed + i")

    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", parents=[common], formatter_class=fmt, help="learn a placeholder's embedding")
    t.add_argument("concept_dir", type=Path, help="folder of the concept's images (e.g. hw2_data/textual_inversion/0)")
    t.add_argument("model", type=Path, help="SD v1 checkpoint (.ckpt/.safetensors) or diffusers folder")
    t.add_argument("--token", required=True, type=token_arg, help="placeholder token in angle brackets, e.g. '<new1>'")
    t.add_argument("--initializer", required=True, help="one-token word the embedding starts from, e.g. dog")
    t.add_argument("--style", action="store_true", help="caption with style templates ('a painting in the style of')")
    t.add_argument("--num-vectors", type=positive_int, default=1, help="embedding vectors learned for the placeholder")
    t.add_argument("--steps", type=positive_int, default=3000, help="optimisation steps")
    t.add_argument("--lr", type=positive_float, default=5e-3, help="AdamW learning rate (constant)")
    t.add_argument("--batch-size", type=positive_int, default=4,
                   help="images per step and process: the global batch is this x the number of processes "
                        "(accelerate launch --num_processes N)")
    t.add_argument("--resolution", type=resolution_arg, default=512, help="training crop side in pixels")
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random 75-100%% crops and horizontal flips (else centre crops)")
    t.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of images, crops, captions, noise and timesteps (process 0's; the others derive theirs)")
    t.add_argument("--embeds-dir", type=Path, default=DEFAULT_EMBEDS,
                   help="where {token}.safetensors is written; one already there is replaced only when resuming "
                        "the run that wrote it (--resume, its --run-dir) or with --overwrite")
    t.add_argument("--overwrite", action="store_true",
                   help="let a fresh run replace EMBEDS_DIR/{token}.safetensors learned before (else it refuses)")
    t.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "p3_textual_inversion",
                   help="resume state and train_log.jsonl go to RUN_DIR/{token without <>}/")
    t.add_argument("--save-every", type=positive_int, default=500, help="save embeddings and resume state every N steps")
    t.add_argument("--log-every", type=positive_int, default=50,
                   help="every N steps: the mean loss to the progress bar and a line of RUN_DIR/{token}/train_log.jsonl")
    t.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR/{token}/last.pt if it exists, else start a fresh run there")

    g = sub.add_parser("generate", parents=[common, sampling], formatter_class=fmt,
                       help="the graded images of every concept and prompt of INPUT_JSON")
    g.add_argument("input_json", type=Path, help="the course's input.json")
    g.add_argument("out_dir", type=Path, help="OUT_DIR/{concept id}/{prompt index}/{0..24}.png are written; "
                                              "an earlier OUT_DIR of this layout is replaced whole at the end")
    g.add_argument("model", type=Path, help="SD v1 checkpoint (.ckpt/.safetensors) or diffusers folder")

    e = sub.add_parser("evaluate", parents=[common], formatter_class=fmt, help="the course's CLIP scores")
    e.add_argument("input_json", type=Path, help="the course's input.json (with prompt_4_clip_eval and baseline)")
    e.add_argument("out_dir", type=Path, help="folder written by `generate`")
    e.add_argument("--concept-root", type=Path, required=True,
                   help="folder holding the reference images as {concept id}/*.jpg")
    e.add_argument("--clip", type=Path, required=True, help="local transformers CLIP folder (clip-vit-base-patch32)")
    e.add_argument("--json", type=Path, default=None, help="also write the scores here")

    f = sub.add_parser("figure", parents=[common, sampling], formatter_class=fmt,
                       help="two learned concepts in one prompt, both orders")
    f.add_argument("model", type=Path, help="SD v1 checkpoint (.ckpt/.safetensors) or diffusers folder")
    f.add_argument("out_png", type=Path, help="figure to write")
    f.add_argument("--tokens", nargs=2, required=True, metavar="TOKEN", type=token_arg,
                   help="two learned tokens, e.g. '<new1>' '<new3>'")
    f.add_argument("--template", type=template_arg, default="a {} next to a {}", help="prompt with exactly two '{}'")
    f.add_argument("--num", type=positive_int, default=4, help="samples per prompt")
    f.add_argument("--tile", type=positive_int, default=256, help="tile side in the figure")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------- helpers

def missing(paths: dict, args, hint: str = "") -> bool:
    """True if --skip-missing and some input is absent (after saying which); a UserError without the flag."""
    return skip_missing(f"{PROG} {args.command}", missing_paths(paths), args.skip_missing, hint)


TRAIN_HINT = f"learned embeddings come from `{PROG} train CONCEPT_DIR MODEL --token TOKEN --initializer WORD`"


def sampling_of(args) -> Sampling:
    return Sampling(args.seed, args.batch_size, args.steps, args.guidance, args.resolution)


# ------------------------------------------------------------------------------------------- train
@dataclass
class TrainResult:
    embeds: Path                     # the learned embeddings, {token}.safetensors
    text_encoder: object | None      # the text encoder with the learned rows (None if nothing was trained)
    tokenizer: object | None
    ids: list[int] | None            # the placeholder's token ids


def check_run(last: Path, resume: bool) -> bool:
    """True to resume from `last`; refuse to start a fresh run over an earlier one."""
    check_writable_dir(last.parent, "--run-dir")
    if last.exists() and not resume:
        raise UserError(f"--run-dir {last.parent}: already holds a run of this token (last.pt); add --resume to "
                        "continue it, or choose another --run-dir")
    return resume and last.exists()


def train(args) -> TrainResult | None:
    if missing({"concept images": args.concept_dir, "model": args.model}, args,
               "MODEL is the SD v1 checkpoint (sd-v1-4.ckpt) or a diffusers folder"):
        return None
    with accelerated(args.device, args.dtype, cuda="bf16", cpu="fp32") as (accelerator, dtype):
        return _train(args, accelerator, dtype)


def _train(args, accelerator, dtype) -> TrainResult:
    main_process = accelerator.is_main_process
    line = describe(accelerator)
    if main_process:
        print(line, flush=True)
    run = args.run_dir / args.token.strip("<>")
    last, out = run / "last.pt", embeds_path(args.embeds_dir, args.token)
    check_writable_dir(args.embeds_dir, "--embeds-dir")
    resuming = check_run(last, args.resume)
    if out.exists() and not resuming and not args.overwrite:
        raise UserError(f"--embeds-dir {args.embeds_dir}: already holds {args.token}'s learned embeddings "
                        f"({out.name}); add --overwrite to replace them, or --resume with the --run-dir that made them")
    state = None
    if resuming:
        state = load_checkpoint(last, required=("config", "step", "vectors", "adam"),
                                what="textual-inversion resume state")
        if (state["config"].get("token"), state["config"].get("num_vectors")) != (args.token, args.num_vectors):
            raise UserError(f"{last}: was trained for {state['config'].get('token')} with "
                            f"{state['config'].get('num_vectors')} vector(s), not {args.token} with {args.num_vectors}")
        if state["step"] >= args.steps and out.exists():
            if main_process:
                print(f"{args.token}: already trained for {state['step']} steps ({out})")
            return TrainResult(out, None, None, None)
    device = accelerator.device
    seed_everything(args.seed)
    data = ConceptImages(args.concept_dir, args.resolution, augment=args.augment, style=args.style)
    pipe = load_pipeline(args.model)
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    ids = add_placeholder(tokenizer, text_encoder, args.token, args.initializer, args.num_vectors)
    placeholder = expand_placeholder(args.token, args.token, args.num_vectors)
    check_prompt_lengths(tokenizer, [t.format(args.token) for t in data.templates],  # the longest caption must fit
                         f"--num-vectors {args.num_vectors}",
                         lambda caption: expand_placeholder(caption, args.token, args.num_vectors))
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    weight, original, opt = setup_training(pipe, device, dtype, args.lr)

    config = {"token": args.token, "initializer": args.initializer, "num_vectors": args.num_vectors,
              "style": args.style, "model": args.model.name, "resolution": args.resolution,
              "training": {"num_processes": accelerator.num_processes, "batch_per_process": args.batch_size,
                           "global_batch": args.batch_size * accelerator.num_processes}}
    step, saved_gens = 0, None
    if state is not None:
        with torch.no_grad():
            weight[ids] = state["vectors"].to(weight)
        load_adam_rows(opt, weight, ids, state["adam"])
        step = state["step"]
        saved_gens = state.get("generators", [state["generator"]] if "generator" in state else None)
        if main_process:
            print(f"resuming from {last} at step {step}")
            note = resume_note(state["config"].get("training"), accelerator, args.batch_size)
            if note:
                print(note)
    gen = process_generator(accelerator, args.seed, saved_gens, step)
    opt = accelerator.prepare(opt)  # text encoder not wrapped in DDP: `average` below sends the learned rows only
    average = None if accelerator.num_processes == 1 else lambda rows: accelerator.reduce(rows, reduction="mean")

    def save():
        gens = generator_states(gen)  # collective: every process takes part
        if main_process:
            save_learned_embeds(out, args.token, weight[ids], {**config, "steps": step})
            save_checkpoint({"config": config, "step": step, "vectors": weight[ids].detach().cpu(),
                             "adam": adam_rows(opt, weight, ids), "generators": gens}, last)

    if main_process:
        print(f"{args.token} ({args.num_vectors} vector(s), from '{args.initializer}'): {len(data)} images, "
              f"{dtype}, batch {args.batch_size} x {accelerator.num_processes} process(es), steps {step}->{args.steps}")
    log, meter = TrainLog(run / "train_log.jsonl", main_process, resumed_at=step), LossMeter(accelerator)
    bar = tqdm(total=args.steps, initial=step, desc=f"train {args.token}", disable=args.quiet or not main_process,
               dynamic_ncols=True)
    start, start_step = time.time(), step
    while step < args.steps:
        pixels, templates = data.batch(args.batch_size, gen)
        input_ids = tokenizer([t.format(placeholder) for t in templates], padding="max_length", truncation=True,
                              max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        loss = diffusion_loss(unet, vae, text_encoder, scheduler, pixels, input_ids, gen)
        optimise(opt, loss, weight, original, ids, backward=accelerator.backward, average=average)
        step += 1
        meter.add(loss)
        bar.update(1)
        if step % args.log_every == 0 or step == args.steps:
            mean = meter.mean()
            log.write(step, mean, args.lr)
            bar.set_postfix(loss=f"{mean:.4f}")
        if step % args.save_every == 0 or step == args.steps:
            save()
    bar.close()
    accelerator.wait_for_everyone()
    if main_process:
        print(f"done: {step - start_step} steps in {time.time() - start:.0f} s; embeddings {out}")
    return TrainResult(out, text_encoder, tokenizer, ids)


# ---------------------------------------------------------------------------------------- generate
def generate(args):
    if missing({"prompt json": args.input_json}, args):
        return None
    concepts = read_prompt_file(args.input_json)
    tokens = sorted({t for c in concepts for p in c.prompts for t in LEARNED_TOKEN.findall(p)})
    if missing({"model": args.model, **{f"learned embeddings of {t}": embeds_path(args.embeds_dir, t)
                                        for t in tokens}}, args, TRAIN_HINT):
        return None
    check_writable_dir(args.out_dir)
    check_replaceable(args.out_dir, "OUT_DIR", generated_file)
    pipe = prepare_sampling(args.model, args.embeds_dir, tokens, args.sampler, args.device, args.dtype)
    settings = sampling_of(args)
    jobs = [(c.id, i, p) for c in concepts for i, p in enumerate(c.prompts)]
    check_prompt_lengths(pipe.tokenizer, [p for _, _, p in jobs], str(args.input_json), pipeline_prompts(pipe))
    start = time.time()
    with staged_dir(args.out_dir) as staging:  # a rerun never leaves a mix of old and new images
        for cid, i, prompt in tqdm(jobs, desc="generate", disable=args.quiet, dynamic_ncols=True):
            folder = staging / cid / str(i)
            folder.mkdir(parents=True)
            for k, image in enumerate(sample(pipe, prompt, IMAGES_PER_PROMPT, settings)):
                image.save(folder / f"{k}.png")
    print(f"wrote {len(jobs)} x {IMAGES_PER_PROMPT} images to {args.out_dir} in {time.time() - start:.0f} s")
    return args.out_dir


# ---------------------------------------------------------------------------------------- evaluate
def evaluate(args):
    inputs = {"prompt json": args.input_json, "generated images": args.out_dir,
              "reference images": args.concept_root, "CLIP model": args.clip}
    if missing(inputs, args, "generate the images first; --clip is a local copy of openai/clip-vit-base-patch32"):
        return None
    concepts = read_prompt_file(args.input_json)
    scorer = ClipScorer(args.clip, pick_device(args.device))
    results = []
    print(f"{'concept':>7} {'prompt':>6} {'image':>7} {'text':>7} {'baseline':>9}  result  prompt_4_clip_eval")
    for c in concepts:
        if c.clip_prompts is None or c.baselines is None:
            raise UserError(f"{args.input_json}: concept {c.id} has no prompt_4_clip_eval/baseline to score against")
        references = [load_rgb(p) for p in image_files(args.concept_root / c.id)]
        if not references:
            raise UserError(f"{args.concept_root / c.id}: no reference images")
        for i, (text, (base_img, base_txt)) in enumerate(zip(c.clip_prompts, c.baselines)):
            images = load_generated(args.out_dir / c.id / str(i))
            img, txt = top_k_means(scorer.image_scores(images, references), scorer.text_scores(images, text))
            passed = img >= base_img and txt >= base_txt
            results.append({"concept": c.id, "prompt": i, "image_score": img, "text_score": txt,
                            "baseline": [base_img, base_txt], "pass": passed})
            print(f"{c.id:>7} {i:>6} {img:7.2f} {txt:7.2f} {base_img:4g}/{base_txt:<4g}  "
                  f"{'PASS' if passed else 'FAIL':6}  {text}")
    print(f"{sum(r['pass'] for r in results)}/{len(results)} prompts pass their baseline")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


# ------------------------------------------------------------------------------------------ figure
def figure(args):
    a, b = args.tokens
    if missing({"model": args.model, **{f"learned embeddings of {t}": embeds_path(args.embeds_dir, t)
                                        for t in args.tokens}}, args, TRAIN_HINT):
        return None
    check_writable_dir(args.out_png.parent, "OUT_PNG's folder")
    pipe = prepare_sampling(args.model, args.embeds_dir, list(args.tokens), args.sampler, args.device, args.dtype)
    settings = sampling_of(args)
    prompts = [args.template.format(a, b), args.template.format(b, a)]
    rows = []
    for prompt in tqdm(prompts, desc="figure", disable=args.quiet):
        rows.append([np.asarray(im.resize((args.tile, args.tile))) for im in sample(pipe, prompt, args.num, settings)])
    args.out_png.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(np.array(rows), row_labels=prompts, scale=1,
                  title=f"two learned concepts in one prompt (seeds {args.seed}..{args.seed + args.num - 1})"
                  ).save(args.out_png)
    print(f"wrote {args.out_png}")
    return args.out_png


@cli(PROG)
def main(argv=None):
    args = parse_args(argv)
    return {"train": train, "generate": generate, "evaluate": evaluate, "figure": figure}[args.command](args)


if __name__ == "__main__":
    main()
