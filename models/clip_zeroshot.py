"""CLIP zero-shot classification (Radford et al. 2021, sec. 3.1) with open_clip, fully offline.

`resolve_weights` finds the weights without downloading anything: a local file, or an open_clip
pretrained tag whose file is already in open_clip's URL cache or the Hugging Face cache. Anything
else is a `MissingWeightsError` that says which file to put where.
"""
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from tqdm import tqdm

from utils.clip_data import ValImage, label_words, load_rgb
from utils.errors import UserError

DEFAULT_TEMPLATES = ("A photo of {}.",)
URL_CACHE = Path("~/.cache/clip")  # where open_clip keeps the files it downloads by URL
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")



class MissingWeightsError(UserError):
    """The weights are not on this machine; the message says which file to put where."""


@dataclass
class Weights:
    path: Path | None  # None: random initialisation (benchmarks only)
    quick_gelu: bool = False  # OpenAI's CLIPs use QuickGELU; open_clip's plain configs do not
    preprocess: dict = field(default_factory=dict)  # a pretrained tag's mean / std / interpolation / resize_mode
    weights_only: bool = True


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


def is_torchscript(path: Path) -> bool:
    """OpenAI's own CLIP releases (e.g. ViT-B-32.pt) are TorchScript archives."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.split("/")[-1] == "constants.pkl" for name in z.namelist())


def _hf_files(cfg: dict) -> tuple[str, list[str]]:
    """(repo id, candidate file names) of a pretrained tag's Hugging Face entry, as open_clip reads it."""
    repo, filename = os.path.split(cfg["hf_hub"])  # 'org/repo/' names open_clip's default file
    if not filename:
        return repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    if filename.endswith((".bin", ".pth")):  # open_clip tries the .safetensors twin first
        return repo, [filename[:-4] + ".safetensors", filename]
    return repo, [filename]


def cached_tag_file(cfg: dict) -> Path | None:
    """The file of a pretrained tag if it is already in the Hugging Face cache or open_clip's URL cache."""
    if cfg.get("hf_hub"):
        repo, names = _hf_files(cfg)
        for name in names:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str):
                return Path(hit)
    if cfg.get("url"):
        local = URL_CACHE.expanduser() / os.path.basename(cfg["url"])
        if local.is_file():
            return local
    return None


def missing_weights_message(model_name: str, tag: str, cfg: dict) -> str:
    lines = [f"the weights of {model_name} '{tag}' are not on this machine, and nothing is downloaded here. Either"]
    if cfg.get("url"):
        name = os.path.basename(cfg["url"])
        lines.append(f"  - put {cfg['url']} at {URL_CACHE / name}, or pass it with --pretrained /path/to/{name}")
    if cfg.get("hf_hub"):
        repo, names = _hf_files(cfg)
        # a state-dict file does not say it needs QuickGELU; the `-quickgelu` config does
        quick = cfg.get("quick_gelu") and not open_clip.get_model_config(model_name).get("quick_gelu")
        flags = (f"--model {model_name}-quickgelu " if quick else "") + f"--pretrained /path/to/{names[0]}"
        lines.append(f"  - put {names[0]} of the Hugging Face repository {repo} in the Hugging Face cache "
                     f"(`huggingface-cli download {repo} {names[0]}` on a machine with network, then copy "
                     f"~/.cache/huggingface/hub), or pass it with {flags}")
    return "\n".join(lines)


def resolve_weights(model_name: str, pretrained: str | None) -> Weights:
    """`pretrained`: a local weights file, an open_clip tag already cached, or None for random weights."""
    if pretrained is None:
        return Weights(None)
    path = Path(pretrained).expanduser()
    if path.is_file():
        if is_torchscript(path):  # an OpenAI release: QuickGELU, and torch.load needs weights_only=False
            return Weights(path, quick_gelu=True, weights_only=False)
        return Weights(path)
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise MissingWeightsError(f"{pretrained}: no such weights file, and not an open_clip pretrained tag of "
                                  f"{model_name} (its tags: {', '.join(tags) or 'none'})")
    local = cached_tag_file(cfg)
    if local is None:
        raise MissingWeightsError(missing_weights_message(model_name, pretrained, cfg))
    jit = is_torchscript(local)
    return Weights(local, quick_gelu=cfg.get("quick_gelu", False) or jit, weights_only=not jit,
                   preprocess={k: cfg[k] for k in PREPROCESS_KEYS if k in cfg})


