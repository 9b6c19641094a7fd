"""Train the project's SVHN digit judge (the course's `resnet34_svhn` downloads its weights at run time).

Reads an SVHN folder in the course layout (data/*.png + train.csv, val.csv when present) and
writes a checkpoint `p1_ddpm_eval.py --svhn-classifier` reads.
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.digit_classifiers import SvhnJudge, normalise, predict
from utils.checkpoint import save_checkpoint
from utils.cli import check_writable_dir, nonnegative_int, positive_float, positive_int
from utils.digits import load_split
from utils.errors import UserError, cli
from utils.runtime import pick_device, seed_everything


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path("hw2_data/digits"), help="folder holding svhn/")
    p.add_argument("--dataset", default="svhn", help="sub-folder of --data-root to train on")
    p.add_argument("--out", type=Path, default=Path("checkpoints/svhn_classifier.pt"), help="checkpoint to write")
    p.add_argument("--epochs", type=positive_int, default=4, help="passes over the training images")
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="images per optimisation step (at most the number of training images)")
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate (AdamW, one-cycle)")
    p.add_argument("--width", type=positive_int, default=32, help="channels of the first block")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N training rows")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the initialisation, order and augmentation")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    return p.parse_args(argv)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels and small scale/rotation (float (B, 3, 28, 28))."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=gen) - 0.5) * 0.4            # +-11 degrees
    scale = 1 + (torch.rand(b, generator=gen) - 0.5) * 0.2
    shift = (torch.rand(b, 2, generator=gen) - 0.5) * 4 / 14        # +-2 px in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def train(args):
    device = pick_device(args.device)
    check_writable_dir(args.out.parent, "--out's folder")
    if args.out.is_dir():
        raise UserError(f"--out {args.out}: is a folder; give the checkpoint's file name")
    gen = seed_everything(args.seed)
    images, labels = load_split(args.data_root, args.dataset, "train", args.limit)
    if args.batch_size > len(images):
        raise UserError(f"--batch-size {args.batch_size}: larger than the {len(images)} training images "
                        "(no full batch to train on)")
    val = None
    if (args.data_root / args.dataset / "val.csv").is_file():
        val = load_split(args.data_root, args.dataset, "val")
    model = SvhnJudge(args.width).to(device)
    steps = args.epochs * (len(images) // args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    bar = tqdm(total=steps, desc="train svhn judge")
    for _ in range(args.epochs):
        order = torch.randperm(len(images), generator=gen)
        for i in range(len(images) // args.batch_size):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x = augment(normalise(images[idx]), gen).to(device)
            loss = F.cross_entropy(model.train()(x), labels[idx].to(device), label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model = model.cpu()
    result = {"config": {"width": args.width, "dataset": args.dataset}, "state_dict": model.state_dict()}
    if val is not None:
        result["val_accuracy"] = (predict(model, val[0]) == val[1]).float().mean().item()
        print(f"{args.dataset} val accuracy: {result['val_accuracy']:.4f} ({len(val[1])} images)")
    save_checkpoint(result, args.out)
    print(f"wrote {args.out}")
    return result


@cli('p1_svhn_classifier_train.py')
def main(argv=None):
    args = parse_args(argv)
    return train(args)


if __name__ == "__main__":
    main()
