"""The course's CLIP scores for P3 (its evaluator uses transformers' openai/clip-vit-base-patch32).

- image score of a generated image: 100 x cosine similarity of its CLIP image features to each
  reference image of the concept, averaged over the references;
- text score: CLIP's `logits_per_image` against `prompt_4_clip_eval` (logit scale x cosine);
- per prompt, the 5 of the 25 images with the best image + 2.5 x text are kept and both scores
  averaged over them, then compared with the json's baseline.

`alignment` gives the same two scores, averaged over every image, for a prompt that holds several learned
concepts (Custom Diffusion's image and text alignment).
"""
import re
from pathlib import Path, PurePosixPath

import torch
from transformers import CLIPModel, CLIPProcessor

from utils.errors import UserError, reason
from utils.images import load_rgb
from utils.ti_data import image_files

IMAGES_PER_PROMPT = 25  # the course's evaluator refuses any other count
TOP_K, TEXT_WEIGHT = 5, 2.5


def generated_file(relative: PurePosixPath) -> bool:
    """True for a path of the graded layout, {concept id}/{prompt index}/{k}.png (relative to OUT_DIR)."""
    parts = relative.parts
    return len(parts) == 3 and parts[1].isdigit() and relative.suffix == ".png" and relative.stem.isdigit()


class ClipScorer:
    """A local transformers CLIP model and processor (nothing is downloaded)."""

    def __init__(self, clip_dir: Path, device: torch.device = torch.device("cpu"), batch_size: int = 32):
        clip_dir = Path(clip_dir)
        if not (clip_dir / "config.json").is_file():
            raise UserError(f"{clip_dir}: no CLIP model here (expected a transformers folder such as a "
                                    "local copy of openai/clip-vit-base-patch32 with config.json and weights)")
        try:
            self.model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval().to(device)
            self.processor = CLIPProcessor.from_pretrained(clip_dir, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"{clip_dir}: cannot load the CLIP model or processor ({reason(e)})") from None
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def image_features(self, images: list) -> torch.Tensor:
        """Projected CLIP image features (N, D), not normalised."""
        feats = []
        for i in range(0, len(images), self.batch_size):
            inputs = self.processor(images=images[i:i + self.batch_size], return_tensors="pt").to(self.device)
            feats.append(self.model.get_image_features(**inputs).pooler_output.float().cpu())
        return torch.cat(feats)

    def image_scores(self, images: list, references: list) -> torch.Tensor:
        """(N,): 100 x cos(image, reference), averaged over the references."""
        x, r = self.image_features(images), self.image_features(references)
        return 100 * torch.nn.functional.cosine_similarity(x[:, None], r[None], dim=-1).mean(1)

    @torch.no_grad()
    def text_scores(self, images: list, text: str) -> torch.Tensor:
        """(N,): logits_per_image of each image against `text` (logit_scale.exp() x cosine)."""
        scores = []
        for i in range(0, len(images), self.batch_size):
            inputs = self.processor(text=[text], images=images[i:i + self.batch_size], return_tensors="pt",
                                    padding=True).to(self.device)
            scores.append(self.model(**inputs).logits_per_image[:, 0].float().cpu())
        return torch.cat(scores)


def top_k_means(image_scores: torch.Tensor, text_scores: torch.Tensor, k: int = TOP_K,
                text_weight: float = TEXT_WEIGHT) -> tuple[float, float]:
    """Mean image and text score over the k images with the best image + text_weight x text."""
    best = torch.topk(image_scores + text_weight * text_scores, min(k, len(image_scores))).indices
    return image_scores[best].mean().item(), text_scores[best].mean().item()


def load_generated(folder: Path, expected: int = IMAGES_PER_PROMPT) -> list:
    """The images of one prompt folder; exactly `expected` of them, as the course's evaluator insists."""
    paths = image_files(folder)
    if len(paths) != expected:
        raise UserError(f"{folder}: found {len(paths)} images; the course's evaluator needs exactly {expected}")
    return [load_rgb(p) for p in paths]


def with_class_words(prompt: str, class_words: dict[str, str]) -> str:
    """`prompt` with each learned token replaced by its class word ('a <new1> next to a <new3>' -> 'a dog next
    to a cat'): the text that text alignment is measured against, as the course's prompt_4_clip_eval writes
    it. Custom Diffusion's prompts read 'V* dog': this keeps the class noun and drops only the token, which
    means nothing to CLIP."""
    if not class_words:
        return prompt
    return re.sub("|".join(map(re.escape, class_words)), lambda m: class_words[m.group(0)], prompt)


def alignment(scorer: ClipScorer, images: list, references: dict[str, list], text: str) -> dict:
    """Custom Diffusion's image and text alignment (Kumari et al. 2023) in the course's units, averaged over
    all `images` (no top-k choice): `image_sim` {concept: mean image score against its reference photos},
    `text_sim` the mean text score against `text` (see `with_class_words`), `n_images`."""
    return {"image_sim": {name: scorer.image_scores(images, refs).mean().item() for name, refs in references.items()},
            "text_sim": scorer.text_scores(images, text).mean().item(), "n_images": len(images)}
