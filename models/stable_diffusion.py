"""Stable Diffusion v1 pieces every personalisation method uses (textual inversion, Custom Diffusion, ...).

Learned tokens: a new token gets rows of the text encoder's embedding matrix (`add_placeholder`); only those
rows learn, every other row is restored after each step (`restore_rows`), and the optimiser state is kept for
those rows only (`adam_rows`). A token is saved as `{token: (n, dim)}` in `{token without <>}.safetensors`,
the format diffusers' `load_textual_inversion` reads. Training: the LDM loss's noised latents and target.
Sampling: one scheduler table and one sampling function; image i of a prompt starts from the CPU noise of
seed + i, so images do not depend on the batch size or the device.
"""
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.sd_loading import load_pipeline
from utils.checkpoint import check_finite
from utils.cli import staged_file
from utils.errors import UserError, reason
from utils.runtime import pick_device, resolve_dtype


# ------------------------------------------------------------------------------------------ learned tokens
def placeholder_tokens(token: str, num_vectors: int = 1) -> list[str]:
    """`<t>`, `<t>_1`, ... : one token per learned vector, as diffusers names them."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def add_placeholder(tokenizer, text_encoder, token: str, initializer: str, num_vectors: int = 1) -> list[int]:
    """Add the placeholder's tokens, grow the embedding matrix, copy the initializer's row; return the new ids."""
    init_ids = tokenizer.encode(initializer, add_special_tokens=False)
    if len(init_ids) != 1:
        raise UserError(f"the initializer {initializer!r} must be a single token of the CLIP vocabulary "
                        f"(it is {len(init_ids)}: {tokenizer.convert_ids_to_tokens(init_ids)})")
    tokens = placeholder_tokens(token, num_vectors)
    if tokenizer.add_tokens(tokens) != len(tokens):
        raise UserError(f"{token} is already in the tokenizer's vocabulary; choose another placeholder")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows set just below
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = weight[init_ids[0]].clone()
    return ids


@torch.no_grad()
def restore_rows(weight: torch.Tensor, original: torch.Tensor, trained_ids: list[int]) -> None:
    """Copy `original` back into every row of `weight` except `trained_ids` (undoes weight decay, Adam drift)."""
    keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    keep[trained_ids] = False
    weight[keep] = original[keep].to(weight)


def adam_rows(optimizer: torch.optim.Optimizer, weight: torch.Tensor, ids: list[int]) -> dict:
    """The optimiser state of `weight` restricted to rows `ids` (Adam is element-wise, so this resumes exactly)."""
    state = optimizer.state.get(weight, {})
    return {k: (v[ids].cpu() if k.startswith("exp_avg") else v.cpu()) for k, v in state.items()}


def load_adam_rows(optimizer: torch.optim.Optimizer, weight: torch.Tensor, ids: list[int], rows: dict) -> None:
    """Inverse of `adam_rows`: the other rows start at zero, which no longer matters as they are restored."""
    if not rows:
        return
    state = {}
    for k, v in rows.items():
        if k.startswith("exp_avg"):
            full = torch.zeros_like(weight, memory_format=torch.preserve_format)
            full[ids] = v.to(full)
            state[k] = full
        else:
            state[k] = v
    optimizer.state[weight] = state


def embeds_path(folder: Path, token: str) -> Path:
    """{folder}/{token without <>}.safetensors: where a learned token's embeddings live."""
    return Path(folder) / f"{token.strip('<>')}.safetensors"


