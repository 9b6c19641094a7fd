"""Custom Diffusion (Kumari et al., "Multi-Concept Customization of Text-to-Image Diffusion", CVPR 2023).

Fine-tune only the key and value projections of the UNet's cross-attention layers (`attn2.to_k`,
`attn2.to_v`: they map the text features into the attention) and the embedding rows of new
modifier tokens (`<new1>`), with prior preservation on images of the class word. Concepts are
trained jointly, or trained apart and merged in closed form (`merge_kv`, eq. 4 of the paper).

Saved in the formats diffusers loads: the attention weights as `pytorch_custom_diffusion_weights.safetensors`
with `CustomDiffusionAttnProcessor`'s names (`{layer}.processor.to_k_custom_diffusion.weight`), one
`{token without <>}.safetensors` per token for `load_textual_inversion`, and `config.json`.
"""
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.loaders.unet import CUSTOM_DIFFUSION_WEIGHT_NAME_SAFE as WEIGHTS_NAME
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.sd_loading import load_pipeline
from models.stable_diffusion import (
    add_placeholder,
    embeds_path,
    load_learned_tokens,
    loss_target,
    noised_latents,
    place_for_training,
    prepare_sampling,
    save_learned_embeds,
)
from utils.cli import staged_file, write_json
from utils.errors import UserError

# rarely used single CLIP tokens: the paper initialises the modifier tokens from rare tokens
RARE_WORDS = ("pll", "ucd", "sks", "olis")
INSTANCE_PROMPT, CLASS_PROMPT = "photo of a {token} {cls}", "photo of a {cls}"
# the paper's rescale augmentation names what it did in the caption
SMALL_PREFIXES, LARGE_PREFIXES = ("a far away ", "very small "), ("zoomed in ", "close up ")
KV = ("to_k", "to_v")


# ------------------------------------------------------------------------------- the trained weights
def cross_attention_kv(unet) -> dict[str, torch.nn.Linear]:
    """{'down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k': Linear, ...}: what Custom Diffusion trains."""
    return {f"{name}.{kv}": getattr(module, kv) for name, module in unet.named_modules()
            if name.endswith(".attn2") for kv in KV}


def diffusers_key(name: str) -> str:
    """'x.attn2.to_k' -> 'x.attn2.processor.to_k_custom_diffusion.weight' (CustomDiffusionAttnProcessor's name)."""
    layer, kv = name.rsplit(".", 1)
    return f"{layer}.processor.{kv}_custom_diffusion.weight"


def kv_state(unet) -> dict[str, torch.Tensor]:
    """The cross-attention k/v weights under diffusers' Custom Diffusion names, float32 on the CPU."""
    return {diffusers_key(name): m.weight.detach().float().cpu().contiguous()
            for name, m in cross_attention_kv(unet).items()}


@torch.no_grad()
def load_kv_state(unet, state: dict, source: str) -> None:
    """Copy a `kv_state` into the UNet's attn2.to_k / to_v; every key and shape must fit."""
    own = {diffusers_key(name): m for name, m in cross_attention_kv(unet).items()}
    wrong = sorted(set(own) ^ set(state)) + [k for k in own if k in state and state[k].shape != own[k].weight.shape]
    if wrong:
        raise UserError(f"{source}: Custom Diffusion weights do not fit this UNet ({len(wrong)} keys missing, "
                        f"unexpected or of the wrong shape, e.g. {wrong[0]}); trained on another model?")
    for key, module in own.items():
        module.weight.copy_(state[key])


def save_weights(folder: Path, unet, text_encoder, tokens: list[str], ids: list[int], config: dict) -> None:
    """Write the k/v weights, one embedding file per token and config.json into `folder` (each file atomic)."""
    with staged_file(Path(folder) / WEIGHTS_NAME) as tmp:
        save_file(kv_state(unet), tmp, metadata={"format": "pt"})  # diffusers' save_attn_procs writes the same
    weight = text_encoder.get_input_embeddings().weight
    for token, i in zip(tokens, ids):
        save_learned_embeds(embeds_path(folder, token), token, weight[i:i + 1], {"steps": config.get("steps")})
    write_json(Path(folder) / "config.json", config)


