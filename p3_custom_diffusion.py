"""P3: Custom Diffusion (Kumari et al., CVPR 2023) on Stable Diffusion v1, beside textual inversion.

  train    CONCEPT_DIR [CONCEPT_DIR ...] MODEL --tokens '<new1>' ['<new3>' ...] --class-words dog [cat ...]
           fine-tune attn2.to_k / to_v and the tokens' embeddings, all concepts jointly, with prior preservation
  merge    WEIGHTS_DIR [WEIGHTS_DIR ...] MODEL --out-dir DIR   closed-form merge of separately trained concepts
  generate INPUT_JSON OUT_DIR MODEL --weights DIR   OUT_DIR/{concept id}/{prompt index}/0.png ... 24.png
  figure   MODEL OUT_PNG --tokens '<new1>' '<new3>'   textual inversion vs Custom Diffusion (joint, merged)

MODEL is a diffusers folder or the original single-file checkpoint (sd-v1-4.ckpt); nothing is downloaded.
Training runs in one process, or on several GPUs with `accelerate launch p3_custom_diffusion.py train ...`.
"""
import argparse
import json
import os
import re
import time
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
    kv_state,
    load_kv_state,
    load_weights,
    merge_kv,
    read_config,
    read_kv,
    save_weights,
    scaled_lr,
    setup_training,
    token_file,
    training_batch,
    zero_frozen_rows,
)
from models.sd_loading import load_pipeline
from models.textual_inversion import (
    SAMPLERS,
    adam_rows,
    check_prompt_lengths,
    embeds_path,
    load_adam_rows,
    pipeline_prompts,
    prepare_sampling,
    restore_rows,
    sample_images,
)
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.cli import (
    check_apart,
    check_replaceable,
    check_writable_dir,
    finite_float,
    missing_paths,
    nonnegative_float,
    positive_float,
    positive_int,
    skip_missing,
    staged_dir,
)
from utils.clip_score import IMAGES_PER_PROMPT, generated_file
from utils.errors import UserError, cli
from utils.images import labelled_grid
from utils.runtime import DTYPES, pick_device, resolve_dtype, seed_everything
from utils.ti_data import LEARNED_TOKEN, OBJECT_TEMPLATES, ConceptImages, image_files, read_prompt_file

ROOT = Path(__file__).resolve().parent
RUNS = ROOT / "runs" / "p3_custom_diffusion"
STEPS_PER_CONCEPT = 250  # the paper's schedule
PROG = "p3_custom_diffusion.py"
MAX_TARGET_ERROR = 1e-3  # merge: the largest relative miss of a concept's own outputs that still counts as a fit


def parse_args(argv=None):
    fmt = argparse.ArgumentDefaultsHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (under `accelerate launch`: its GPUs)")
    common.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="precision (auto: bf16 mixed precision to train and fp16 to sample on CUDA, fp32 on CPU)")
    common.add_argument("--skip-missing", action="store_true",
                        help="if an input (model, weights, images) is missing, say which and exit 0")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument("--sampler", choices=sorted(SAMPLERS), default="dpm++", help="diffusers scheduler")
    sampling.add_argument("--steps", type=positive_int, default=30, help="denoising steps")
    sampling.add_argument("--guidance", type=finite_float, default=6.0,
                          help="classifier-free guidance scale (the paper samples with 6)")
    sampling.add_argument("--batch-size", type=positive_int, default=5, help="images per pipeline call")
    sampling.add_argument("--resolution", type=positive_int, default=512, help="image side in pixels")
    sampling.add_argument("--seed", type=int, default=0, help="image i of every prompt starts from seed + i")
    model = {"type": Path, "help": "SD v1 checkpoint (.ckpt/.safetensors) or diffusers folder"}

    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", parents=[common], formatter_class=fmt, help="train concepts jointly")
    t.add_argument("concept_dirs", type=Path, nargs="+", help="one image folder per concept")
    t.add_argument("model", **model)
    t.add_argument("--tokens", nargs="+", required=True, help="one modifier token per concept, e.g. '<new1>'")
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
    t.add_argument("--resolution", type=positive_int, default=512, help="training image side in pixels (multiple of 8)")
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="the paper's rescale augmentation (masked loss) and horizontal flips")
    t.add_argument("--seed", type=int, default=0, help="seed of images, crops, noise and timesteps")
    t.add_argument("--save-every", type=positive_int, default=250, help="save weights and resume state every N steps")
    t.add_argument("--log-every", type=positive_int, default=10, help="append to train_log.jsonl every N steps")
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
                       help="textual inversion, Custom Diffusion joint and merged on two-concept prompts")
    f.add_argument("model", **model)
    f.add_argument("out_png", type=Path, help="figure to write")
    f.add_argument("--tokens", nargs=2, required=True, metavar="TOKEN", help="e.g. '<new1>' '<new3>'")
    f.add_argument("--ti-embeds", type=Path, default=ROOT / "checkpoints" / "p3_textual_inversion",
                   help="textual-inversion embeddings (p3_textual_inversion.py train)")
    f.add_argument("--joint", type=Path, default=RUNS / "joint", help="Custom Diffusion trained jointly")
    f.add_argument("--merged", type=Path, default=RUNS / "merged", help="Custom Diffusion merged")
    f.add_argument("--template", default="a {} next to a {}", help="prompt with two '{}'")
    f.add_argument("--num", type=positive_int, default=4, help="samples per prompt")
    f.add_argument("--tile", type=positive_int, default=256, help="tile side in the figure")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------- helpers