def load_clip(model_name: str, weights: Weights, device: torch.device):
    """(model in eval mode, the model's own eval preprocessing, tokenizer), built from local files only."""
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=None if weights.path is None else str(weights.path), device=device,
            force_quick_gelu=weights.quick_gelu, weights_only=weights.weights_only,
            pretrained_text=False,  # never fetch a Hugging Face text tower's own weights
            **{f"image_{k}": v for k, v in weights.preprocess.items()})
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise UserError(f"cannot load {weights.path} into {model_name}: {str(e)[:500]}") from None
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
def image_logits(model, images: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) preprocessed images, (C, D) unit class embeddings -> (B, C) logits: scale * cosine."""
    img = F.normalize(model.encode_image(images).float(), dim=-1)
    return model.logit_scale.exp().float() * img @ text_emb.T


def classify(model, preprocess, text_emb: torch.Tensor, images: list[ValImage], batch_size: int):
    """Batched zero-shot classification with a progress bar, preprocessing being the model's own.

    Returns `(kept, probs, skipped)`: the images that could be read, their (N, C) class probabilities,
    and one message per image that could not be read (reported, never silently dropped).
    """
    device = next(model.parameters()).device
    kept, probs, skipped = [], [], []
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
            probs.append(image_logits(model, torch.stack(tensors).to(device), text_emb).softmax(-1).cpu())
            kept += batch
    return kept, torch.cat(probs) if probs else torch.empty(0, len(text_emb)), skipped


def summarise(images: list[ValImage], probs: torch.Tensor, id2label: dict[int, str], num_cases: int,
              generator: torch.Generator) -> tuple[dict, list[dict]]:
    """Accuracy, top-5 accuracy, per-class accuracy and `num_cases` random successes and failures
    (`results.json`), and one row per image (`predictions.csv`). Class index i is `sorted(id2label)[i]`."""
    class_ids = sorted(id2label)
    words = [label_words(id2label[c]) for c in class_ids]
    top_p, top_i = probs.topk(min(5, len(class_ids)), dim=-1)
    rows = []
    for item, p, ps, idx in zip(images, probs, top_p.tolist(), top_i.tolist()):
        true = class_ids.index(item.class_id)
        rows.append({"file": item.path.name, "true_id": item.class_id, "true_label": words[true],
                     "pred_id": class_ids[idx[0]], "pred_label": words[idx[0]], "probability": ps[0],
                     "true_probability": p[true].item(), "correct": idx[0] == true, "top5_correct": true in idx,
                     "top5_ids": " ".join(str(class_ids[i]) for i in idx)})
    per_class = {}
    for c, w in zip(class_ids, words):
        hits = [r["correct"] for r in rows if r["true_id"] == c]
        per_class[w] = {"class_id": c, "n": len(hits), "accuracy": sum(hits) / len(hits) if hits else None}

    def pick(pool):
        chosen = sorted(torch.randperm(len(pool), generator=generator)[:num_cases].tolist())
        return [{k: pool[i][k] for k in ("file", "true_label", "pred_label", "probability", "true_probability")}
                for i in chosen]

    n = len(rows)
    results = {"n": n, "accuracy": sum(r["correct"] for r in rows) / n,
               "top5_accuracy": sum(r["top5_correct"] for r in rows) / n, "n_classes": len(class_ids),
               "per_class": per_class,
               "successes": pick([r for r in rows if r["correct"]]),
               "failures": pick([r for r in rows if not r["correct"]])}
    return results, rows
