"""Textual inversion (Gal et al., 2022): learn new token embeddings for a frozen Stable Diffusion.

A placeholder such as `<new1>` gets `n` new rows of the text encoder's token-embedding matrix
(tokens `<new1>`, `<new1>_1`, ..., `<new1>_{n-1}`, the multi-vector naming that diffusers'
`load_textual_inversion` expands), initialised from an initializer word. Only those rows are
trained; every other row is restored after each optimiser step. The learned-token helpers shared
with other methods (adding, restoring, saving, loading, sampling) are in `models/stable_diffusion.py`.
"""
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from models.stable_diffusion import loss_target, noised_latents, place_for_training, placeholder_tokens, restore_rows


def expand_placeholder(text: str, token: str, num_vectors: int) -> str:
    """Write a multi-vector placeholder as all of its tokens ("<t>" -> "<t> <t>_1 <t>_2")."""
    return text.replace(token, " ".join(placeholder_tokens(token, num_vectors)))


class TrainingSetup(NamedTuple):
    weight: torch.Tensor                # the text encoder's token-embedding matrix (V, D), the one trained tensor
    original: torch.Tensor              # a copy of it before training, to restore the rows not learned
    optimizer: torch.optim.Optimizer    # AdamW over `weight`


def setup_training(pipe, device: torch.device, dtype: torch.dtype, lr: float) -> TrainingSetup:
    """Freeze the pipeline but its token embeddings; UNet and VAE in `dtype` on `device`, the text encoder
    in float32 (it holds the learned rows)."""
    place_for_training(pipe, device, dtype)
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
    latents, noise, t, noisy = noised_latents(vae, scheduler, pixels, generator, unet.device)
    context = text_encoder(input_ids.to(unet.device))[0].to(unet.dtype)  # (B, 77, D), grads flow to the embeddings
    pred = unet(noisy.to(unet.dtype), t, context).sample
    return F.mse_loss(pred.float(), loss_target(scheduler, latents, noise, t).float())
