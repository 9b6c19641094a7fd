"""P3: textual inversion on Stable Diffusion v1 -- learn a concept, generate the graded images, score them.

  train    CONCEPT_DIR MODEL --token '<new1>' --initializer dog   learn the token's embedding
  generate INPUT_JSON OUT_DIR MODEL      OUT_DIR/{concept id}/{prompt index}/0.png ... 24.png
  evaluate INPUT_JSON OUT_DIR --concept-root DIR --clip CLIP_DIR   the course's CLIP scores
  figure   MODEL OUT_PNG --tokens '<new1>' '<new3>'              two learned concepts in one prompt

MODEL is a diffusers folder or the original single-file checkpoint (sd-v1-4.ckpt, .safetensors);
nothing is downloaded. Learned embeddings live in EMBEDS_DIR/{token without <>}.safetensors.
"""
import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach a model hub

import numpy as np
import torch
from diffusers import DDPMScheduler
from tqdm import tqdm

from models.sd_loading import load_pipeline
from models.stable_diffusion import (
    adam_rows,
    add_placeholder,
    check_prompt_lengths,
    embeds_path,
    learned_pipeline,
    load_adam_rows,
    sample,
    save_learned_embeds,
    tokenize,
)
from models.textual_inversion import diffusion_loss, expand_placeholder, optimise, setup_training
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.cli import (
    check_replaceable,
    check_writable_dir,
    nonnegative_int,
    positive_float,
    positive_int,
    write_json,
)
from utils.clip_score import ClipScorer, generated_file, load_generated, top_k_means
from utils.errors import UserError, cli
from utils.images import labelled_grid, load_rgb
from utils.outputs import TRAIN_LOG_JSONL
from utils.runtime import pick_device, seed_everything
from p3_sd_cli import (
    common_flags,
    missing,
    prompt_tokens,
    resolution_arg,
    sampling_flags,
    sampling_of,
    template_arg,
    token_arg,
    write_graded_images,
)
from utils.ti_data import ConceptImages, image_files, read_prompt_file
from utils.training import accelerated, describe, generator_states, process_generator, resume_note, run_steps

ROOT = Path(__file__).resolve().parent
DEFAULT_EMBEDS = ROOT / "checkpoints" / "p3_textual_inversion"
PROG = "p3_textual_inversion.py"


def parse_args(argv=None):
    fmt = argparse.ArgumentDefaultsHelpFormatter
    common = common_flags("model, embeddings, images, CLIP")
    sampling = sampling_flags(guidance=7.5, resolution=None)
    sampling.add_argument("--embeds-dir", type=Path, default=DEFAULT_EMBEDS,
                          help="folder of learned embeddings, one {token without <>}.safetensors per token")

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


TRAIN_HINT = f"learned embeddings come from `{PROG} train CONCEPT_DIR MODEL --token TOKEN --initializer WORD`"


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
    if missing(PROG, args, {"concept images": args.concept_dir, "model": args.model},
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

    def train_step(step: int) -> torch.Tensor:
        pixels, templates = data.batch(args.batch_size, gen)
        input_ids = tokenize(tokenizer, [t.format(placeholder) for t in templates])
        loss = diffusion_loss(unet, vae, text_encoder, scheduler, pixels, input_ids, gen)
        optimise(opt, loss, weight, original, ids, backward=accelerator.backward, average=average)
        return loss

    def save(step: int) -> None:
        gens = generator_states(gen)  # collective: every process takes part
        if main_process:
            save_learned_embeds(out, args.token, weight[ids], {**config, "steps": step})
            save_checkpoint({"config": config, "step": step, "vectors": weight[ids].detach().cpu(),
                             "adam": adam_rows(opt, weight, ids), "generators": gens}, last)

    if main_process:
        print(f"{args.token} ({args.num_vectors} vector(s), from '{args.initializer}'): {len(data)} images, "
              f"{dtype}, batch {args.batch_size} x {accelerator.num_processes} process(es), steps {step}->{args.steps}")
    start, start_step = time.time(), step
    step = run_steps(accelerator, train_step, save, step=step, total=args.steps, lr=args.lr, log_every=args.log_every,
                     save_every=args.save_every, log_path=run / TRAIN_LOG_JSONL, desc=f"train {args.token}",
                     quiet=args.quiet)
    if main_process:
        print(f"done: {step - start_step} steps in {time.time() - start:.0f} s; embeddings {out}")
    return TrainResult(out, text_encoder, tokenizer, ids)


# ---------------------------------------------------------------------------------------- generate
def generate(args):
    if missing(PROG, args, {"prompt json": args.input_json}):
        return None
    concepts = read_prompt_file(args.input_json)
    tokens = prompt_tokens(concepts)
    if missing(PROG, args, {"model": args.model, **{f"learned embeddings of {t}": embeds_path(args.embeds_dir, t)
                                                    for t in tokens}}, TRAIN_HINT):
        return None
    check_writable_dir(args.out_dir)
    check_replaceable(args.out_dir, "OUT_DIR", generated_file)
    pipe = learned_pipeline(args.model, args.embeds_dir, tokens, args.sampler, args.device, args.dtype)
    return write_graded_images(pipe, concepts, args.out_dir, sampling_of(args), str(args.input_json), args.quiet)


# ---------------------------------------------------------------------------------------- evaluate
def evaluate(args):
    inputs = {"prompt json": args.input_json, "generated images": args.out_dir,
              "reference images": args.concept_root, "CLIP model": args.clip}
    if missing(PROG, args, inputs, "generate the images first; --clip is a local copy of openai/clip-vit-base-patch32"):
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
        write_json(args.json, results)
    return results


# ------------------------------------------------------------------------------------------ figure
def figure(args):
    a, b = args.tokens
    if missing(PROG, args, {"model": args.model, **{f"learned embeddings of {t}": embeds_path(args.embeds_dir, t)
                                                    for t in args.tokens}}, TRAIN_HINT):
        return None
    check_writable_dir(args.out_png.parent, "OUT_PNG's folder")
    pipe = learned_pipeline(args.model, args.embeds_dir, list(args.tokens), args.sampler, args.device, args.dtype)
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
