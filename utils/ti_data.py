"""Textual-inversion data: a concept's image folder (with augmentation) and the course's input.json.

Every problem with the input is a `UserError` that names the file and what is wrong with it.
"""
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils.cli import safe_name
from utils.errors import UserError
from utils.images import load_rgb

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")  # the course's evaluator reads these
LEARNED_TOKEN = re.compile(r"<[^<>\s]+>")  # "<new1>": how the course names learned tokens in prompts

# caption templates of the textual-inversion paper (its repository's "small" ImageNet lists)
OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}",
    "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}",
    "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}",
    "a cropped painting in the style of {}", "the painting in the style of {}",
    "a clean painting in the style of {}", "a dirty painting in the style of {}",
    "a dark painting in the style of {}", "a picture in the style of {}",
    "a cool painting in the style of {}", "a close-up painting in the style of {}",
    "a bright painting in the style of {}", "a good painting in the style of {}",
    "a rendition in the style of {}", "a nice painting in the style of {}",
    "a small painting in the style of {}", "a weird painting in the style of {}",
    "a large painting in the style of {}",
)


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: image folder not found")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


class Crop(NamedTuple):
    top: int
    left: int
    side: int    # a square of side x side pixels
    flip: bool   # mirrored left-right


class ConceptImages:
    """A concept's few images, each kept as (3, H, W) in [-1, 1] with its short side = `resolution`.

    `batch` draws images, crops and captions from one generator, so a run is reproducible and a
    resumed run continues exactly. Augmentation: a square crop of 75-100 % of the short side at a
    random place, resized to `resolution`, flipped half the time; without it, the centre crop.
    """

    def __init__(self, folder: Path, resolution: int, augment: bool = True, style: bool = False):
        paths = image_files(folder)
        if not paths:
            raise UserError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.paths, self.resolution, self.augment = paths, resolution, augment
        self.templates = STYLE_TEMPLATES if style else OBJECT_TEMPLATES
        self.images = []
        for path in paths:
            im = load_rgb(path)
            scale = resolution / min(im.size)
            im = im.resize((max(resolution, round(im.width * scale)), max(resolution, round(im.height * scale))),
                           Image.BICUBIC)
            x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())  # (H, W, 3)
            self.images.append(x.permute(2, 0, 1).float() / 127.5 - 1)

    def __len__(self) -> int:
        return len(self.images)

    def crop_params(self, height: int, width: int, generator: torch.Generator) -> Crop:
        """Where to crop an image of this size: with augmentation a square of 75-100 % of the short side at a
        random place, flipped half the time (four draws from `generator`, in this order); else the centre."""
        side = min(height, width)
        if not self.augment:
            return Crop((height - side) // 2, (width - side) // 2, side, False)
        side = int(side * (0.75 + 0.25 * torch.rand((), generator=generator).item()))
        top = int(torch.randint(0, height - side + 1, (), generator=generator))
        left = int(torch.randint(0, width - side + 1, (), generator=generator))
        return Crop(top, left, side, bool(torch.rand((), generator=generator) < 0.5))

    def apply_crop(self, x: torch.Tensor, crop: Crop) -> torch.Tensor:
        """(3, H, W) -> (3, R, R): the crop resized (bicubic, antialiased) to `resolution`, mirrored if `crop.flip`."""
        x = x[:, crop.top:crop.top + crop.side, crop.left:crop.left + crop.side]
        if crop.side != self.resolution:
            x = F.interpolate(x[None], size=(self.resolution,) * 2, mode="bicubic", antialias=True,
                              align_corners=False)[0].clamp(-1, 1)
        return x.flip(-1) if crop.flip else x

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """Pixels (B, 3, R, R) in [-1, 1] and caption templates with one '{}' for the placeholder."""
        idx = torch.randint(0, len(self.images), (size,), generator=generator).tolist()
        pixels = torch.stack([self.apply_crop(x, self.crop_params(*x.shape[1:], generator))
                              for x in (self.images[i] for i in idx)])
        caps = torch.randint(0, len(self.templates), (size,), generator=generator).tolist()
        return pixels, [self.templates[c] for c in caps]


@dataclass(frozen=True)
class Concept:
    """One entry of the course's input.json."""
    id: str                              # "0", "1": the output folder OUT_DIR/{id}/
    token: str                           # "<new1>"
    src_image: str                       # "dog", "David Revoy"
    prompts: tuple[str, ...]             # generated into OUT_DIR/{id}/{prompt index}/
    clip_prompts: tuple[str, ...] | None  # prompt_4_clip_eval, one per prompt
    baselines: tuple[tuple[float, float], ...] | None  # (image score, text score) per prompt


def _string_list(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(s, str) and s.strip() for s in value):
        raise UserError(f"{where} must be a non-empty list of non-empty strings, found {value!r}")
    return tuple(value)


def read_prompt_file(path: Path) -> list[Concept]:
    """The concepts of a course input.json, validated (the course's keys; clip prompts and baselines optional)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: prompt json not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path}: expected an object of concepts {{\"0\": {{...}}, ...}}, found {type(data).__name__}")
    concepts = []
    for cid, entry in data.items():
        where = f"{path}: concept {cid!r}"
        safe_name(cid, f"{path}: concept id")  # it names the folder OUT_DIR/{id}/ its images go to
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected an object, found {type(entry).__name__}")
        missing = [k for k in ("token_name", "prompt") if k not in entry]
        if missing:
            raise UserError(f"{where}: missing {' and '.join(missing)}")
        token = entry["token_name"]
        if not isinstance(token, str) or not LEARNED_TOKEN.fullmatch(token):
            raise UserError(f"{where}: token_name must look like '<new1>', found {token!r}")
        prompts = _string_list(entry["prompt"], f"{where}: prompt")
        clip_prompts = baselines = None
        if "prompt_4_clip_eval" in entry:
            clip_prompts = _string_list(entry["prompt_4_clip_eval"], f"{where}: prompt_4_clip_eval")
            if len(clip_prompts) != len(prompts):
                raise UserError(f"{where}: {len(prompts)} prompts but {len(clip_prompts)} prompt_4_clip_eval")
        if "baseline" in entry:
            b = entry["baseline"]
            ok = isinstance(b, list) and len(b) == len(prompts) and all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in b)
            if not ok:
                raise UserError(f"{where}: baseline must be one [image score, text score] pair per prompt "
                                f"({len(prompts)} prompts), found {b!r}")
            baselines = tuple((float(i), float(t)) for i, t in b)
        concepts.append(Concept(str(cid), token, str(entry.get("src_image", "")), prompts, clip_prompts, baselines))
    return concepts