def missing(paths: dict, args, hint: str = "") -> bool:
    """True if --skip-missing and some input is absent (after saying which); a UserError without the flag."""
    return skip_missing(f"{PROG} {args.command}", missing_paths(paths), args.skip_missing, hint)


def check_tokens(tokens: list[str], flag: str = "--tokens") -> None:
    bad = [t for t in tokens if not LEARNED_TOKEN.fullmatch(t)]
    if bad:
        raise UserError(f"{flag}: {', '.join(map(repr, bad))} must be written in angle brackets, like '<new1>'")
    if len(set(tokens)) != len(tokens):
        raise UserError(f"{flag}: the same token twice in {' '.join(tokens)}")


def slug(word: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", word).strip("_") or "class"


def sample(pipe, prompt: str, num: int, args) -> list:
    return sample_images(pipe, prompt, num, seed=args.seed, batch_size=args.batch_size, steps=args.steps,
                         guidance=args.guidance, resolution=args.resolution)


def custom_pipeline(args, weights: Path):
    """The base pipeline with a Custom Diffusion folder in it, on its device, ready to sample."""
    device = pick_device(args.device)
    pipe = load_pipeline(args.model)
    load_weights(pipe, weights)
    pipe.scheduler = SAMPLERS[args.sampler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, resolve_dtype(args.dtype, device, cuda="fp16"))


# ------------------------------------------------------------------------------- regularization images
def class_images(args, class_words: list[str], device, dtype, is_main: bool) -> list[Path]:
    """REG_DIR/{class word}/ with at least --num-class-images images of 'photo of a {class}' by the base
    model (image i from seed i), generated once: only the missing ones are made, each file written whole."""
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
        pipe = load_pipeline(args.model)
        pipe.scheduler = SAMPLERS["dpm++"].from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device, torch.float16 if device.type == "cuda" else dtype)
        for folder, info, have in todo:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "info.json").write_text(json.dumps(info))
            for i in tqdm(range(have, args.num_class_images), desc=f"class images '{info['prompt']}'",
                          disable=args.quiet, dynamic_ncols=True):
                image = sample_images(pipe, info["prompt"], 1, seed=i, batch_size=1, steps=args.reg_steps,
                                      guidance=6.0, resolution=args.resolution)[0]
                image.save(folder / f".{i:04d}.png.tmp", format="PNG")
                (folder / f".{i:04d}.png.tmp").replace(folder / f"{i:04d}.png")
        del pipe
    return folders