def save_learned_embeds(path: Path, token: str, vectors: torch.Tensor, metadata: dict | None = None) -> None:
    """{token: (n, dim) float32} as safetensors, with string metadata (initializer, steps, ...); atomic."""
    with staged_file(path) as tmp:
        save_file({token: vectors.detach().float().cpu().contiguous()}, tmp,
                  metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_learned_embeds(path: Path) -> tuple[str, torch.Tensor]:
    """(token, (n, dim)) from a file written by `save_learned_embeds` (or any one-token diffusers file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: learned embeddings not found")
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a safetensors file of learned embeddings ({reason(e)})") from None
    if len(state) != 1:
        raise UserError(f"{path}: expected one token's embeddings, found {len(state)} keys"
                        + (f", first: {min(state)}" if state else ""))
    check_finite(state, str(path))
    token, vectors = next(iter(state.items()))
    return token, vectors.reshape(-1, vectors.shape[-1])


def load_learned_tokens(pipe, folder: Path, tokens: list[str]):
    """Each token's `embeds_path(folder, token)` into the pipeline (diffusers' load_textual_inversion); returns it."""
    for token in tokens:
        path = embeds_path(folder, token)
        stored, _ = load_learned_embeds(path)
        if stored != token:
            raise UserError(f"{path}: holds embeddings for {stored}, not {token}")
        pipe.load_textual_inversion(str(path), local_files_only=True)
    return pipe


# ---------------------------------------------------------------------------------------------- training
def place_for_training(pipe, device: torch.device, dtype: torch.dtype) -> None:
    """Freeze UNet, VAE and text encoder; UNet and VAE in `dtype` on `device`, the text encoder in float32
    (it holds the learned rows). The method then unfreezes what it trains."""
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
    pipe.unet.to(device, dtype)
    pipe.vae.to(device, dtype)
    pipe.text_encoder.to(device)
    if device.type == "cuda":
        pipe.unet.enable_gradient_checkpointing()  # activations, not weights, fill the card when training


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """(B, 77) input ids, padded and cut to the text encoder's context."""
    return tokenizer(captions, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids


def noised_latents(vae, scheduler, pixels: torch.Tensor, generator: torch.Generator, device: torch.device,
                   dtype: torch.dtype | None = None):
    """z_0 drawn from the VAE posterior of `pixels` (B, 3, H, W) in [-1, 1] (x the scaling factor; cast to `dtype`
    if given), eps, t and z_t = add_noise(z_0, eps, t). All noise and timesteps come from `generator` (CPU)."""
    with torch.no_grad():
        posterior = vae.encode(pixels.to(device, vae.dtype)).latent_dist
        eps = torch.randn(posterior.mean.shape, generator=generator).to(device, posterior.mean.dtype)
        latents = (posterior.mean + posterior.std * eps) * vae.config.scaling_factor  # (B, 4, H/8, W/8)
        latents = latents.to(dtype or latents.dtype)
    noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(device)
    return latents, noise, t, scheduler.add_noise(latents, noise, t)


def loss_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet predicts: eps, or v = alpha_t eps - sigma_t z_0 for a v-prediction model."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    return noise


# ---------------------------------------------------------------------------------------------- sampling
SAMPLERS = {"dpm++": DPMSolverMultistepScheduler, "ddim": DDIMScheduler, "pndm": PNDMScheduler}


@dataclass(frozen=True)
class Sampling:
    """How every image is sampled: image i of a prompt starts from the CPU noise of seed + i."""
    seed: int = 0
    batch_size: int = 5
    steps: int = 30
    guidance: float = 7.5
    resolution: int | None = None  # None: the model's own (unet sample_size x VAE factor, 512 for SD v1)


def check_prompt_lengths(tokenizer, prompts: list[str], what: str, expand: Callable[[str], str] = str) -> None:
    """Refuse a prompt whose tokens (`expand(prompt)`: a learned token written as all its vectors) with the
    start and end tokens are more than the text encoder's context (77 for SD v1): the tokenizer would cut
    the end off, learned vectors or another concept's token with it, and nothing would say so."""
    limit = tokenizer.model_max_length
    lengths = [len(tokenizer(expand(p)).input_ids) for p in prompts]
    longest = max(range(len(prompts)), key=lengths.__getitem__)
    if lengths[longest] > limit:
        raise UserError(f"{what}: {prompts[longest]!r} takes {lengths[longest]} tokens with its learned vectors, "
                        f"more than the text encoder's {limit}; learn fewer vectors or shorten the prompt")


def pipeline_prompts(pipe) -> Callable[[str], str]:
    """How `pipe` writes a prompt before tokenizing it: each loaded learned token as all of its vectors."""
    return lambda prompt: pipe.maybe_convert_prompt(prompt, pipe.tokenizer)


def prepare_sampling(pipe, sampler: str = "dpm++", device: str | torch.device = "auto", dtype: str = "auto"):
    """`pipe` (with whatever it learned already loaded) ready to sample: `sampler`'s scheduler, no progress
    bar, on its device in `--dtype` (auto: fp16 on CUDA, fp32 on the CPU)."""
    chosen = pick_device(device) if isinstance(device, str) else device
    pipe.scheduler = SAMPLERS[sampler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(chosen, resolve_dtype(dtype, chosen, cuda="fp16"))


def learned_pipeline(model: Path, embeds_dir: Path, tokens: list[str], sampler: str = "dpm++",
                     device: str = "auto", dtype: str = "auto"):
    """The base model with every learned token of `embeds_dir` loaded, ready to sample (textual inversion)."""
    return prepare_sampling(load_learned_tokens(load_pipeline(model), embeds_dir, tokens), sampler, device, dtype)


@torch.no_grad()
def sample(pipe, prompt: str, num: int, settings: Sampling) -> list:
    """`num` PIL images of `prompt`; image i starts from the noise of CPU seed `settings.seed + i`. A NaN or inf
    in the decoded images (they would be written black) is a UserError."""
    check_prompt_lengths(pipe.tokenizer, [prompt], "prompt", pipeline_prompts(pipe))
    seed, resolution = settings.seed, settings.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = []
    for start in range(0, num, settings.batch_size):
        n = min(settings.batch_size, num - start)
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(n)]
        decoded = pipe(prompt, num_images_per_prompt=n, generator=generators, num_inference_steps=settings.steps,
                       guidance_scale=settings.guidance, height=resolution, width=resolution, output_type="np").images
        if not np.isfinite(decoded).all():  # (n, H, W, 3) in [0, 1]
            raise UserError(f"sampling {prompt!r} (seeds {seed + start}..{seed + start + n - 1}) gave NaN or inf; "
                            "check the learned embeddings and the model's weights")
        images += pipe.numpy_to_pil(decoded)
    return images