def read_config(folder: Path) -> dict:
    """config.json of a Custom Diffusion folder (tokens, class words, steps, ...)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UserError(f"{folder}: not a Custom Diffusion folder (no config.json); "
                        "it is written by `p3_custom_diffusion.py train` or `merge`")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg})") from None
    if not isinstance(config, dict) or not isinstance(config.get("tokens"), list):
        raise UserError(f"{path}: expected an object with a 'tokens' list")
    return config


def read_kv(folder: Path) -> dict[str, torch.Tensor]:
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise UserError(f"{path}: Custom Diffusion attention weights not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: not a safetensors file ({e})") from None


def load_weights(pipe, folder: Path) -> dict:
    """Put a Custom Diffusion folder into a pipeline: k/v into attn2, each token with diffusers'
    `load_textual_inversion`. Returns its config."""
    config = read_config(folder)
    load_kv_state(pipe.unet, read_kv(folder), str(Path(folder) / WEIGHTS_NAME))
    load_learned_tokens(pipe, folder, config["tokens"])
    return config


def custom_pipeline(model: Path, folder: Path, sampler: str = "dpm++", device: str = "auto", dtype: str = "auto"):
    """The base model with a Custom Diffusion folder in it, ready to sample."""
    pipe = load_pipeline(model)
    load_weights(pipe, folder)
    return prepare_sampling(pipe, sampler, device, dtype)


# ------------------------------------------------------------------------------------------ training
@torch.no_grad()
def zero_frozen_rows(weight: torch.Tensor, trained_ids: list[int]) -> None:
    """Zero the gradient of every embedding row but `trained_ids` (before gradient clipping)."""
    if weight.grad is not None:
        keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        keep[trained_ids] = False
        weight.grad[keep] = 0


def setup_training(pipe, tokens: list[str], device: torch.device, dtype: torch.dtype):
    """Add the modifier tokens (initialised from rare words), freeze all but attn2.to_k / to_v and the
    embedding matrix (whose other rows the caller restores after every step), put the frozen UNet and VAE
    in `dtype` on `device` (the trained weights and the text encoder stay fp32: autocast runs the forward in
    `dtype`), and stop gradients through the start token. Returns (token ids, [embedding weight, k/v
    weights...], a copy of the embedding matrix)."""
    ids = [add_placeholder(pipe.tokenizer, pipe.text_encoder, token, RARE_WORDS[i % len(RARE_WORDS)])[0]
           for i, token in enumerate(tokens)]
    place_for_training(pipe, device, dtype)
    kv = [module.float().weight.requires_grad_(True) for module in cross_attention_kv(pipe.unet).values()]
    weight = pipe.text_encoder.get_input_embeddings().weight.requires_grad_(True)
    detach_start_token(pipe.unet)
    return ids, [weight, *kv], weight.detach().clone()


def detach_start_token(unet) -> list:
    """As the paper's code: no gradient through the k/v of the start token (its text feature is the same
    for every caption). Forward hooks on attn2.to_k / to_v; returns their handles."""
    def hook(module, inputs, output):  # (B, 77, D)
        return torch.cat([output[:, :1].detach(), output[:, 1:]], dim=1)
    return [m.register_forward_hook(hook) for m in cross_attention_kv(unet).values()]


def rescale(x: torch.Tensor, resolution: int, factor: int, generator: torch.Generator):
    """The paper's augmentation: resize a (3, R, R) image to a random side s, 1/3 R..R (2/3 of the time,
    pasted at a random place on a canvas of zeros, mid-grey, as in the paper's code) or 1.2 R..1.4 R (randomly cropped back to R).

    Returns the image, a (1, R/factor, R/factor) mask of the latent cells that hold image (the loss is
    taken there only; one cell is trimmed at each border, as in the paper's code, unless that leaves none), and a caption prefix.
    """
    r = resolution
    if torch.rand((), generator=generator) < 2 / 3:
        s = int(torch.randint(r // 3, r + 1, (), generator=generator))
    else:
        s = int(torch.randint(int(1.2 * r), int(1.4 * r), (), generator=generator))
    x = F.interpolate(x[None], size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0].clamp(-1, 1)
    top, left = (int(torch.randint(0, abs(s - r) + 1, (), generator=generator)) for _ in range(2))
    m = r // factor
    mask = torch.zeros(1, m, m)
    if s > r:
        x, mask = x[:, top:top + r, left:left + r], torch.ones(1, m, m)
    else:
        canvas = torch.zeros(3, r, r)
        canvas[:, top:top + s, left:left + s] = x
        x = canvas
        t0, t1, l0, l1 = top // factor + 1, (top + s) // factor - 1, left // factor + 1, (left + s) // factor - 1
        if t1 <= t0 or l1 <= l0:  # too small to trim: the cells it covers whole
            t0, t1, l0, l1 = -(-top // factor), (top + s) // factor, -(-left // factor), (left + s) // factor
        mask[:, t0:t1, l0:l1] = 1
    choice = int(torch.randint(0, 2, (), generator=generator))
    prefix = SMALL_PREFIXES[choice] if s < 0.6 * r else LARGE_PREFIXES[choice] if s > r else ""
    return x, mask, prefix


def scaled_lr(lr: float, batch_size: int, processes: int, prior_preservation: bool) -> float:
    """The learning rate the references train with (`--scale_lr` in diffusers' train_custom_diffusion.py
    and in the paper's code): the per-image rate x batch size x processes, and x 2 with prior
    preservation (each step then also holds as many regularization images)."""
    return lr * batch_size * processes * (2 if prior_preservation else 1)


def training_batch(concepts: list, regs: list, tokens: list[str], class_words: list[str], step: int, size: int,
                   resolution: int, factor: int, generator: torch.Generator, augment: bool = True):
    """`size` concept images (concept (step * size + k) mod n, so every concept is in every cycle of
    steps), with `augment` flipped half the time and rescaled (else as they are), then one
    regularization image of each one's class.

    concepts, regs: `utils.ti_data.ConceptImages` (centre crops at `resolution`) per concept.
    Returns pixels (2 size, 3, R, R), masks (2 size, 1, R/f, R/f) and 2 size captions.
    """
    pixels, masks, captions = [], [], []
    which = [(step * size + k) % len(concepts) for k in range(size)]
    for c in which:
        x = concepts[c].batch(1, generator)[0][0]
        prefix, m = "", torch.ones(1, resolution // factor, resolution // factor)
        if augment:
            if torch.rand((), generator=generator) < 0.5:
                x = x.flip(-1)
            x, m, prefix = rescale(x, resolution, factor, generator)
        pixels.append(x)
        masks.append(m)
        captions.append(prefix + INSTANCE_PROMPT.format(token=tokens[c], cls=class_words[c]))
    for c in which:
        pixels.append(regs[c].batch(1, generator)[0][0])
        masks.append(torch.ones(1, resolution // factor, resolution // factor))
        captions.append(CLASS_PROMPT.format(cls=class_words[c]))
    return torch.stack(pixels), torch.stack(masks), captions


def custom_diffusion_loss(unet, vae, text_encoder, scheduler, pixels: torch.Tensor, masks: torch.Tensor,
                          input_ids: torch.Tensor, generator: torch.Generator, *, num_instance: int,
                          prior_weight: float = 1.0, device: torch.device) -> torch.Tensor:
    """Eq. 1 with prior preservation: the concept images' LDM loss ||eps - eps_theta(z_t, t, c)||^2 averaged
    over their masks, plus `prior_weight` x the same loss on the regularization images (unmasked).

    pixels (B, 3, H, W) in [-1, 1], the first `num_instance` the concept's; masks (B, 1, h, w) at latent
    size; input_ids (B, 77). All noise and timesteps come from `generator` (CPU).
    """
    latents, noise, t, noisy = noised_latents(vae, scheduler, pixels, generator, device, torch.float32)
    context = text_encoder(input_ids.to(device))[0]  # (B, 77, D)
    pred = unet(noisy, t, context).sample.float()
    target = loss_target(scheduler, latents, noise, t)
    err = (pred - target.float()) ** 2  # (B, 4, h, w)
    mask = masks.to(device).expand_as(err)
    n = num_instance
    instance = ((err[:n] * mask[:n]).sum((1, 2, 3)) / mask[:n].sum((1, 2, 3)).clamp(min=1)).mean()
    return instance + prior_weight * err[n:].mean() if len(err) > n else instance


# ----------------------------------------------------------------------------------------- the merge
def merge_kv(w0: torch.Tensor, c_reg: torch.Tensor, c_tgt: torch.Tensor, v: torch.Tensor,
             ridge: float = 0.0) -> torch.Tensor:
    """Eq. 4 of the paper: argmin_W ||(W - W0) C_reg^T||_F^2  s.t.  W C_tgt^T = V^T; with `ridge` > 0
    the regularised variant argmin_W ||(W - W0) C_reg^T||_F^2 + lam ||W - W0||_F^2 under the same
    constraint, lam = ridge x the mean eigenvalue of C_reg^T C_reg (eq. 4 itself needs C_reg to span
    all d directions; with lam > 0, directions no caption uses stay as in W0).

    w0 (out, d) the pretrained weight; c_reg (N, d) text features of regularization captions;
    c_tgt (M, d) those of the concepts' target captions (M <= d independent rows for an exact fit); v (M, out) the
    fine-tuned models' outputs on them. With M = C_reg^T C_reg + lam I, the Lagrangian gives
    W = W0 + L C_tgt M^-1 and the constraint fixes L:
    W = W0 + (V^T - W0 C_tgt^T) (C_tgt M^-1 C_tgt^T)^-1 C_tgt M^-1. Computed in float64, returned in
    w0's dtype.
    """
    w0_, c_reg_, c_tgt_, v_ = (x.detach().double() for x in (w0, c_reg, c_tgt, v))
    gram = c_reg_.T @ c_reg_  # (d, d)
    if ridge:
        gram = gram + ridge * gram.trace() / gram.shape[0] * torch.eye(gram.shape[0], dtype=gram.dtype)
    m_inv_ct = torch.linalg.solve(gram, c_tgt_.T)  # M^-1 C_tgt^T (d, M)
    # (C M^-1 C^T)^-1 C M^-1 (M, d); the pseudo-inverse is the inverse when the target rows are independent
    # and the least-squares compromise when they are not
    d = torch.linalg.pinv(c_tgt_ @ m_inv_ct, hermitian=True) @ m_inv_ct.T
    return (w0_ + (v_.T - w0_ @ c_tgt_.T) @ d).to(w0.dtype)


@torch.no_grad()
def caption_features(tokenizer, text_encoder, captions: list[str], start_token: str | None = None) -> torch.Tensor:
    """(N, d) text-encoder features, float32 on the CPU, of each caption's tokens up to its end token
    (padding left out: it repeats near-identical rows): from the start token, or with `start_token`
    from that token on (the features before it are the same whichever concept follows)."""
    rows = []
    for caption in captions:
        ids = tokenizer(caption, truncation=True, max_length=tokenizer.model_max_length,
                        return_tensors="pt").input_ids
        first = 0
        if start_token is not None:
            found = (ids[0] == tokenizer.convert_tokens_to_ids(start_token)).nonzero()
            if not len(found):
                raise UserError(f"caption {caption!r} does not hold {start_token}")
            first = int(found[0])
        rows.append(text_encoder(ids.to(text_encoder.device))[0][0, first:].float().cpu())
    return torch.cat(rows)
