"""Where CLIP weights come from, offline: a local file, or an open_clip pretrained tag already cached.

`resolve_weights` never downloads: a tag whose file is neither in open_clip's URL cache nor in the
Hugging Face cache is a `MissingWeightsError` that says which file to put where. OpenAI's own
releases (e.g. `ViT-B-32.pt`) are TorchScript archives: they are read with `torch.jit.load` only,
whose unpickler restores TorchScript objects and cannot run arbitrary Python; no user file is ever
unpickled with `torch.load(weights_only=False)`.
"""
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
from huggingface_hub import try_to_load_from_cache
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

from utils.errors import UserError

URL_CACHE = Path("~/.cache/clip")  # where open_clip keeps the files it downloads by URL
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # ints in OpenAI's state dict


class MissingWeightsError(UserError):
    """The weights are not on this machine; the message says which file to put where."""


@dataclass
class Weights:
    path: Path | None  # None: random initialisation (benchmarks only)
    quick_gelu: bool = False  # OpenAI's CLIPs use QuickGELU; open_clip's plain configs do not
    preprocess: dict = field(default_factory=dict)  # a pretrained tag's mean / std / interpolation / resize_mode
    torchscript: bool = False  # an OpenAI TorchScript release, read with torch.jit.load


def is_torchscript(path: Path) -> bool:
    """OpenAI's own CLIP releases (e.g. ViT-B-32.pt) are TorchScript archives: a zip whose top folder
    holds `constants.pkl` (torch's own test). Such a file is only ever read with torch.jit.load."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.count("/") == 1 and name.endswith("/constants.pkl") for name in z.namelist())


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
    """One line: the weights are not here, and each way to put them where they are found."""
    ways = []
    if cfg.get("url"):
        name = os.path.basename(cfg["url"])
        ways.append(f"put {cfg['url']} at {URL_CACHE / name}, or pass it with --pretrained /path/to/{name}")
    if cfg.get("hf_hub"):
        repo, names = _hf_files(cfg)
        # a state-dict file does not say it needs QuickGELU; the `-quickgelu` config does
        quick = cfg.get("quick_gelu") and not open_clip.get_model_config(model_name).get("quick_gelu")
        flags = (f"--model {model_name}-quickgelu " if quick else "") + f"--pretrained /path/to/{names[0]}"
        ways.append(f"put {names[0]} of the Hugging Face repository {repo} in the Hugging Face cache "
                    f"(`huggingface-cli download {repo} {names[0]}` on a machine with network, then copy "
                    f"~/.cache/huggingface/hub), or pass it with {flags}")
    return (f"the weights of {model_name} '{tag}' are not on this machine, and nothing is downloaded here: "
            + "; or ".join(ways))


def resolve_weights(model_name: str, pretrained: str | None) -> Weights:
    """`pretrained`: a local weights file, an open_clip tag already cached, or None for random weights."""
    if pretrained is None:
        return Weights(None)
    path = Path(pretrained).expanduser()
    if path.is_file():
        if is_torchscript(path):  # an OpenAI release: QuickGELU, read with torch.jit.load
            return Weights(path, quick_gelu=True, torchscript=True)
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
    return Weights(local, quick_gelu=cfg.get("quick_gelu", False) or jit, torchscript=jit,
                   preprocess={k: cfg[k] for k in PREPROCESS_KEYS if k in cfg})


def torchscript_state_dict(path: Path) -> dict:
    """The weights of an OpenAI TorchScript release, read with torch.jit.load (never a Python unpickler)."""
    try:
        archive = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch.jit raises RuntimeError and others for a foreign or crafted archive
        raise UserError(f"{path}: looks like a TorchScript archive but torch.jit.load cannot read it "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    state = {k: v for k, v in archive.state_dict().items() if k not in OPENAI_EXTRA_KEYS}
    return state
