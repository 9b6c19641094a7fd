"""Load Stable Diffusion v1 offline: a diffusers folder or an original single-file checkpoint.

Nothing here reaches a model hub. A single-file checkpoint (`sd-v1-4.ckpt`, `.safetensors`) is
converted with diffusers' own LDM -> diffusers key maps, into models built from the configs
shipped in `models/sd_v1_configs/` (the diffusers layout of SD v1: unet, vae, text_encoder,
scheduler). The tokenizer is built from the CLIP BPE vocabulary that open_clip ships; it is the
same vocabulary as SD v1's ViT-L/14 text encoder (49408 tokens).
"""
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from diffusers.schedulers import PNDMScheduler
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from utils.checkpoint import load_state_dict_strict
from utils.errors import UserError, reason

SD_V1_CONFIGS = Path(__file__).resolve().parent / "sd_v1_configs"
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")
# a v1 checkpoint holds all three; the key names are the ones diffusers' converters read
LDM_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                "text_encoder": "cond_stage_model.transformer."}



def clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """The CLIP BPE tokenizer (SD v1's), built from open_clip's bundled bpe_simple_vocab_16e6.txt.gz."""
    from open_clip.tokenizer import SimpleTokenizer  # imported here: only this function needs it

    bpe = SimpleTokenizer()
    # same vocabulary and ids; only the two special tokens are spelled differently in transformers
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(token, token): i for token, i in bpe.encoder.items()}
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


class _Inert:
    """Stands in for any class or function pickled beside the weights (e.g. a Lightning callback)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def read_single_file(path: Path) -> dict:
    """The flat state dict of a single-file checkpoint (.safetensors, or a torch pickle loaded weights-only)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        # Lightning checkpoints may pickle callbacks next to the weights; map those globals to an
        # inert class instead of importing them, so the load stays weights-only.
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        with torch.serialization.safe_globals([(_Inert, name) for name in foreign]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # safetensors and torch raise many types for a truncated or foreign file
        raise UserError(f"{path}: not a readable checkpoint ({reason(e)})") from None
    while isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def _check_sd_v1(state: dict, path: Path) -> None:
    missing = [f"{name} ('{prefix}*')" for name, prefix in LDM_PREFIXES.items()
               if not any(k.startswith(prefix) for k in state)]
    if any(k.startswith("cond_stage_model.model.") for k in state):
        raise UserError(f"{path}: this is a Stable Diffusion v2 checkpoint (OpenCLIP text encoder); "
                        "this program needs SD v1 (e.g. sd-v1-4.ckpt)")
    if missing:
        sample = ", ".join(sorted(state)[:5]) or "none"
        raise UserError(f"{path}: not a Stable Diffusion v1 checkpoint: no weights for {', '.join(missing)} "
                        f"(first keys: {sample})")


def components_from_single_file(path: Path, config_dir: Path = SD_V1_CONFIGS) -> dict:
    """unet, vae, text_encoder, tokenizer, scheduler (float32, CPU) from an original LDM checkpoint."""
    state = read_single_file(path)
    _check_sd_v1(state, path)
    config_dir = Path(config_dir)
    try:
        unet_config = UNet2DConditionModel.load_config(config_dir / "unet")
        vae_config = AutoencoderKL.load_config(config_dir / "vae")
        text_config = CLIPTextConfig.from_pretrained(config_dir / "text_encoder")
        scheduler = PNDMScheduler.from_pretrained(config_dir / "scheduler")
    except (OSError, ValueError) as e:
        raise UserError(f"{config_dir}: the shipped SD v1 configs are missing or broken ({reason(e)})") from None

    unet = UNet2DConditionModel.from_config(unet_config)
    vae = AutoencoderKL.from_config(vae_config)
    text_encoder = CLIPTextModel(text_config)
    text_state = convert_ldm_clip_checkpoint(state)
    # transformers >= 5.6 has no `text_model.` level; position_ids is a non-persistent buffer
    own = text_encoder.state_dict()
    text_state = {k.removeprefix("text_model."): v for k, v in text_state.items()}
    text_state = {k: v for k, v in text_state.items() if k in own or not k.endswith("position_ids")}
    try:
        load_state_dict_strict(unet, convert_ldm_unet_checkpoint(state, unet_config), f"{path} (UNet)")
        load_state_dict_strict(vae, convert_ldm_vae_checkpoint(state, vae_config), f"{path} (VAE)")
        load_state_dict_strict(text_encoder, text_state, f"{path} (text encoder)")
    except UserError as e:
        raise UserError(f"{e}; is this an SD v1 checkpoint? (the configs used are in {config_dir})") from None
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
            "tokenizer": clip_tokenizer(), "scheduler": scheduler}


def load_pipeline(model: Path, config_dir: Path = SD_V1_CONFIGS) -> StableDiffusionPipeline:
    """A float32 CPU StableDiffusionPipeline (no safety checker) from a diffusers folder or a single file."""
    model = Path(model)
    if model.is_dir():
        if not (model / "model_index.json").is_file():
            raise UserError(f"{model}: a folder, but not a diffusers pipeline (no model_index.json); "
                            f"pass a diffusers folder or an SD v1 file ({', '.join(SINGLE_FILE_SUFFIXES)})")
        try:
            return StableDiffusionPipeline.from_pretrained(
                model, local_files_only=True, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"{model}: cannot load the diffusers pipeline ({reason(e)})") from None
    if not model.is_file():
        raise UserError(f"{model}: not found; pass the SD v1 checkpoint (e.g. sd-v1-4.ckpt) "
                        "or a diffusers folder")
    if model.suffix not in SINGLE_FILE_SUFFIXES:
        raise UserError(f"{model}: unknown checkpoint type '{model.suffix}' "
                        f"(expected one of {', '.join(SINGLE_FILE_SUFFIXES)} or a diffusers folder)")
    return StableDiffusionPipeline(**components_from_single_file(model, config_dir), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def shipped_configs(config_dir: Path = SD_V1_CONFIGS) -> dict:
    """The unet, vae and text_encoder config dicts of a config folder (SD v1's by default)."""
    return {name: json.loads((Path(config_dir) / name / "config.json").read_text())
            for name in ("unet", "vae", "text_encoder")}


def random_pipeline(configs: dict) -> StableDiffusionPipeline:
    """An SD v1-style pipeline with random weights from {'unet', 'vae', 'text_encoder'} config dicts,
    SD v1's scheduler and tokenizer (for tests and benchmarks: no weights needed)."""
    return StableDiffusionPipeline(
        unet=UNet2DConditionModel.from_config(configs["unet"]), vae=AutoencoderKL.from_config(configs["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"])), tokenizer=clip_tokenizer(),
        scheduler=PNDMScheduler.from_pretrained(SD_V1_CONFIGS / "scheduler"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
