"""P3: CLIP zero-shot classification of `VAL_DIR/{class_id}_{image_id}.png` over the classes of ID2LABEL_JSON.

Writes OUT_DIR/results.json (accuracy, top-5 accuracy, per-class accuracy, successes and failures),
OUT_DIR/predictions.csv (one row per image) and OUT_DIR/cases.png. Fully offline: the weights must be
a local file or an open_clip pretrained tag already in the local cache; a missing file is reported
with where to put it.
"""
import argparse
import csv
import json
import time
from pathlib import Path

from models.clip_zeroshot import (
    DEFAULT_TEMPLATES,
    MissingWeightsError,
    classify,
    load_clip,
    read_templates,
    resolve_model,
    resolve_weights,
    summarise,
    text_embeddings,
)
from utils.clip_data import cases_figure, label_words, list_val_images, read_id2label
from utils.errors import UserError, cli
from utils.runtime import pick_device, seed_everything


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("val_dir", type=Path, help="folder of {class_id}_{image_id}.png images")
    p.add_argument("id2label", type=Path, help='json {"class_id": "label", ...}')
    p.add_argument("out_dir", type=Path, help="where results.json, predictions.csv and cases.png go")
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name, or a model-config JSON path")
    p.add_argument("--pretrained", default="openai",
                   help="local weights file, or an open_clip pretrained tag already in the local cache")
    p.add_argument("--templates", type=Path, default=None,
                   help=f"file of prompt templates, one per line with {{}} for the label, averaged "
                        f"(prompt ensembling); default: the single template {DEFAULT_TEMPLATES[0]!r}")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--num-cases", type=int, default=5, help="successes and failures to report and draw")
    p.add_argument("--skip-missing", action="store_true",
                   help="if the images, the json or the weights are missing, say which and exit 0 (for run_all.sh)")
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of cases")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.num_cases < 0:
        p.error("--batch-size must be at least 1 and --num-cases at least 0")
    return args


def missing_inputs(args, model_name: str) -> list[str]:
    missing = [f"{path}: not found" for path in (args.val_dir, args.id2label) if not path.exists()]
    try:
        resolve_weights(model_name, args.pretrained)
    except MissingWeightsError as e:
        missing.append(str(e))
    return missing


def run(args):
    model_name = resolve_model(args.model)
    if args.skip_missing and (missing := missing_inputs(args, model_name)):
        print("p3_clip_zeroshot.py: skipped, missing:\n- " + "\n- ".join(missing))
        return None
    id2label = read_id2label(args.id2label)
    images, ignored = list_val_images(args.val_dir, id2label)
    if ignored:
        print(f"ignoring {len(ignored)} non-PNG file(s) in {args.val_dir}: {', '.join(ignored[:5])}")
    templates = read_templates(args.templates) if args.templates else list(DEFAULT_TEMPLATES)
    weights = resolve_weights(model_name, args.pretrained)
    device = pick_device(args.device)
    generator = seed_everything(args.seed)
    model, preprocess, tokenizer = load_clip(model_name, weights, device)
    print(f"{model_name} with {weights.path}, {len(images)} images, {len(id2label)} classes, "
          f"{len(templates)} template(s), device {device}")

    start = time.time()
    text = text_embeddings(model, tokenizer, [label_words(id2label[c]) for c in sorted(id2label)], templates)
    kept, probs, skipped = classify(model, preprocess, text, images, args.batch_size)
    if not kept:
        raise UserError(f"{args.val_dir}: none of the {len(images)} images could be read")
    results, rows = summarise(kept, probs, id2label, args.num_cases, generator)
    seconds = time.time() - start

    args.out_dir.mkdir(parents=True, exist_ok=True)
    results.update(model=args.model, pretrained=str(weights.path), templates=templates, skipped=skipped,
                   ignored_files=ignored, seconds=round(seconds, 2))
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with open(args.out_dir / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    by_file = {r["file"]: {**r, "path": args.val_dir / r["file"]} for r in rows}
    figure = cases_figure([(f"Successes ({len(results['successes'])} of {sum(r['correct'] for r in rows)} correct)",
                            [by_file[c["file"]] for c in results["successes"]]),
                           (f"Failures ({len(results['failures'])} of {sum(not r['correct'] for r in rows)} wrong)",
                            [by_file[c["file"]] for c in results["failures"]])])
    figure.save(args.out_dir / "cases.png")
    print(f"accuracy {results['accuracy']:.4f} (top-5 {results['top5_accuracy']:.4f}) on {results['n']} images"
          + (f", {len(skipped)} unreadable image(s) skipped" if skipped else "")
          + f"; {len(rows) / seconds:.1f} images/s; wrote {args.out_dir}/results.json, predictions.csv, cases.png")
    return results


@cli('p3_clip_zeroshot.py')
def main(argv=None):
    args = parse_args(argv)
    return run(args)


if __name__ == "__main__":
    main()
