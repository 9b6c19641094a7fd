"""Small stand-ins for the course's data and weights, at the paths the docs use (tests/doc_commands.py).

`make_sandbox(shared, dest)` copies the project (without .git, .venv and outputs) to `dest`, links its
.venv, and fills `dest/hw2_data/` with what the documented commands read:

| documented path | stand-in |
| --- | --- |
| hw2_data/digits | the first 40 real training images of each data set from ../shared (and their val.csv rows) |
| Classifier.pth | the course's real MNIST-M classifier from ../shared/grader |
| hw2_data/face/{noise,UNet.pt,GT} | four (1, 3, 32, 32) noises, a random width-32 course-format UNet, random PNGs |
| hw2_data/clip_zeroshot/{val,id2label.json} | the real id2label.json, 10 real photos at 32 px; tiny_clip.pt: a tiny open_clip |
| hw2_data/textual_inversion | the real input.json and concept photos from ../shared |
| hw2_data/sd-v1-4.ckpt | a tiny random SD v1 as a diffusers folder (the loader takes either) |
| hw2_data/clip-vit-base-patch32 | a tiny random transformers CLIP |
"""
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from helpers import copy_digits
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SKIP = {".git", ".venv", "outputs", "runs", "hw2_data", "__pycache__", ".pytest_cache", "results", ".whl"}


def copy_project(dest: Path) -> Path:
    """The project's files (not .git, .venv, outputs, data) under `dest`, and a link to its .venv: the
    scripts resolve ROOT to `dest`, so nothing a command writes lands in the real checkout."""
    shutil.copytree(ROOT, dest, ignore=lambda _, names: [n for n in names if n in SKIP or n.endswith(".egg-info")])
    (dest / ".venv").symlink_to(ROOT / ".venv")
    return dest


def face_files(root: Path, names=("00", "01", "02", "03")) -> Path:
    """noise/NN.pt (1, 3, 32, 32), UNet.pt (a random width-32 FaceUNet state_dict) and GT/NN.png."""
    from models.face_unet import FaceUNet
    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    torch.save(FaceUNet(channels=32).state_dict(), root / "UNet.pt")
    g = torch.Generator().manual_seed(0)
    for sub in ("noise", "GT"):
        (root / sub).mkdir(exist_ok=True)
    for name in names:
        torch.save(torch.randn(1, 3, 32, 32, generator=g), root / "noise" / f"{name}.pt")
        Image.fromarray(np.random.default_rng(int(name)).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            root / "GT" / f"{name}.png")
    return root


def tiny_open_clip(path: Path) -> Path:
    """A tiny random open_clip model (tests/fixtures/tiny_clip.json) saved as a state dict."""
    import open_clip

    from models.clip_zeroshot import resolve_model
    torch.manual_seed(0)
    model = open_clip.create_model(resolve_model(str(FIXTURES / "tiny_clip.json")))
    torch.save(model.state_dict(), path)
    return path


def clip_val(shared: Path, root: Path, n: int = 10) -> Path:
    """val/{class}_{i}.png: real photos at 32 px under the course's names, and the real id2label.json."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(shared / "hw2_data/clip_zeroshot/id2label.json", root / "id2label.json")
    (root / "val").mkdir(exist_ok=True)
    photos = sorted((shared / "hw2_data/textual_inversion").glob("*/*.jpg"))[:n]
    for i, src in enumerate(photos):
        Image.open(src).convert("RGB").resize((32, 32), Image.LANCZOS).save(root / "val" / f"{i % 50}_{i}.png")
    return root


def tiny_sd_folder(path: Path):
    """A tiny random SD v1 (tests/fixtures/ti_tiny_sd.json) saved as a diffusers folder; returns the pipeline."""
    from models.sd_loading import random_pipeline
    torch.manual_seed(0)
    pipe = random_pipeline(json.loads((FIXTURES / "ti_tiny_sd.json").read_text()))
    pipe.save_pretrained(path)
    return pipe


def tiny_transformers_clip(path: Path) -> Path:
    """A tiny random transformers CLIPModel + processor (32 px images), for the course's CLIP scores."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from models.sd_loading import clip_tokenizer
    torch.manual_seed(0)
    text = json.loads((FIXTURES / "ti_tiny_sd.json").read_text())["text_encoder"]
    config = CLIPConfig(text_config=text, projection_dim=16,
                        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                                           num_hidden_layers=2, num_attention_heads=4))
    CLIPModel(config).save_pretrained(path)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=clip_tokenizer()).save_pretrained(path)
    return path


def make_sandbox(shared: Path, dest: Path) -> Path:
    """The project copied to `dest` with every stand-in of the table above in place."""
    copy_project(dest)
    data = dest / "hw2_data"
    copy_digits(shared, data / "digits", 40)
    for name in ("mnistm", "svhn"):  # val.csv: the same rows (the judge trainer scores on it when present)
        shutil.copy(data / "digits" / name / "train.csv", data / "digits" / name / "val.csv")
    shutil.copy(shared / "grader" / "Classifier.pth", dest / "Classifier.pth")
    face_files(data / "face")
    clip_val(shared, data / "clip_zeroshot")
    tiny_open_clip(dest / "tiny_clip.pt")
    shutil.copytree(shared / "hw2_data" / "textual_inversion", data / "textual_inversion")
    tiny_sd_folder(data / "sd-v1-4.ckpt")
    tiny_transformers_clip(data / "clip-vit-base-patch32")
    return dest
