"""P3: Custom Diffusion (Kumari et al., CVPR 2023) on Stable Diffusion v1, beside textual inversion.

  train    CONCEPT_DIR [CONCEPT_DIR ...] MODEL --tokens '<new1>' ['<new3>' ...] --class-words dog [cat ...]
           fine-tune attn2.to_k / to_v and the tokens' embeddings, all concepts jointly, with prior preservation
  merge    WEIGHTS_DIR [WEIGHTS_DIR ...] MODEL --out-dir DIR   closed-form merge of separately trained concepts
  generate INPUT_JSON OUT_DIR MODEL --weights DIR   OUT_DIR/{concept id}/{prompt index}/0.png ... 24.png
  figure   MODEL OUT_PNG --tokens '<new1>' '<new3>' [--concept-dirs DIR DIR --clip CLIP_DIR]
           textual inversion vs Custom Diffusion (joint, merged); with the reference photos and a CLIP, also
           their image and text alignment in OUT_PNG's .json

MODEL is a diffusers folder or the original single-file checkpoint (sd-v1-4.ckpt); nothing is downloaded.
Training runs in one process, or on several GPUs with `accelerate launch p3_custom_diffusion.py train ...`.
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

from models.custom_diffusion import (
    CLASS_PROMPT,
    INSTANCE_PROMPT,
    LARGE_PREFIXES,
    SMALL_PREFIXES,
    WEIGHTS_NAME,
    caption_features,
    custom_diffusion_loss,
    custom_pipeline,
    kv_state,
    load_kv_state,
    merge_kv,
    read_config,
    read_kv,
    save_weights,
    scaled_lr,
    setup_training,
    training_batch,
    zero_frozen_rows,
)
from models.sd_loading import load_pipeline
from models.stable_diffusion import (
    Sampling,
    adam_rows,
    embeds_path,
    learned_pipeline,
    load_adam_rows,
    load_learned_tokens,
    prepare_sampling,
    restore_rows,
    sample,
    tokenize,
)
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.cli import (
    check_apart,
    check_replaceable,
    check_writable_dir,
    missing_paths,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    staged_dir,
    staged_file,
    write_json,
)
from utils.clip_score import ClipScorer, alignment, generated_file, with_class_words
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
from utils.ti_data import OBJECT_TEMPLATES, ConceptImages, image_files, read_prompt_file
from utils.training import accelerated, describe, generator_states, process_generator, run_steps

ROOT = Path(__file__).resolve().parent
RUNS = ROOT / "runs" / "p3_custom_diffusion"
STEPS_PER_CONCEPT = 250  # the paper's schedule
PROG = "p3_custom_diffusion.py"
MAX_TARGET_ERROR = 1e-3  # merge: the largest relative miss of a concept's own outputs that still counts as a fit


def parse_args(argv=None):
    fmt = argparse.ArgumentDefaultsHelpFormatter
    common = common_flags("model, weights, images")
    sampling = sampling_flags(guidance=6.0, resolution=512, guidance_note=" (the paper samples with 6)")
    model = {"type": Path, "help": "SD v1 checkpoint (.ckpt/.safetensors) or diffusers folder"}

    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", parents=[common], formatter_class=fmt, help="train concepts jointly")
    t.add_argument("concept_dirs", type=Path, nargs="+", help="one image folder per concept")
    t.add_argument("model", **model)
    t.add_argument("--tokens", nargs="+", required=True, type=token_arg,
                   help="one modifier token per concept, e.g. '<new1>'")
    t.add_argument("--class-words", nargs="+", required=True,
                   help="one class word per concept (captions 'photo of a <new1> dog'; regularization 'photo of a dog')")
    t.add_argument("--out-dir", type=Path, default=RUNS / "joint",
                   help="weights, embeddings, config.json, train_log.jsonl and the resume state last.pt")
    t.add_argument("--reg-dir", type=Path, default=RUNS / "class_images",
                   help="cache of regularization images, REG_DIR/{class word}/, generated once by MODEL")
    t.add_argument("--num-class-images", type=positive_int, default=200, help="regularization images per class")
    t.add_argument("--reg-steps", type=positive_int, default=25, help="DPM-Solver++ steps per regularization image")
    t.add_argument("--prior-weight", type=nonnegative_float, default=1.0, help="weight of the prior-preservation loss")
    t.add_argument("--steps", type=positive_int, default=None,
                   help=f"optimisation steps (default: {STEPS_PER_CONCEPT} per concept, the paper's)")
    t.add_argument("--lr", type=positive_float, default=1e-5,
                   help="AdamW learning rate per image: trained with lr x batch size x processes, x 2 when "
                        "--prior-weight > 0 (the rule of diffusers' train_custom_diffusion.py and the paper's code)")
    t.add_argument("--batch-size", type=positive_int, default=2,
                   help="concept images per step (and as many regularization images)")
    t.add_argument("--resolution", type=resolution_arg, default=512, help="training image side in pixels")
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="the paper's rescale augmentation (masked loss) and horizontal flips")
    t.add_argument("--seed", type=nonnegative_int, default=0, help="seed of images, crops, noise and timesteps")
    t.add_argument("--save-every", type=positive_int, default=250, help="save weights and resume state every N steps")
    t.add_argument("--log-every", type=positive_int, default=10,
                   help="every N steps: the mean loss to the progress bar and a line of OUT_DIR/train_log.jsonl")
    t.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt if it exists")

    m = sub.add_parser("merge", parents=[common], formatter_class=fmt,
                       help="merge separately trained concepts in closed form (eq. 4 of the paper)")
    m.add_argument("weights_dirs", type=Path, nargs="+", help="folders written by `train`, one or more concepts each")
    m.add_argument("model", **model)
    m.add_argument("--out-dir", type=Path, default=RUNS / "merged", help="where the merged weights go")
    m.add_argument("--reg-captions", type=Path, default=None,
                   help="text file, one regularization caption a line (the paper: 1000 LAION captions); "
                        "default: the textual-inversion templates with every class word")
    m.add_argument("--ridge", type=nonnegative_float, default=1e-3,
                   help="ridge x the mean eigenvalue of C_reg^T C_reg is added to its diagonal: the merge then "
                        "also keeps ||W - W0|| small, a regularised variant of eq. 4 that works when the captions do "
                        "not span the text features; 0 is eq. 4 exactly and needs captions that do")

    g = sub.add_parser("generate", parents=[common, sampling], formatter_class=fmt,
                       help="the graded images of every concept and prompt of INPUT_JSON")
    g.add_argument("input_json", type=Path, help="the course's input.json")
    g.add_argument("out_dir", type=Path, help="OUT_DIR/{concept id}/{prompt index}/{0..24}.png, replaced whole")
    g.add_argument("model", **model)
    g.add_argument("--weights", type=Path, default=RUNS / "joint", help="folder written by `train` or `merge`")

    f = sub.add_parser("figure", parents=[common, sampling], formatter_class=fmt,
                       help="textual inversion, Custom Diffusion joint and merged on two-concept prompts",
                       description="With --skip-missing a method whose inputs are missing is left out (the "
                                   "figure is skipped only when the model or every method is missing).")
    f.add_argument("model", **model)
    f.add_argument("out_png", type=Path, help="figure to write")
    f.add_argument("--tokens", nargs=2, required=True, metavar="TOKEN", type=token_arg, help="e.g. '<new1>' '<new3>'")
    f.add_argument("--ti-embeds", type=Path, default=ROOT / "checkpoints" / "p3_textual_inversion",
                   help="textual-inversion embeddings (p3_textual_inversion.py train)")
    f.add_argument("--joint", type=Path, default=RUNS / "joint", help="Custom Diffusion trained jointly")
    f.add_argument("--merged", type=Path, default=RUNS / "merged", help="Custom Diffusion merged")
    f.add_argument("--template", type=template_arg, default="a {} next to a {}", help="prompt with exactly two '{}'")
    f.add_argument("--num", type=positive_int, default=4, help="samples per prompt")
    f.add_argument("--tile", type=positive_int, default=256, help="tile side in the figure")
    f.add_argument("--concept-dirs", type=Path, nargs=2, metavar="DIR", default=None,
                   help="reference photos of the two concepts, in --tokens order (hw2_data/textual_inversion/0 "
                        "and 2); with --clip, OUT_PNG's .json gets each method's image and text alignment")
    f.add_argument("--clip", type=Path, default=None,
                   help="local transformers CLIP folder (clip-vit-base-patch32), the scorer of "
                        "`p3_textual_inversion.py evaluate`")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------- helpers
def check_tokens(tokens: list[str], flag: str) -> None:
    """Each token once, written as `token_arg` takes it (tokens name files)."""
    for token in tokens:
        try:
            token_arg(token)
        except argparse.ArgumentTypeError as e:
            raise UserError(f"{flag}: {e}") from None
    if len(set(tokens)) != len(tokens):
        raise UserError(f"{flag}: the same token twice in {' '.join(tokens)}")


def slug(word: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", word).strip("_") or "class"


# ------------------------------------------------------------------------------- regularization images
def class_images(args, class_words: list[str], device: torch.device, is_main: bool) -> list[Path]:
    """REG_DIR/{class word}/ with at least --num-class-images images of 'photo of a {class}' by the base
    model (image i from seed i, DPM-Solver++, guidance 6, in --dtype's sampling precision), generated once:
    only the missing ones are made, each file written whole."""
    folders = [args.reg_dir / slug(c) for c in class_words]
    todo = []
    for cls, folder in zip(class_words, folders):
        info = {"prompt": CLASS_PROMPT.format(cls=cls), "model": args.model.name, "resolution": args.resolution}
        if (folder / "info.json").is_file() and json.loads((folder / "info.json").read_text()) != info:
            raise UserError(f"{folder}: holds regularization images of {(folder / 'info.json').read_text()}, "
                            f"not {info}; delete it or pass another --reg-dir")
        have = len(image_files(folder)) if folder.is_dir() else 0
        if have < args.num_class_images:
            todo.append((folder, info, have))
    if todo and is_main:
        pipe = prepare_sampling(load_pipeline(args.model), "dpm++", device, args.dtype)
        for folder, info, have in todo:
            write_json(folder / "info.json", info)
            for i in tqdm(range(have, args.num_class_images), desc=f"class images '{info['prompt']}'",
                          disable=args.quiet, dynamic_ncols=True):
                image = sample(pipe, info["prompt"], 1, Sampling(i, 1, args.reg_steps, 6.0, args.resolution))[0]
                with staged_file(folder / f"{i:04d}.png") as tmp:
                    image.save(tmp, format="PNG")
        del pipe
    return folders


# ------------------------------------------------------------------------------------------- train
@dataclass
class TrainResult:
    out_dir: Path                    # weights, embeddings, config.json, train_log.jsonl, last.pt
    unet: object | None              # the UNet with the trained k/v (None if nothing was trained)
    text_encoder: object | None      # the text encoder with the modifier tokens' rows
    ids: list[int] | None            # the modifier tokens' ids


def train(args) -> TrainResult | None:
    n = len(args.concept_dirs)
    check_tokens(args.tokens, "--tokens")
    if not (len(args.tokens) == len(args.class_words) == n):
        raise UserError(f"{n} concept folder(s), {len(args.tokens)} --tokens and {len(args.class_words)} "
                        "--class-words: give one token and one class word per folder")
    if missing(PROG, args, {**{f"concept images {i}": d for i, d in enumerate(args.concept_dirs)}, "model": args.model},
               "MODEL is the SD v1 checkpoint (sd-v1-4.ckpt) or a diffusers folder"):
        return None
    check_writable_dir(args.out_dir, "--out-dir")
    check_writable_dir(args.reg_dir, "--reg-dir")
    with accelerated(args.device, args.dtype, cuda="bf16", cpu="fp32") as (accelerator, dtype):
        return _train(args, accelerator, dtype)


def _train(args, accelerator, dtype) -> TrainResult:
    main_process = accelerator.is_main_process
    line = describe(accelerator)
    if main_process:
        print(line, flush=True)
    total = args.steps or STEPS_PER_CONCEPT * len(args.concept_dirs)
    last = args.out_dir / "last.pt"
    config = {"tokens": args.tokens, "class_words": args.class_words, "concepts": [str(d) for d in args.concept_dirs],
              "model": args.model.name, "resolution": args.resolution, "batch_size": args.batch_size,
              "lr": args.lr, "prior_weight": args.prior_weight, "augment": args.augment, "seed": args.seed}
    if last.exists() and not args.resume:
        raise UserError(f"--out-dir {args.out_dir}: holds an earlier run ({last}); pass --resume to continue it "
                        "or choose another --out-dir")
    state = None
    if args.resume and last.exists():
        state = load_checkpoint(last, required=("config", "step", "kv", "rows", "adam", "generators"),
                                what="Custom Diffusion resume state")
        keys = ("tokens", "class_words", "resolution", "batch_size", "model")
        if any(state["config"].get(k) != config[k] for k in keys):
            saved = ", ".join(f"{k}={state['config'].get(k)}" for k in keys)
            raise UserError(f"{last}: was trained with {saved}; "
                            "resume with the same settings or choose another --out-dir")
        if len(state["generators"]) != accelerator.num_processes:  # the learning rate scales with them
            raise UserError(f"{last}: saved by {len(state['generators'])} processes, resumed with "
                            f"{accelerator.num_processes}; resume with the same number")
        if state["step"] >= total and (args.out_dir / WEIGHTS_NAME).exists():
            if main_process:
                print(f"already trained for {state['step']} steps ({args.out_dir})")
            return TrainResult(args.out_dir, None, None, None)

    device = accelerator.device
    concepts = [ConceptImages(d, args.resolution, augment=False) for d in args.concept_dirs]  # bad images: now
    reg_folders = class_images(args, args.class_words, device, main_process)
    accelerator.wait_for_everyone()
    regs = [ConceptImages(folder, args.resolution, augment=False) for folder in reg_folders]
    seed_everything(args.seed)
    pipe = load_pipeline(args.model)
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    ids, params, original = setup_training(pipe, args.tokens, device, dtype)
    weight = params[0]
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    lr = scaled_lr(args.lr, args.batch_size, accelerator.num_processes, prior_preservation=args.prior_weight > 0)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)  # weight decay as diffusers' example

    step = 0
    if state is not None:
        with torch.no_grad():
            weight[ids] = state["rows"].to(weight)
        load_kv_state(unet, state["kv"], str(last))
        optimizer.load_state_dict(state["adam"])
        load_adam_rows(optimizer, weight, ids, state["adam_rows"])
        step = state["step"]
        if state.get("scaler") and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        if main_process:
            print(f"resuming from {last} at step {step}")
    gen = process_generator(accelerator, args.seed, state["generators"] if state else None, step)
    unet_p, text_encoder_p, optimizer_p = accelerator.prepare(unet, text_encoder, optimizer)

    def train_step(step: int) -> torch.Tensor:
        pixels, masks, captions = training_batch(concepts, regs, args.tokens, args.class_words, step, args.batch_size,
                                                 args.resolution, factor, gen, augment=args.augment)
        input_ids = tokenize(tokenizer, captions)
        loss = custom_diffusion_loss(unet_p, vae, text_encoder_p, scheduler, pixels, masks, input_ids, gen,
                                     num_instance=args.batch_size, prior_weight=args.prior_weight, device=device)
        accelerator.backward(loss)
        zero_frozen_rows(weight, ids)  # so that the caption's other words do not count in the clipping norm
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer_p.step()
        optimizer_p.zero_grad(set_to_none=True)
        restore_rows(weight, original, ids)  # every row but the modifier tokens' is the base model's again
        return loss

    def save(step: int) -> None:
        generators = generator_states(gen)  # collective: every process takes part
        if not main_process:
            return
        save_weights(args.out_dir, unet, text_encoder, args.tokens, ids, {**config, "steps": step})
        adam = optimizer.state_dict()
        adam["state"].pop(0, None)  # the embedding matrix: only its trained rows are kept (adam_rows)
        save_checkpoint({"config": config, "step": step, "kv": kv_state(unet), "rows": weight[ids].detach().cpu(),
                         "adam": adam, "adam_rows": adam_rows(optimizer, weight, ids), "generators": generators,
                         "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None}, last)

    if main_process:
        print(f"{len(concepts)} concept(s) {' '.join(args.tokens)} ({' '.join(args.class_words)}): "
              f"{sum(len(c) for c in concepts)} images, {sum(len(r) for r in regs)} regularization images; "
              f"{accelerator.num_processes} process(es) on {device}, {dtype}; lr {lr:g}; steps {step}->{total}")
    start, start_step = time.time(), step
    unet_p.train()
    step = run_steps(accelerator, train_step, save, step=step, total=total, lr=lr, log_every=args.log_every,
                     save_every=args.save_every, log_path=args.out_dir / TRAIN_LOG_JSONL, quiet=args.quiet)
    if main_process:
        print(f"done: {step - start_step} steps in {time.time() - start:.0f} s; weights in {args.out_dir}")
    return TrainResult(args.out_dir, unet, text_encoder, ids)


# ------------------------------------------------------------------------------------------- merge
def target_captions(token: str, cls: str) -> list[str]:
    """The captions a concept was trained with (with the rescale augmentation's prefixes)."""
    caption = INSTANCE_PROMPT.format(token=token, cls=cls)
    return [caption] + [prefix + caption for prefix in SMALL_PREFIXES + LARGE_PREFIXES]


def merge(args):
    if missing(PROG, args, {**{f"weights {i}": d for i, d in enumerate(args.weights_dirs)}, "model": args.model}):
        return None
    check_apart(args.out_dir, "--out-dir", {**{f"weights folder {i}": d for i, d in enumerate(args.weights_dirs)},
                                            "model": args.model})  # --out-dir is replaced whole
    check_writable_dir(args.out_dir, "--out-dir")
    check_replaceable(args.out_dir, "--out-dir",  # an earlier merge: weights, embeddings, config.json (no last.pt)
                      lambda f: len(f.parts) == 1 and (f.name == "config.json" or f.suffix == ".safetensors"))
    configs = [read_config(d) for d in args.weights_dirs]
    kvs = [read_kv(d) for d in args.weights_dirs]
    tokens = [t for c in configs for t in c["tokens"]]
    check_tokens(tokens, "tokens of the weights folders")
    class_words = [w for c in configs for w in c.get("class_words", [])]
    if len(class_words) != len(tokens):
        raise UserError("every weights folder's config.json must give one class word per token")
    if args.reg_captions is not None:
        if not args.reg_captions.is_file():
            raise UserError(f"--reg-captions {args.reg_captions}: not found")
        reg_captions = [line.strip() for line in args.reg_captions.read_text().splitlines() if line.strip()]
        if not reg_captions:
            raise UserError(f"--reg-captions {args.reg_captions}: no captions in it")
    else:
        reg_captions = [template.format(cls) for cls in dict.fromkeys(class_words) for template in OBJECT_TEMPLATES]

    pipe = load_pipeline(args.model)
    for folder, config in zip(args.weights_dirs, configs):
        load_learned_tokens(pipe, folder, config["tokens"])
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    c_reg = caption_features(tokenizer, text_encoder, reg_captions)
    rank = int(torch.linalg.matrix_rank(c_reg.double(), rtol=1e-5))  # the features are float32: 1e-5 is their noise
    if not args.ridge and rank < c_reg.shape[1]:
        raise UserError(f"--ridge 0: the regularization captions' {len(c_reg)} feature rows span {rank} of the "
                        f"{c_reg.shape[1]} text-feature directions, so eq. 4 has no unique solution; "
                        f"pass --ridge > 0 or more --reg-captions")
    targets, owner = [], []  # target features of each folder's tokens, and which folder's weights they follow
    for i, config in enumerate(configs):
        for token, cls in zip(config["tokens"], config["class_words"]):
            targets.append(caption_features(tokenizer, text_encoder, target_captions(token, cls), start_token=token))
            owner.append(i)
    c_tgt = torch.cat(targets)
    base = kv_state(pipe.unet)
    for kv in kvs:
        if set(kv) != set(base):
            raise UserError("a weights folder does not fit MODEL's UNet (other attention layers); trained on another model?")
    merged, worst = {}, 0.0
    for key, w0 in tqdm(base.items(), desc="merge", disable=args.quiet):
        v = torch.cat([c @ kvs[i][key].float().T for c, i in zip(targets, owner)])  # (M, out)
        merged[key] = merge_kv(w0, c_reg, c_tgt, v, ridge=args.ridge)
        worst = max(worst, ((c_tgt @ merged[key].T - v).abs().max() / v.abs().max()).item())
    if worst > MAX_TARGET_ERROR:
        raise UserError(f"the merged weights miss the concepts' own outputs on their captions by up to {worst:.1%} "
                        f"(relative); the concepts' target captions conflict (more rows than text-feature directions?); "
                        f"nothing written")
    load_kv_state(pipe.unet, merged, "merged weights")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    config = {"tokens": tokens, "class_words": class_words, "merged_from": [str(d) for d in args.weights_dirs],
              "model": args.model.name, "ridge": args.ridge, "reg_captions": len(reg_captions),
              "target_rows": len(c_tgt)}
    with staged_dir(args.out_dir) as tmp:
        save_weights(tmp, pipe.unet, text_encoder, tokens, ids, config)
    print(f"merged {len(tokens)} concept(s) {' '.join(tokens)} into {args.out_dir} "
          f"({len(c_tgt)} target rows, {len(c_reg)} regularization rows; largest relative error on the targets {worst:.1e})")
    return args.out_dir


# ---------------------------------------------------------------------------------------- generate
def generate(args):
    if missing(PROG, args, {"prompt json": args.input_json}):
        return None
    concepts = read_prompt_file(args.input_json)
    if missing(PROG, args, {"model": args.model, "Custom Diffusion weights": args.weights / "config.json"},
               f"the weights come from `{PROG} train` or `{PROG} merge`"):
        return None
    needed, have = prompt_tokens(concepts), read_config(args.weights)["tokens"]
    if set(needed) - set(have):
        raise UserError(f"{args.input_json}: its prompts use {', '.join(sorted(set(needed) - set(have)))}, "
                        f"which {args.weights} was not trained on (it has {', '.join(have)})")
    check_apart(args.out_dir, "OUT_DIR", {"prompt json": args.input_json, "model": args.model,
                                          "--weights": args.weights})  # OUT_DIR is replaced whole
    check_writable_dir(args.out_dir, "OUT_DIR")
    check_replaceable(args.out_dir, "OUT_DIR", generated_file)
    pipe = custom_pipeline(args.model, args.weights, args.sampler, args.device, args.dtype)
    return write_graded_images(pipe, concepts, args.out_dir, sampling_of(args), str(args.input_json), args.quiet)


# ------------------------------------------------------------------------------------------ figure
METHODS = ("textual inversion", "Custom Diffusion, joint", "Custom Diffusion, merged")
METHOD_KEYS = dict(zip(METHODS, ("textual_inversion", "custom_diffusion_joint", "custom_diffusion_merged")))


@dataclass
class FigureResult:
    png: Path
    images: dict      # {(method, prompt): [PIL image, ...]}, in the figure's row order
    labels: list[str]  # the row labels
    scores: dict | None = None  # what OUT_PNG's .json holds; None when it is not written


@dataclass
class Scoring:
    scorer: ClipScorer
    references: dict  # {token: [PIL reference photo, ...]}
    class_words: dict  # {token: class word}, for the text that text alignment is measured against


def figure_scoring(args, methods: list[str], json_path: Path) -> Scoring | None:
    """What the alignment measures need, read before any sampling; None (after a one-line note) when the flags
    were not given, their paths are missing under --skip-missing, or no Custom Diffusion run among `methods`
    names the tokens' class words (its config.json: the text is the prompt with the class words)."""
    note = f"{PROG} figure: {json_path.name} not written"
    if args.concept_dirs is None or args.clip is None:
        print(f"{note} (it needs --concept-dirs and --clip)")
        return None
    absent = missing_paths({**{f"reference photos of {t}": d for t, d in zip(args.tokens, args.concept_dirs)},
                            "CLIP model": args.clip})
    if absent:  # only with --skip-missing: otherwise `figure` has stopped already
        print(f"{note}, missing {'; '.join(absent)}")
        return None
    class_words = {}
    for method, folder in ((METHODS[1], args.joint), (METHODS[2], args.merged)):
        if method in methods:
            config = read_config(folder)
            for token, word in zip(config["tokens"], config.get("class_words", [])):
                if token in args.tokens and class_words.setdefault(token, word) != word:
                    raise UserError(f"--merged {folder} trains {token} as a {word}, --joint {args.joint} as a "
                                    f"{class_words[token]}; the text alignment needs one class word per token")
    if set(class_words) != set(args.tokens):
        print(f"{note} (the class words of {' '.join(args.tokens)}, for the text alignment, come from the "
              "Custom Diffusion weights' config.json, and none of those drawn names them all)")
        return None
    references = {}
    for token, folder in zip(args.tokens, args.concept_dirs):
        references[token] = [load_rgb(p) for p in image_files(folder)]
        if not references[token]:
            raise UserError(f"--concept-dirs {folder}: no reference images of {token}")
    return Scoring(ClipScorer(args.clip, pick_device(args.device)), references, class_words)


def figure(args) -> FigureResult | None:
    a, b = args.tokens
    check_tokens(args.tokens, "--tokens")
    needs = {METHODS[0]: {f"textual-inversion embeddings of {t}": embeds_path(args.ti_embeds, t) for t in args.tokens},
             METHODS[1]: {"jointly trained weights": args.joint / "config.json"},
             METHODS[2]: {"merged weights": args.merged / "config.json"}}
    inputs = {"model": args.model}
    if not args.skip_missing:  # then every input is required, the flags' too
        inputs.update({k: v for paths in needs.values() for k, v in paths.items()})
        inputs.update({f"reference photos of {t}": d for t, d in zip(args.tokens, args.concept_dirs or [])})
        inputs["CLIP model"] = args.clip
    if missing(PROG, args, inputs, f"train them with p3_textual_inversion.py train and {PROG} train / merge"):
        return None
    methods = []
    for method, paths in needs.items():
        absent = missing_paths(paths)
        if absent:
            print(f"{PROG} figure: leaving out {method}, missing {'; '.join(absent)}")
        else:
            methods.append(method)
    if not methods:
        print(f"{PROG} figure: skipped, missing the inputs of every method")
        return None
    check_writable_dir(args.out_png.parent, "OUT_PNG's folder")
    json_path = args.out_png.with_suffix(".json")
    scoring = figure_scoring(args, methods, json_path)
    prompts = [args.template.format(a, b), args.template.format(b, a)]
    where = (args.sampler, args.device, args.dtype)
    loaders = {METHODS[0]: lambda: learned_pipeline(args.model, args.ti_embeds, list(args.tokens), *where),
               METHODS[1]: lambda: custom_pipeline(args.model, args.joint, *where),
               METHODS[2]: lambda: custom_pipeline(args.model, args.merged, *where)}
    settings = sampling_of(args)
    images, rows, labels = {}, [], []
    for method in tqdm(methods, desc="figure", disable=args.quiet):
        pipe = loaders[method]()  # one pipeline at a time
        for prompt in prompts:
            images[method, prompt] = sample(pipe, prompt, args.num, settings)
            rows.append([np.asarray(im.resize((args.tile, args.tile))) for im in images[method, prompt]])
            labels.append(f"{method}: {prompt}")
        del pipe
    args.out_png.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(np.array(rows), row_labels=labels, scale=1,
                  title=f"textual inversion vs Custom Diffusion, two learned concepts in one prompt "
                        f"(seeds {args.seed}..{args.seed + args.num - 1})"
                  ).save(args.out_png)
    print(f"wrote {args.out_png}")
    scores = None
    if scoring is not None:  # the images of the first prompt, the tokens in --tokens order
        text = with_class_words(prompts[0], scoring.class_words)
        scores = {"prompt": prompts[0], "concepts": list(args.tokens), "clip": str(args.clip), "text_prompt": text,
                  "methods": {METHOD_KEYS[m]: alignment(scoring.scorer, images[m, prompts[0]], scoring.references,
                                                        text) for m in methods}}
        write_json(json_path, scores)
        print(f"wrote {json_path}: " + "; ".join(
            f"{m}: image {', '.join(f'{t} {v:.2f}' for t, v in s['image_sim'].items())}, text {s['text_sim']:.2f}"
            for m, s in scores["methods"].items()))
    elif json_path.is_file():  # an earlier run's measures would no longer describe the figure beside them
        json_path.unlink()
        print(f"removed {json_path}, which measured an earlier figure")
    return FigureResult(args.out_png, images, labels, scores)


@cli(PROG)
def main(argv=None):
    args = parse_args(argv)
    return {"train": train, "merge": merge, "generate": generate, "figure": figure}[args.command](args)


if __name__ == "__main__":
    main()
