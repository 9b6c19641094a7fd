"""P3 benchmark: CLIP zero-shot throughput (images/s) against batch size, with random weights of the real size.

Times the model's own preprocessing of a 32x32 PIL image (the size of the course's CIFAR-100 images),
the 50-class text embedding, and image encoding + logits per batch size. Random weights cost the same
as trained ones and need no download. Writes the table to --out as JSON.
"""
import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.clip_weights import Weights
from models.clip_zeroshot import DEFAULT_TEMPLATES, image_logits, load_clip, resolve_model, text_embeddings
from utils.cli import write_json
from utils.runtime import pick_device, seed_everything


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name or model-config JSON (random weights)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="batch sizes to time")
    p.add_argument("--iters", type=int, default=3, help="timed batches per batch size (after one warm-up batch)")
    p.add_argument("--num-classes", type=int, default=50, help="classes whose prompts are embedded")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto, ...")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/p3_clip.json"), help="JSON results file")
    return p.parse_args(argv)


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    seed_everything(0)
    name = resolve_model(args.model)
    model, preprocess, tokenizer = load_clip(name, Weights(None), device)
    size = model.visual.image_size

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    n_pre = 200
    pre_s = timed(lambda: [preprocess(image) for _ in range(n_pre)], torch.device("cpu"))
    words = [f"class {i}" for i in range(args.num_classes)]
    text = text_embeddings(model, tokenizer, words, DEFAULT_TEMPLATES)  # warm-up
    text_s = timed(lambda: text_embeddings(model, tokenizer, words, DEFAULT_TEMPLATES), device)

    rows = []
    for bs in args.batch_sizes:
        x = torch.randn(bs, 3, *size, device=device)
        image_logits(model, x, text)  # warm-up
        seconds = [timed(lambda: image_logits(model, x, text), device) for _ in range(args.iters)]
        per_batch = float(np.median(seconds))
        rows.append({"batch_size": bs, "seconds_per_batch": per_batch, "images_per_s": bs / per_batch})

    print(f"{name}, random weights, {device}, {torch.get_num_threads()} thread(s), input {tuple(size)}")
    print(f"preprocess (32x32 PIL -> tensor): {n_pre / pre_s:.0f} images/s")
    print(f"text embedding, {args.num_classes} classes x 1 template: {text_s:.2f} s")
    print(f"{'batch':>6} {'s/batch':>9} {'images/s':>9}")
    for r in rows:
        print(f"{r['batch_size']:>6} {r['seconds_per_batch']:>9.3f} {r['images_per_s']:>9.1f}")
    best = max(r["images_per_s"] for r in rows)
    print(f"2,500 images (50 per class) at the best batch size: about {2500 / best:.0f} s of encoding")

    write_json(args.out, {
        "model": name, "weights": "random", "device": str(device), "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "preprocess_images_per_s": n_pre / pre_s, "text_embedding_s": text_s, "num_classes": args.num_classes,
        "rows": rows})
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
