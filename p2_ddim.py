"""P2: DDIM sampling of the course's face UNet from fixed noise files.

Writes OUT_DIR/NN.png (per-image min-max normalised) for every NOISE_DIR/NN.pt, sorted. Optional:
MSE against ground-truth PNGs (OUT_DIR/mse.json), the report's eta-sweep figure
(OUT_DIR/eta_sweep.png) and slerp/lerp interpolation figure (OUT_DIR/interpolation.png).
Every noise and ground-truth file is validated before sampling starts.
"""
import argparse
import json
from pathlib import Path

from models.face_ddim import ALPHAS, ETAS, course_timesteps, eta_sweep, interpolated_noises, sample_faces
from models.face_unet import load_face_unet
from utils.errors import UserError, cli
from utils.face_io import load_ground_truth, load_noises, minmax_uint8, mse_255, save_pngs
from utils.images import labelled_grid
from utils.runtime import add_dtype_flag, pick_device, resolve_dtype, seed_everything


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("noise_dir", type=Path, help="folder of noise files NN.pt, each (1, 3, H, W), H, W multiples of 32")
    p.add_argument("out_dir", type=Path, help="where NN.png (and the optional figures and mse.json) go")
    p.add_argument("unet_path", type=Path, help="the course's UNet.pt (a plain state_dict)")
    p.add_argument("--gt-dir", type=Path, default=None,
                   help="folder of ground-truth NN.png: print the MSE (0-255 pixels) and write OUT_DIR/mse.json")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (eq. 16): 0 deterministic, 1 DDPM-like")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps on range(0, 1000, 1000 // steps); divides 1000")
    p.add_argument("--batch-size", type=int, default=10, help="images sampled together")
    p.add_argument("--eta-sweep", action="store_true",
                   help=f"also write OUT_DIR/eta_sweep.png: eta {', '.join(map(str, ETAS))} x the first 4 noises")
    p.add_argument("--interpolation", action="store_true",
                   help="also write OUT_DIR/interpolation.png: slerp and lerp between the first two noises, "
                        "alpha = 0, 0.1, ..., 1")
    p.add_argument("--seed", type=int, default=0, help="seed of the stochastic noise (eta > 0, eta sweep)")
    add_dtype_flag(p, default="fp32", auto="bf16 on CUDA, fp32 on a CPU; the ground truth was made in fp32")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--skip-missing", action="store_true",
                   help="if NOISE_DIR, UNET_PATH or --gt-dir is missing, say which and exit 0 (for run_all.sh)")
    args = p.parse_args(argv)
    try:
        course_timesteps(args.steps)
    except ValueError as e:
        p.error(f"--steps: {e}")
    return args


def save_figure(images, row_labels, col_labels, title, path: Path) -> None:
    """images (R, C, 3, H, W) -> a labelled grid PNG, each tile min-max normalised."""
    rows, cols = images.shape[:2]
    tiles = minmax_uint8(images.flatten(0, 1)).reshape(rows, cols, *images.shape[-2:], 3)
    scale = max(1, 128 // images.shape[-1])
    labelled_grid(tiles, row_labels, col_labels, title, scale=scale).save(path)
    print(f"wrote {path}")


@cli('p2_ddim.py')
def main(argv=None):
    args = parse_args(argv)
    missing = [str(p) for p in (args.noise_dir, args.unet_path, args.gt_dir) if p is not None and not p.exists()]
    if missing and args.skip_missing:
        print("p2_ddim.py: skipped, missing: " + ", ".join(missing))
        return None
    # everything is read and checked before the first image is sampled
    names, x_T = load_noises(args.noise_dir)
    gt = load_ground_truth(args.gt_dir, names, x_T.shape[-2:]) if args.gt_dir else None
    model = load_face_unet(args.unet_path)
    if args.eta_sweep and len(names) < 4:
        raise UserError(f"--eta-sweep needs 4 noise files, {args.noise_dir} has {len(names)}")
    if args.interpolation and len(names) < 2:
        raise UserError(f"--interpolation needs 2 noise files, {args.noise_dir} has {len(names)}")
    device = pick_device(args.device)
    generator = seed_everything(args.seed)
    model.to(device)
    x_T = x_T.to(device)
    options = dict(num_steps=args.steps, batch_size=args.batch_size, dtype=resolve_dtype(args.dtype, device), progress=True)

    images = minmax_uint8(sample_faces(model, x_T, eta=args.eta, generator=generator, **options))
    for path in save_pngs(images, names, args.out_dir):
        print(f"wrote {path}")

    if gt is not None:
        mse = mse_255(images, gt)
        for name, value in zip(names, mse):
            print(f"{name}.png  MSE {value:.3f}")
        print(f"mean MSE {mse.mean():.3f} over {len(mse)} images")
        report = {"per_image": dict(zip(names, mse.tolist())), "mean": float(mse.mean()),
                  "eta": args.eta, "steps": args.steps, "dtype": args.dtype}
        (args.out_dir / "mse.json").write_text(json.dumps(report, indent=2))

    if args.eta_sweep:
        rows = eta_sweep(model, x_T[:4], ETAS, seed=args.seed, **options)
        save_figure(rows, [f"eta={e:g}" for e in ETAS], names[:4],
                    f"DDIM {args.steps} steps, eta sweep (seed {args.seed})", args.out_dir / "eta_sweep.png")
    if args.interpolation:
        noises = interpolated_noises(x_T[0], x_T[1], ALPHAS)  # (2, 11, 3, H, W)
        x0 = sample_faces(model, noises.flatten(0, 1), eta=0.0, **options).view(noises.shape)
        save_figure(x0, ["slerp", "lerp"], [f"{a:.1f}" for a in ALPHAS],
                    f"x_T from {names[0]} (alpha 0) to {names[1]} (alpha 1), DDIM eta 0",
                    args.out_dir / "interpolation.png")


if __name__ == "__main__":
    main()
