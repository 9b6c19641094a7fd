"""Textual inversion (Gal et al., 2022): learn new token embeddings for a frozen Stable Diffusion.

A placeholder such as `<new1>` gets `n` new rows of the text encoder's token-embedding matrix
(tokens `<new1>`, `<new1>_1`, ..., `<new1>_{n-1}`, the multi-vector naming that diffusers'
`load_textual_inversion` expands), initialised from an initializer word. Only those rows are
trained; every other row is restored after each optimiser step. The result is saved as
`{token: (n, dim)}` in a safetensors file, the format `load_textual_inversion` reads.
"""
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.sd_loading import load_pipeline
from utils.checkpoint import check_finite
from utils.errors import UserError, reason
from utils.runtime import pick_device, resolve_dtype


def placeholder_tokens(token: str, num_vectors: int = 1) -> list[str]:
    """`<t>`, `<t>_1`, ... : one token per learned vector, as diffusers names them."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def expand_placeholder(text: str, token: str, num_vectors: int) -> str:
    """Write a multi-vector placeholder as all of its tokens ("<t>" -> "<t> <t>_1 <t>_2")."""
    return text.replace(token, " ".join(placeholder_tokens(token, num_vectors)))


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


class TrainingSetup(NamedTuple):
    weight: torch.Tensor                # the text encoder's token-embedding matrix (V, D), the one trained tensor
    original: torch.Tensor              # a copy of it before training, to restore the rows not learned
    optimizer: torch.optim.Optimizer    # AdamW over `weight`


def setup_training(pipe, device: torch.device, dtype: torch.dtype, lr: float) -> TrainingSetup:
    """Freeze the pipeline but its token embeddings; UNet and VAE in `dtype` on `device`, the text encoder
    in float32 (it holds the learned rows)."""
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
    pipe.unet.to(device, dtype)
    pipe.vae.to(device, dtype)
    pipe.text_encoder.to(device)
    if device.type == "cuda":
        pipe.unet.enable_gradient_checkpointing()  # activations, not weights, fill the card when training
    weight = pipe.text_encoder.get_input_embeddings().weight.requires_grad_(True)
    # weight decay as in diffusers' example; `optimise` restores every row but the learned ones anyway
    return TrainingSetup(weight, weight.detach().clone(), torch.optim.AdamW([weight], lr=lr, weight_decay=1e-2))


def optimise(optimizer: torch.optim.Optimizer, loss: torch.Tensor, weight: torch.Tensor, original: torch.Tensor,
             trained_ids: list[int], *, backward: Callable[[torch.Tensor], None] | None = None,
             average: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """One optimiser step on the embeddings, then every row but `trained_ids` is restored.

    `backward(loss)` replaces `loss.backward()` (accelerate's, which scales an fp16 loss); `average(rows)`
    averages the learned rows' gradient over processes (data parallelism: only those rows are kept, so
    only they travel, not the whole (V, D) gradient).
    """
    optimizer.zero_grad(set_to_none=True)
    (backward or torch.Tensor.backward)(loss)
    if average is not None:
        weight.grad[trained_ids] = average(weight.grad[trained_ids])
    optimizer.step()
    restore_rows(weight, original, trained_ids)


def diffusion_loss(unet, vae, text_encoder, scheduler, pixels: torch.Tensor, input_ids: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """Eq. 2 of the paper, the LDM loss ||eps - eps_theta(z_t, t, c(y))||^2 (or its v-prediction form).

    pixels (B, 3, H, W) in [-1, 1]; input_ids (B, 77). All noise comes from `generator` (CPU).
    """
    device, dtype = unet.device, unet.dtype
    with torch.no_grad():
        posterior = vae.encode(pixels.to(device, vae.dtype)).latent_dist
        eps = torch.randn(posterior.mean.shape, generator=generator).to(device, posterior.mean.dtype)
        latents = (posterior.mean + posterior.std * eps) * vae.config.scaling_factor  # (B, 4, H/8, W/8)
    noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(device)
    noisy = scheduler.add_noise(latents, noise, t)
    context = text_encoder(input_ids.to(device))[0].to(dtype)  # (B, 77, D), grads flow to the embeddings
    pred = unet(noisy.to(dtype), t, context).sample
    target = scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" \
        else noise
    return F.mse_loss(pred.float(), target.float())


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


@torch.no_grad()
def sample_images(pipe, prompt: str, num: int, *, seed: int, batch_size: int, steps: int, guidance: float,
                  resolution: int) -> list:
    """`num` PIL images of `prompt`; image i starts from the noise of CPU seed `seed + i`, so the images do
    not depend on the batch size or the device's random generator. A NaN or inf in the decoded images (they
    would be written black) is a UserError."""
    check_prompt_lengths(pipe.tokenizer, [prompt], "prompt", pipeline_prompts(pipe))
    images = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(n)]
        decoded = pipe(prompt, num_images_per_prompt=n, generator=generators, num_inference_steps=steps,
                       guidance_scale=guidance, height=resolution, width=resolution, output_type="np").images
        if not np.isfinite(decoded).all():  # (n, H, W, 3) in [0, 1]
            raise UserError(f"sampling {prompt!r} (seeds {seed + start}..{seed + start + n - 1}) gave NaN or inf; "
                            "check the learned embeddings and the model's weights")
        images += pipe.numpy_to_pil(decoded)
    return images


def save_learned_embeds(path: Path, token: str, vectors: torch.Tensor, metadata: dict | None = None) -> None:
    """{token: (n, dim) float32} as safetensors, with string metadata (initializer, steps, ...); atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({token: vectors.detach().float().cpu().contiguous()}, tmp,
              metadata={k: str(v) for k, v in (metadata or {}).items()})
    tmp.replace(path)


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


# ------------------------------------------------------------------------------ sampling with learned tokens
SAMPLERS = {"dpm++": DPMSolverMultistepScheduler, "ddim": DDIMScheduler, "pndm": PNDMScheduler}


def embeds_path(embeds_dir: Path, token: str) -> Path:
    return Path(embeds_dir) / f"{token.strip('<>')}.safetensors"


@dataclass(frozen=True)
class Sampling:
    """How every image is sampled: image i of a prompt starts from the CPU noise of seed + i."""
    seed: int = 0
    batch_size: int = 5
    steps: int = 30
    guidance: float = 7.5
    resolution: int | None = None  # None: the model's own (unet sample_size x VAE factor, 512 for SD v1)


def prepare_sampling(model: Path, embeds_dir: Path, tokens: list[str], sampler: str = "dpm++",
                     device: str = "auto", dtype: str = "auto"):
    """The pipeline on its device with every learned token loaded (diffusers' load_textual_inversion)."""
    chosen = pick_device(device)
    pipe = load_pipeline(model)
    for token in tokens:
        path = embeds_path(embeds_dir, token)
        stored, _ = load_learned_embeds(path)
        if stored != token:
            raise UserError(f"{path}: holds embeddings for {stored}, not {token}")
        pipe.load_textual_inversion(str(path), local_files_only=True)
    pipe.scheduler = SAMPLERS[sampler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(chosen, resolve_dtype(dtype, chosen, cuda="fp16"))


def sample(pipe, prompt: str, num: int, settings: Sampling) -> list:
    resolution = settings.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    return sample_images(pipe, prompt, num, seed=settings.seed, batch_size=settings.batch_size, steps=settings.steps,
                         guidance=settings.guidance, resolution=resolution)
