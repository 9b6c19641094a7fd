"""Score P1 samples: digit accuracy per data set with a judge network, and their mean.

MNIST-M images (OUT_DIR/mnistm/*.png) are judged by the course's classifier (`Classifier.pth`),
SVHN images (OUT_DIR/svhn/*.png) by the project's SVHN judge (`p1_svhn_classifier_train.py`).
The true label is the first character of the file name, as the course reads it.
Prints a table and writes JSON (default OUT_DIR/eval.json).
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from models.digit_classifiers import CourseClassifier, SvhnJudge, predict
from utils.checkpoint import load_checkpoint, load_state_dict_strict
from utils.cli import missing_paths, skip_missing, write_json
from utils.digits import load_image
from utils.errors import UserError, cli
from utils.outputs import EVAL_JSON

PROG = "p1_ddpm_eval.py"
ROOT = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir", type=Path, help="folder with mnistm/ and svhn/ of {digit}_{k}.png images")
    p.add_argument("--mnistm-classifier", type=Path, default=ROOT / "Classifier.pth",
                   help="the course's MNIST-M classifier (dict with 'state_dict'), from the course's HW2 repository")
    p.add_argument("--svhn-classifier", type=Path, default=ROOT / "checkpoints" / "svhn_classifier.pt",
                   help="the project's SVHN judge, written by p1_svhn_classifier_train.py")
    p.add_argument("--datasets", nargs="+", default=["mnistm", "svhn"], choices=["mnistm", "svhn"],
                   help="which sub-folders to score")
    p.add_argument("--json", type=Path, default=None, help="where to write the scores (default OUT_DIR/eval.json)")
    p.add_argument("--skip-missing", action="store_true",
                   help="if a classifier file is missing, say so and exit 0 instead of failing (for run_all.sh)")
    return p.parse_args(argv)


def load_judge(dataset: str, path: Path) -> torch.nn.Module:
    """The judge of `dataset` ('mnistm': the course's classifier, 'svhn': the project's) from `path`, in eval mode."""
    if dataset == "mnistm":
        ckpt = load_checkpoint(path, required=("state_dict",), what="MNIST-M classifier")
        net = CourseClassifier()
    else:
        ckpt = load_checkpoint(path, required=("config", "state_dict"), what="SVHN judge")
        net = SvhnJudge(**{k: v for k, v in ckpt["config"].items() if k == "width"})
    load_state_dict_strict(net, ckpt["state_dict"], str(path))
    return net.eval()


def read_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The PNGs of a sample folder: images (N, 3, 28, 28) uint8 and true labels (N,) from the names."""
    if not folder.is_dir():
        raise UserError(f"{folder}: sample folder not found")
    files = sorted(folder.glob("*.png"))
    if not files:
        raise UserError(f"{folder}: no .png images to score")
    bad = [f.name for f in files if not f.name[0].isdigit()]
    if bad:
        raise UserError(f"{folder}: file names must start with the digit label, e.g. 3_001.png; found {bad[:5]}")
    images = torch.from_numpy(np.stack([load_image(f) for f in files])).permute(0, 3, 1, 2)
    return images, torch.tensor([int(f.name[0]) for f in files])


def score(judge: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy, count and per-digit accuracy of `judge` on uint8 images (N, 3, 28, 28) with true labels."""
    correct = predict(judge, images) == labels
    return {"accuracy": correct.float().mean().item(), "n": len(labels),
            "per_digit": {str(d): correct[labels == d].float().mean().item()
                          for d in range(10) if (labels == d).any()}}


def evaluate(out_dir: Path, classifiers: dict[str, Path]) -> dict:
    """Scores of OUT_DIR/{dataset}/ for each data set in `classifiers` (data set -> judge file), and their mean."""
    judges = {dataset: load_judge(dataset, path) for dataset, path in classifiers.items()}  # fail fast
    result = {dataset: score(judge, *read_folder(Path(out_dir) / dataset)) for dataset, judge in judges.items()}
    result["mean"] = float(np.mean([result[d]["accuracy"] for d in classifiers]))
    result["classifiers"] = {d: str(p) for d, p in classifiers.items()}
    return result


@cli(PROG)
def main(argv=None):
    args = parse_args(argv)
    paths = {"mnistm": args.mnistm_classifier, "svhn": args.svhn_classifier}
    classifiers = {d: paths[d] for d in args.datasets}
    missing = missing_paths({f"{d} classifier": path for d, path in classifiers.items()})
    if skip_missing(PROG, missing if args.skip_missing else [], args.skip_missing):
        return None
    result = evaluate(args.out_dir, classifiers)
    for dataset in args.datasets:
        r = result[dataset]
        digits = " ".join(f"{d}:{a:.2f}" for d, a in r["per_digit"].items())
        print(f"{dataset:7s} accuracy {r['accuracy']:.4f}  (n={r['n']})  per digit {digits}")
    print(f"mean    accuracy {result['mean']:.4f}")
    out = args.json or args.out_dir / EVAL_JSON
    write_json(out, result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
