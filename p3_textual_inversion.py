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
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach a model hub

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, PNDMScheduler
from tqdm import tqdm

from models.sd_loading import load_pipeline
from models.textual_inversion import (
    adam_rows,
    add_placeholder,
    diffusion_loss,
    expand_placeholder,
    load_adam_rows,
    load_learned_embeds,
    optimise,
    sample_images,
    save_learned_embeds,
    setup_training,
)
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.clip_score import IMAGES_PER_PROMPT, ClipScorer, load_generated, top_k_means
from utils.errors import UserError, cli
from utils.images import labelled_grid
from utils.runtime import DTYPES, pick_device, resolve_dtype, seed_everything
from utils.ti_data import LEARNED_TOKEN, ConceptImages, image_files, open_rgb, read_prompt_file

ROOT = Path(__file__).resolve().parent
DEFAULT_EMBEDS = ROOT / "checkpoints" / "p3_textual_inversion"
SAMPLERS = {"dpm++": DPMSolverMultistepScheduler, "ddim": DDIMScheduler, "pndm": PNDMScheduler}
PROG = "p3_textual_inversion.py"


def parse_args(argv=None):
    fmt = argparse.ArgumentDefaultsHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
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
    sampling.add_argument("--steps", type=int, default=30, help="denoising steps")
    sampling.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    sampling.add_argument("--batch-size", type=int, default=5, help="images per pipeline call")
    sampling.add_argument("--resolution", type=int, default=512, help="image side in pixels")
    sampling.add_argument("--seed", type=int, default=0, help="image i of every prompt starts from seed + i")

    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", parents=[common], formatter_class=fmt, help="learn a placeholder's embedding")
    t.add_argument("concept_dir", type=Path, help="folder of the concept's images (e.g. hw2_data/textual_inversion/0)")
    t.add_argument("model", type=Path, help="SD v1 checkpoint (.ckpt/.safetensors) or diffusers folder")
    t.add_argument("--token", required=True, help="placeholder token, e.g. '<new1>'")
    t.add_argument("--initializer", required=True, help="one-token word the embedding starts from, e.g. dog")
    t.add_argument("--style", action="store_true", help="caption with style templates ('a painting in the style of')")
    t.add_argument("--num-vectors", type=int, default=1, help="embedding vectors learned for the placeholder")
    t.add_argument("--steps", type=int, default=3000, help="optimisation steps")
    t.add_argument("--lr", type=float, default=5e-3, help="AdamW learning rate (constant)")
    t.add_argument("--batch-size", type=int, default=4, help="images per step")
    t.add_argument("--resolution", type=int, default=512, help="training crop side in pixels")
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="random 75-100%% crops and horizontal flips (else centre crops)")
    t.add_argument("--seed", type=int, default=0, help="seed of images, crops, captions, noise and timesteps")
    t.add_argument("--embeds-dir", type=Path, default=DEFAULT_EMBEDS, help="where {token}.safetensors is written")
    t.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "p3_textual_inversion",
                   help="resume state goes to RUN_DIR/{token}/last.pt")
    t.add_argument("--save-every", type=int, default=500, help="save embeddings and resume state every N steps")
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR/{token}/last.pt if it exists")

    g = sub.add_parser("generate", parents=[common, sampling], formatter_class=fmt,
                       help="the graded images of every concept and prompt of INPUT_JSON")
    g.add_argument("input_json", type=Path, help="the course's input.json")
    g.add_argument("out_dir", type=Path, help="OUT_DIR/{concept id}/{prompt index}/{0..24}.png are written")
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
    f.add_argument("--tokens", nargs=2, required=True, metavar="TOKEN",
                   help="two learned tokens, e.g. '<new1>' '<new3>'")
    f.add_argument("--template", default="a {} next to a {}", help="prompt with two '{}'")
    f.add_argument("--num", type=int, default=4, help="samples per prompt")
    f.add_argument("--tile", type=int, default=256, help="tile side in the figure")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------- helpers
def embeds_path(embeds_dir: Path, token: str) -> Path:
    return Path(embeds_dir) / f"{token.strip('<>')}.safetensors"


def missing(paths: dict, args, hint: str = "") -> bool:
    """True (after printing what is missing) if --skip-missing and some input is absent; else exit on it."""
    absent = [f"{what}: {path}" for what, path in paths.items() if not Path(path).exists()]
    if not absent:
        return False
    message = f"{PROG} {args.command}: missing " + "; ".join(absent)
    if args.skip_missing:
        print(f"{message} -- skipped")
        return True
    raise UserError(message.removeprefix(f"{PROG} {args.command}: ") + (f"\n({hint})" if hint else ""))


TRAIN_HINT = f"learned embeddings come from `{PROG} train CONCEPT_DIR MODEL --token TOKEN --initializer WORD`"


def prepare_sampling(args, tokens: list[str]):
    """The pipeline on its device with every learned token loaded (diffusers' load_textual_inversion)."""
    device = pick_device(args.device)
    pipe = load_pipeline(args.model)
    for token in tokens:
        path = embeds_path(args.embeds_dir, token)
        stored, _ = load_learned_embeds(path)
        if stored != token:
            raise UserError(f"{path}: holds embeddings for {stored}, not {token}")
        pipe.load_textual_inversion(str(path), local_files_only=True)
    pipe.scheduler = SAMPLERS[args.sampler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, resolve_dtype(args.dtype, device, cuda="fp16"))