# ------------------------------------------------------------------------------------------- train
def train(args):
    from accelerate import Accelerator  # imported here: only training needs it
    from accelerate.utils import gather_object

    from utils.training import TrainLog

    n = len(args.concept_dirs)
    check_tokens(args.tokens)
    if not (len(args.tokens) == len(args.class_words) == n):
        raise UserError(f"{n} concept folder(s), {len(args.tokens)} --tokens and {len(args.class_words)} "
                        "--class-words: give one token and one class word per folder")
    if args.resolution % 8:
        raise UserError(f"--resolution {args.resolution}: must be a multiple of 8 (the VAE's downsampling)")
    if missing({**{f"concept images {i}": d for i, d in enumerate(args.concept_dirs)}, "model": args.model}, args,
               "MODEL is the SD v1 checkpoint (sd-v1-4.ckpt) or a diffusers folder"):
        return None
    check_writable_dir(args.out_dir, "--out-dir")
    check_writable_dir(args.reg_dir, "--reg-dir")
    total = args.steps or STEPS_PER_CONCEPT * n
    last, log_path = args.out_dir / "last.pt", args.out_dir / "train_log.jsonl"
    config = {"tokens": args.tokens, "class_words": args.class_words, "concepts": [str(d) for d in args.concept_dirs],
              "model": args.model.name, "resolution": args.resolution, "batch_size": args.batch_size,
              "lr": args.lr, "prior_weight": args.prior_weight, "augment": args.augment, "seed": args.seed}
    state = None
    if last.exists() and not args.resume:
        raise UserError(f"--out-dir {args.out_dir}: holds an earlier run ({last}); pass --resume to continue it "
                        "or choose another --out-dir")
    if args.resume and last.exists():
        state = load_checkpoint(last, required=("config", "step", "kv", "rows", "adam", "generators"),
                                what="Custom Diffusion resume state")
        keys = ("tokens", "class_words", "resolution", "batch_size", "model")
        if any(state["config"].get(k) != config[k] for k in keys):
            saved = ", ".join(f"{k}={state['config'].get(k)}" for k in keys)
            raise UserError(f"{last}: was trained with {saved}; "
                            "resume with the same settings or choose another --out-dir")
        if state["step"] >= total and (args.out_dir / WEIGHTS_NAME).exists():
            print(f"already trained for {state['step']} steps ({args.out_dir})")
            return argparse.Namespace(out_dir=args.out_dir, unet=None, text_encoder=None, ids=None)

    device = pick_device(args.device)
    dtype = resolve_dtype(args.dtype, device, cuda="bf16")
    accelerator = Accelerator(cpu=device.type == "cpu",
                              mixed_precision={torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype])
    device, main = accelerator.device, accelerator.is_main_process
    concepts = [ConceptImages(d, args.resolution, augment=False) for d in args.concept_dirs]  # bad images: now
    reg_folders = class_images(args, args.class_words, device, dtype, main)
    accelerator.wait_for_everyone()
    regs = [ConceptImages(folder, args.resolution, augment=False) for folder in reg_folders]
    gen = seed_everything(args.seed + accelerator.process_index)

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
        if len(state["generators"]) != accelerator.num_processes:
            raise UserError(f"{last}: saved by {len(state['generators'])} processes, resumed with "
                            f"{accelerator.num_processes}; resume with the same number")
        gen.set_state(state["generators"][accelerator.process_index])
        step = state["step"]
        if state.get("scaler") and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
    log = TrainLog(log_path, main, resumed_at=step)  # drops the lines logged after the saved state
    if main and state is not None:
        print(f"resuming from {last} at step {step}")
    unet_p, text_encoder_p, optimizer_p = accelerator.prepare(unet, text_encoder, optimizer)

    def save():
        generators = gather_object([gen.get_state()])
        accelerator.wait_for_everyone()
        if not main:
            return
        save_weights(args.out_dir, unet, text_encoder, args.tokens, ids, {**config, "steps": step})
        adam = optimizer.state_dict()
        adam["state"].pop(0, None)  # the embedding matrix: only its trained rows are kept (adam_rows)
        save_checkpoint({"config": config, "step": step, "kv": kv_state(unet), "rows": weight[ids].detach().cpu(),
                         "adam": adam, "adam_rows": adam_rows(optimizer, weight, ids), "generators": generators,
                         "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None}, last)

    if main:
        print(f"{n} concept(s) {' '.join(args.tokens)} ({' '.join(args.class_words)}): "
              f"{sum(len(c) for c in concepts)} images, {sum(len(r) for r in regs)} regularization images; "
              f"{accelerator.num_processes} process(es) on {device}, {dtype}; lr {lr:g}; steps {step}->{total}")
        args.out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=total, initial=step, desc="train", disable=args.quiet or not main, dynamic_ncols=True)
    start = time.time()
    unet_p.train()
    while step < total:
        pixels, masks, captions = training_batch(concepts, regs, args.tokens, args.class_words, step, args.batch_size,
                                                 args.resolution, factor, gen, augment=args.augment)
        input_ids = tokenizer(captions, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                              return_tensors="pt").input_ids
        loss = custom_diffusion_loss(unet_p, vae, text_encoder_p, scheduler, pixels, masks, input_ids, gen,
                                     num_instance=args.batch_size, prior_weight=args.prior_weight, device=device)
        accelerator.backward(loss)
        zero_frozen_rows(weight, ids)  # so that the caption's other words do not count in the clipping norm
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer_p.step()
        optimizer_p.zero_grad(set_to_none=True)
        restore_rows(weight, original, ids)  # every row but the modifier tokens' is the base model's again
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % args.log_every == 0:
            log.write(step, loss.item(), lr)
        if step % args.save_every == 0:
            save()
    bar.close()
    save()
    if main:
        print(f"done: {step} steps in {time.time() - start:.0f} s; weights in {args.out_dir}")
    return argparse.Namespace(out_dir=args.out_dir, unet=unet, text_encoder=text_encoder, ids=ids)


# ------------------------------------------------------------------------------------------- merge
def target_captions(token: str, cls: str) -> list[str]:
    """The captions a concept was trained with (with the rescale augmentation's prefixes)."""
    caption = INSTANCE_PROMPT.format(token=token, cls=cls)
    return [caption] + [prefix + caption for prefix in SMALL_PREFIXES + LARGE_PREFIXES]


def merge(args):
    if missing({**{f"weights {i}": d for i, d in enumerate(args.weights_dirs)}, "model": args.model}, args):
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
        for token in config["tokens"]:
            pipe.load_textual_inversion(str(token_file(folder, token)), local_files_only=True)
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
    if missing({"prompt json": args.input_json}, args):
        return None
    concepts = read_prompt_file(args.input_json)
    if missing({"model": args.model, "Custom Diffusion weights": args.weights / "config.json"}, args,
               f"the weights come from `{PROG} train` or `{PROG} merge`"):
        return None
    needed = sorted({t for c in concepts for p in c.prompts for t in LEARNED_TOKEN.findall(p)})
    have = read_config(args.weights)["tokens"]
    if set(needed) - set(have):
        raise UserError(f"{args.input_json}: its prompts use {', '.join(sorted(set(needed) - set(have)))}, "
                        f"which {args.weights} was not trained on (it has {', '.join(have)})")
    check_apart(args.out_dir, "OUT_DIR", {"prompt json": args.input_json, "model": args.model,
                                          "--weights": args.weights})  # OUT_DIR is replaced whole
    check_writable_dir(args.out_dir, "OUT_DIR")
    check_replaceable(args.out_dir, "OUT_DIR", generated_file)
    pipe = custom_pipeline(args, args.weights)
    check_prompt_lengths(pipe.tokenizer, [p for c in concepts for p in c.prompts], str(args.input_json),
                         pipeline_prompts(pipe))
    jobs = [(c.id, i, p) for c in concepts for i, p in enumerate(c.prompts)]
    start = time.time()
    with staged_dir(args.out_dir) as tmp:
        for cid, i, prompt in tqdm(jobs, desc="generate", disable=args.quiet, dynamic_ncols=True):
            folder = tmp / cid / str(i)
            folder.mkdir(parents=True)
            for k, image in enumerate(sample(pipe, prompt, IMAGES_PER_PROMPT, args)):
                image.save(folder / f"{k}.png")
    print(f"wrote {len(jobs)} x {IMAGES_PER_PROMPT} images to {args.out_dir} in {time.time() - start:.0f} s")
    return args.out_dir


# ------------------------------------------------------------------------------------------ figure
METHODS = ("textual inversion", "Custom Diffusion, joint", "Custom Diffusion, merged")


def figure(args):
    a, b = args.tokens
    check_tokens(args.tokens)
    inputs = {"model": args.model, **{f"textual-inversion embeddings of {t}": embeds_path(args.ti_embeds, t)
                                      for t in args.tokens},
              "jointly trained weights": args.joint / "config.json", "merged weights": args.merged / "config.json"}
    if missing(inputs, args, f"train them with p3_textual_inversion.py train and {PROG} train / merge"):
        return None
    check_writable_dir(args.out_png.parent, "OUT_PNG's folder")
    prompts = [args.template.format(a, b), args.template.format(b, a)]
    loaders = {METHODS[0]: lambda: prepare_sampling(args.model, args.ti_embeds, list(args.tokens), args.sampler,
                                                    args.device, args.dtype),
               METHODS[1]: lambda: custom_pipeline(args, args.joint),
               METHODS[2]: lambda: custom_pipeline(args, args.merged)}
    images, rows, labels = {}, [], []
    for method in tqdm(METHODS, desc="figure", disable=args.quiet):
        pipe = loaders[method]()  # one pipeline at a time
        for prompt in prompts:
            images[method, prompt] = sample(pipe, prompt, args.num, args)
            rows.append([np.asarray(im.resize((args.tile, args.tile))) for im in images[method, prompt]])
            labels.append(f"{method}: {prompt}")
        del pipe
    args.out_png.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(np.array(rows), row_labels=labels, scale=1,
                  title=f"textual inversion vs Custom Diffusion, two learned concepts in one prompt "
                        f"(seeds {args.seed}..{args.seed + args.num - 1})"
                  ).save(args.out_png)
    print(f"wrote {args.out_png}")
    return argparse.Namespace(png=args.out_png, images=images, labels=labels)


@cli(PROG)
def main(argv=None):
    args = parse_args(argv)
    return {"train": train, "merge": merge, "generate": generate, "figure": figure}[args.command](args)


if __name__ == "__main__":
    main()
