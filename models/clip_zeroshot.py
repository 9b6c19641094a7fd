"""CLIP zero-shot classification (Radford et al. 2021, sec. 3.1) with open_clip, fully offline.

The weights are found by `models.clip_weights.resolve_weights` (never downloaded); this module builds
the model from them, embeds the prompts and classifies images.
"""
import json
import pickle
from collections import Counter
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.clip_weights import Weights, torchscript_state_dict
from utils.checkpoint import load_state_dict_strict
from utils.clip_data import ValImage
from utils.errors import UserError
from utils.images import load_rgb

DEFAULT_TEMPLATES = ("A photo of {}.",)  # the course's prompt, "A photo of {object}."
# CLIP's own 18 prompts for CIFAR-100 (openai/CLIP, data/prompts.md), the data set of the course's images:
# the default ensemble that results.json's "prompting" compares the course's single prompt with
CIFAR100_TEMPLATES = (
    "a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
    "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
    "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.",
    "a photo of the {}.", "a blurry photo of the {}.", "a black and white photo of the {}.",
    "a low contrast photo of the {}.", "a high contrast photo of the {}.", "a bad photo of the {}.",
    "a good photo of the {}.", "a photo of the small {}.", "a photo of the big {}.",
)
URL_CACHE = Path("~/.cache/clip")  # where open_clip keeps the files it downloads by URL
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def resolve_model(model: str) -> str:
    """An open_clip model name, or a model-config JSON (open_clip's format) registered under its file stem."""
    path = Path(model)
    if path.suffix == ".json":
        if not path.is_file():
            raise UserError(f"{path}: model config not found")
        try:
            cfg = json.loads(path.read_text())
        except ValueError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg]
        if missing:
            raise UserError(f"{path}: not an open_clip model config (missing {', '.join(missing)})")
        open_clip.add_model_config(path)
        return path.stem
    if model not in open_clip.list_models():
        raise UserError(f"unknown open_clip model {model!r}: give a model-config JSON path or one of "
                        f"{', '.join(m for m in open_clip.list_models() if m.startswith('ViT-B'))}, ...")
    return model


def load_clip(model_name: str, weights: Weights, device: torch.device):
    """(model in eval mode, the model's own eval preprocessing, tokenizer), built from local files only.

    A state-dict file goes through open_clip's loader with `weights_only=True`; an OpenAI TorchScript
    release is read with `torch.jit.load` and its weights loaded strictly into the open_clip model.
    """
    file = None if weights.path is None or weights.torchscript else str(weights.path)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=file, device=device, force_quick_gelu=weights.quick_gelu, weights_only=True,
            pretrained_text=False,  # never fetch a Hugging Face text tower's own weights
            **{f"image_{k}": v for k, v in weights.preprocess.items()})
    except (RuntimeError, ValueError, KeyError, OSError, pickle.UnpicklingError) as e:
        raise UserError(f"cannot load {weights.path} into {model_name}: {str(e)[:500]}") from None
    if weights.torchscript:
        load_state_dict_strict(model, torchscript_state_dict(weights.path), f"{weights.path}")
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name)


def read_templates(path: Path) -> list[str]:
    """Prompt templates, one per line, each with `{}` where the label goes; blank lines are skipped."""
    if not path.is_file():
        raise UserError(f"{path}: templates file not found")
    templates = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            if "{}" not in line:
                raise UserError(f"{path} line {number}: template {line.strip()!r} has no {{}} for the label")
            templates.append(line.strip())
    if not templates:
        raise UserError(f"{path}: no templates")
    return templates


def prompts(template: str, class_words: list[str]) -> list[str]:
    return [template.replace("{}", words) for words in class_words]


@torch.no_grad()
def text_embeddings(model, tokenizer, class_words: list[str], templates, batch_size: int = 256) -> torch.Tensor:
    """(C, D) unit class embeddings: each template's embedding normalised, averaged over templates, normalised
    again (prompt ensembling, sec. 3.1.4 of the CLIP paper). One template: just its normalised embedding."""
    device = next(model.parameters()).device
    total = 0
    for template in templates:
        tokens = tokenizer(prompts(template, class_words))
        emb = torch.cat([model.encode_text(tokens[i:i + batch_size].to(device)).float()
                         for i in range(0, len(tokens), batch_size)])
        total = total + F.normalize(emb, dim=-1)
    return F.normalize(total / len(templates), dim=-1)


@torch.no_grad()
def image_features(model, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) preprocessed images -> (B, D) unit image embeddings."""
    return F.normalize(model.encode_image(images).float(), dim=-1)


@torch.no_grad()
def class_logits(model, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """(B, D) unit image embeddings, (C, D) unit class embeddings -> (B, C) logits: scale * cosine."""
    scale = model.logit_scale.exp().float().to(image_emb.device)
    return scale * image_emb @ text_emb.to(image_emb.device).T


def image_logits(model, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) preprocessed images, (C, D) unit class embeddings -> (B, C) logits: scale * cosine."""
    return class_logits(model, image_features(model, images), text_emb)


def encode_images(model, preprocess, images: list[ValImage], batch_size: int):
    """Batched image embeddings with a progress bar, preprocessing being the model's own.

    Returns `(kept, features, skipped)`: the images that could be read, their (N, D) unit embeddings (on the
    CPU), and one message per image that could not be read (reported, never silently dropped). Computed once,
    they serve every text classifier (`class_logits`): one prompt, an ensemble.
    """
    device = next(model.parameters()).device
    kept, feats, skipped = [], [], []
    for start in tqdm(range(0, len(images), batch_size), desc="classify", unit="batch", dynamic_ncols=True):
        batch, tensors = [], []
        for item in images[start:start + batch_size]:
            try:
                tensors.append(preprocess(load_rgb(item.path)))
                batch.append(item)
            except UserError as e:
                tqdm.write(f"warning: skipping {e}")
                skipped.append(str(e))
        if batch:
            feats.append(image_features(model, torch.stack(tensors).to(device)).cpu())
            kept += batch
    return kept, torch.cat(feats) if feats else torch.empty(0, 0), skipped


def confused_pairs(true_labels: list[str], pred_labels: list[str], top: int = 5) -> list[dict]:
    """The `top` most frequent mistakes: [{"true_label", "pred_label", "count"}, ...] over the pairs with
    true != pred, by count (descending), then true label, then predicted label."""
    counts = Counter((t, p) for t, p in zip(true_labels, pred_labels, strict=True) if t != p)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"true_label": t, "pred_label": p, "count": n} for (t, p), n in ranked[:top]]
