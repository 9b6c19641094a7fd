"""P3: CLIP zero-shot classification of `VAL_DIR/{class_id}_{image_id}.png` over the classes of ID2LABEL_JSON.

Writes OUT_DIR/results.json (accuracy, top-5 accuracy, per-class accuracy, the most confused pairs, successes
and failures, and the accuracy with one prompt against a prompt ensemble), OUT_DIR/predictions.csv (one row
per image) and OUT_DIR/cases.png. Fully offline: the weights must be a local file or an open_clip pretrained
tag already in the local cache; a missing file is reported with where to put it.
"""
import argparse
import csv
import time
from pathlib import Path

import torch

from models.clip_weights import MissingWeightsError, resolve_weights
from models.clip_zeroshot import (
    CIFAR100_TEMPLATES,
    DEFAULT_TEMPLATES,
    class_logits,
    confused_pairs,
    encode_images,
    load_clip,
    read_templates,
    resolve_model,
    text_embeddings,
)
from utils.cli import check_writable_dir, missing_paths, nonnegative_int, positive_int, skip_missing, write_json
from utils.clip_data import ValImage, cases_figure, label_words, list_val_images, read_id2label
from utils.errors import UserError, cli
from utils.outputs import CASES_PNG, PREDICTIONS_CSV, RESULTS_JSON
from utils.runtime import pick_device, seed_everything

PROG = "p3_clip_zeroshot.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("val_dir", type=Path, help="folder of {class_id}_{image_id}.png images")
    p.add_argument("id2label", type=Path, help='json {"class_id": "label", ...}')
    p.add_argument("out_dir", type=Path, help="where results.json, predictions.csv and cases.png go")
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name, or a model-config JSON path")
    p.add_argument("--pretrained", default="openai",
                   help="local weights file, or an open_clip pretrained tag already in the local cache")
    p.add_argument("--templates", type=Path, default=None,
                   help=f"file of prompt templates, one per line with {{}} for the label, averaged "
                        f"(prompt ensembling): the predictions are then this ensemble's, and results.json's "
                        f"'prompting' compares it with the single template; default: predictions with the single "
                        f"template {DEFAULT_TEMPLATES[0]!r}, compared with CLIP's {len(CIFAR100_TEMPLATES)} "
                        f"CIFAR-100 templates")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    p.add_argument("--num-cases", type=nonnegative_int, default=5, help="successes and failures to report and draw")
    p.add_argument("--skip-missing", action="store_true",
                   help="if the images, the json or the weights are missing, say which and exit 0 (for run_all.sh)")
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of cases")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    return p.parse_args(argv)


def missing_inputs(val_dir: Path, id2label: Path, model_name: str, pretrained: str) -> list[str]:
    """What is absent: the images, the json, the weights (with where to put them)."""
    missing = missing_paths({"validation images": val_dir, "id2label json": id2label})
    try:
        resolve_weights(model_name, pretrained)
    except MissingWeightsError as e:
        missing.append(str(e))
    return missing


def summarise(images: list[ValImage], probs: torch.Tensor, id2label: dict[int, str], num_cases: int,
              generator: torch.Generator) -> tuple[dict, list[dict]]:
    """Accuracy, top-5 accuracy, per-class accuracy, the 5 most confused (true, predicted) pairs and `num_cases`
    random successes and failures (`results.json`), and one row per image (`predictions.csv`). Class index i
    is `sorted(id2label)[i]`."""
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
               "confused_pairs": confused_pairs([r["true_label"] for r in rows], [r["pred_label"] for r in rows]),
               "successes": pick([r for r in rows if r["correct"]]),
               "failures": pick([r for r in rows if not r["correct"]])}
    return results, rows


@cli(PROG)
def main(argv=None):
    args = parse_args(argv)
    model_name = resolve_model(args.model)
    missing = missing_inputs(args.val_dir, args.id2label, model_name, args.pretrained) if args.skip_missing else []
    if skip_missing(PROG, missing, args.skip_missing):
        return None
    check_writable_dir(args.out_dir)
    id2label = read_id2label(args.id2label)
    images, ignored = list_val_images(args.val_dir, id2label)
    if ignored:
        print(f"ignoring {len(ignored)} non-PNG file(s) in {args.val_dir}: {', '.join(ignored[:5])}")
    templates = read_templates(args.templates) if args.templates else list(DEFAULT_TEMPLATES)
    ensemble = templates if args.templates else list(CIFAR100_TEMPLATES)
    weights = resolve_weights(model_name, args.pretrained)
    device = pick_device(args.device)
    generator = seed_everything(args.seed)
    model, preprocess, tokenizer = load_clip(model_name, weights, device)
    print(f"{model_name} with {weights.path}, {len(images)} images, {len(id2label)} classes, "
          f"{len(templates)} template(s), device {device}")

    start = time.time()
    words = [label_words(id2label[c]) for c in sorted(id2label)]
    kept, features, skipped = encode_images(model, preprocess, images, args.batch_size)
    if not kept:
        raise UserError(f"{args.val_dir}: none of the {len(images)} images could be read")
    # the same image features under two text classifiers: the course's one prompt and an ensemble
    probs = {mode: class_logits(model, features, text_embeddings(model, tokenizer, words, t)).softmax(-1)
             for mode, t in (("single", DEFAULT_TEMPLATES), ("ensemble", ensemble))}
    results, rows = summarise(kept, probs["ensemble" if args.templates else "single"], id2label, args.num_cases,
                              generator)
    true = torch.tensor([sorted(id2label).index(item.class_id) for item in kept])
    accuracy = {mode: int((p.argmax(-1) == true).sum()) / len(kept) for mode, p in probs.items()}
    results["prompting"] = {"single": {"template": DEFAULT_TEMPLATES[0], "accuracy": accuracy["single"]},
                            "ensemble": {"templates": len(ensemble), "accuracy": accuracy["ensemble"]}}
    seconds = time.time() - start

    args.out_dir.mkdir(parents=True, exist_ok=True)
    results.update(model=args.model, pretrained=str(weights.path), templates=templates, skipped=skipped,
                   ignored_files=ignored, seconds=round(seconds, 2))
    write_json(args.out_dir / RESULTS_JSON, results)
    with open(args.out_dir / PREDICTIONS_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    by_file = {r["file"]: {**r, "path": args.val_dir / r["file"]} for r in rows}
    figure = cases_figure([(f"Successes ({len(results['successes'])} of {sum(r['correct'] for r in rows)} correct)",
                            [by_file[c["file"]] for c in results["successes"]]),
                           (f"Failures ({len(results['failures'])} of {sum(not r['correct'] for r in rows)} wrong)",
                            [by_file[c["file"]] for c in results["failures"]])])
    figure.save(args.out_dir / CASES_PNG)
    print(f"accuracy {results['accuracy']:.4f} (top-5 {results['top5_accuracy']:.4f}) on {results['n']} images; "
          f"one prompt {accuracy['single']:.4f}, {len(ensemble)}-prompt ensemble {accuracy['ensemble']:.4f}"
          + (f", {len(skipped)} unreadable image(s) skipped" if skipped else "")
          + f"; {len(rows) / seconds:.1f} images/s; wrote {args.out_dir}/results.json, predictions.csv, cases.png")
    return results


if __name__ == "__main__":
    main()