def sample(pipe, prompt: str, num: int, args) -> list:
    return sample_images(pipe, prompt, num, seed=args.seed, batch_size=args.batch_size, steps=args.steps,
                         guidance=args.guidance, resolution=args.resolution)


# ------------------------------------------------------------------------------------------- train
def train(args):
    if missing({"concept images": args.concept_dir, "model": args.model}, args,
               "MODEL is the SD v1 checkpoint (sd-v1-4.ckpt) or a diffusers folder"):
        return None
    last = args.run_dir / args.token.strip("<>") / "last.pt"
    out = embeds_path(args.embeds_dir, args.token)
    state = None
    if args.resume and last.exists():
        state = load_checkpoint(last, required=("config", "step", "vectors", "adam", "generator"),
                                what="textual-inversion resume state")
        if (state["config"].get("token"), state["config"].get("num_vectors")) != (args.token, args.num_vectors):
            raise UserError(f"{last}: was trained with {state['config']}, not token {args.token} "
                            f"with {args.num_vectors} vectors")
        if state["step"] >= args.steps and out.exists():
            print(f"{args.token}: already trained for {state['step']} steps ({out})")
            return argparse.Namespace(embeds=out, text_encoder=None, tokenizer=None, ids=None)
    device = pick_device(args.device)
    dtype = resolve_dtype(args.dtype, device, cuda="bf16")
    gen = seed_everything(args.seed)
    data = ConceptImages(args.concept_dir, args.resolution, augment=args.augment, style=args.style)
    pipe = load_pipeline(args.model)
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    ids = add_placeholder(tokenizer, text_encoder, args.token, args.initializer, args.num_vectors)
    placeholder = expand_placeholder(args.token, args.token, args.num_vectors)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    weight, original, opt = setup_training(pipe, device, dtype, args.lr)

    config = {"token": args.token, "initializer": args.initializer, "num_vectors": args.num_vectors,
              "style": args.style, "model": args.model.name, "resolution": args.resolution}
    step = 0
    if state is not None:
        with torch.no_grad():
            weight[ids] = state["vectors"].to(weight)
        load_adam_rows(opt, weight, ids, state["adam"])
        gen.set_state(state["generator"])
        step = state["step"]
        print(f"resuming from {last} at step {step}")

    def save():
        save_learned_embeds(out, args.token, weight[ids], {**config, "steps": step})
        save_checkpoint({"config": config, "step": step, "vectors": weight[ids].detach().cpu(),
                         "adam": adam_rows(opt, weight, ids), "generator": gen.get_state()}, last)

    print(f"{args.token} ({args.num_vectors} vector(s), from '{args.initializer}'): {len(data)} images, "
          f"device {device}, {dtype}, steps {step}->{args.steps}")
    bar = tqdm(total=args.steps, initial=step, desc=f"train {args.token}", disable=args.quiet, dynamic_ncols=True)
    start, running = time.time(), None
    while step < args.steps:
        pixels, templates = data.batch(args.batch_size, gen)
        input_ids = tokenizer([t.format(placeholder) for t in templates], padding="max_length", truncation=True,
                              max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        loss = diffusion_loss(unet, vae, text_encoder, scheduler, pixels, input_ids, gen)
        optimise(opt, loss, weight, original, ids)
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if step % args.save_every == 0:
            save()
    bar.close()
    save()
    print(f"done: {step} steps in {time.time() - start:.0f} s; embeddings {out}")
    return argparse.Namespace(embeds=out, text_encoder=text_encoder, tokenizer=tokenizer, ids=ids)


# ---------------------------------------------------------------------------------------- generate
def generate(args):
    if missing({"prompt json": args.input_json}, args):
        return None
    concepts = read_prompt_file(args.input_json)
    tokens = sorted({t for c in concepts for p in c.prompts for t in LEARNED_TOKEN.findall(p)})
    if missing({"model": args.model, **{f"learned embeddings of {t}": embeds_path(args.embeds_dir, t)
                                        for t in tokens}}, args, TRAIN_HINT):
        return None
    pipe = prepare_sampling(args, tokens)
    jobs = [(c.id, i, p) for c in concepts for i, p in enumerate(c.prompts)]
    start = time.time()
    for cid, i, prompt in tqdm(jobs, desc="generate", disable=args.quiet, dynamic_ncols=True):
        folder = args.out_dir / cid / str(i)
        folder.mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(sample(pipe, prompt, IMAGES_PER_PROMPT, args)):
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
        references = [open_rgb(p) for p in image_files(args.concept_root / c.id)]
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
    pipe = prepare_sampling(args, list(args.tokens))
    prompts = [args.template.format(a, b), args.template.format(b, a)]
    rows = []
    for prompt in tqdm(prompts, desc="figure", disable=args.quiet):
        rows.append([np.asarray(im.resize((args.tile, args.tile))) for im in sample(pipe, prompt, args.num, args)])
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
