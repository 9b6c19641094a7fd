"""P2: DDIM sampling of the course's face UNet from fixed noise files.

Writes OUT_DIR/NN.png (per-image min-max normalised) for every NOISE_DIR/NN.pt, sorted, with the DDIM
convention that made the course's ground truth ("ldm": t = 981, ..., 1, predicted x_0 clamped, last
step to alphas_cumprod[0]); `--convention paper` is the DDIM paper's grid, for comparison. Optional:
MSE against ground-truth PNGs with the course's pass/fail line (OUT_DIR/mse.json), the report's
eta-sweep figure (OUT_DIR/eta_sweep.png, its pixel differences in eta_sweep.json), the slerp/lerp
interpolation figure (OUT_DIR/interpolation.png, its noise RMS, contrast and saturation in interpolation.json
and interpolation_stats.png) and both conventions side by side (OUT_DIR/conventions.png + .json).
Every input is validated before sampling starts, and every sample is checked finite before it is written.
OUT_DIR is written into a temporary folder that replaces it whole at the end: a rerun leaves nothing of
an earlier one, and a failed run leaves the earlier OUT_DIR as it was. So OUT_DIR must be apart from the
inputs, and an existing one may hold only what P2 writes (*.png, *.json).
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from models.face_ddim import (
    ALPHAS,
    CONVENTIONS,
    ETAS,
    INTERPOLATIONS,
    course_timesteps,
    eta_sweep,
    eta_sweep_stats,
    interpolated_noises,
    interpolation_stats,
    sample_faces,
)
from models.face_unet import load_face_unet
from utils.cli import (
    check_apart,
    check_replaceable,
    check_writable_dir,
    missing_paths,
    positive_float,
    positive_int,
    probability,
    skip_missing,
    staged_dir,
    write_json,
)
from utils.errors import UserError, cli
from utils.face_io import load_ground_truth, load_noises, minmax_uint8, mse_255, save_pngs
from utils.images import labelled_grid
from utils.outputs import (
    CONVENTIONS_JSON,
    CONVENTIONS_PNG,
    ETA_SWEEP_JSON,
    ETA_SWEEP_PNG,
    INTERPOLATION_JSON,
    INTERPOLATION_PNG,
    INTERPOLATION_STATS_PNG,
    MSE_JSON,
)
from utils.runtime import add_dtype_flag, pick_device, resolve_dtype, seed_everything

PROG = "p2_ddim.py"


def ddim_steps(text: str) -> int:
    """Argument type of --steps: a positive integer that divides 1000 (the course's grid needs it)."""
    steps = positive_int(text)
    try:
        course_timesteps(steps)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return steps


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("noise_dir", type=Path, help="folder of noise files NN.pt, each (1, 3, H, W), H, W multiples of 32")
    p.add_argument("out_dir", type=Path, help="where NN.png (and the optional figures and mse.json) go; "
                                              "an earlier OUT_DIR (only *.png, *.json) is replaced whole at the end")
    p.add_argument("unet_path", type=Path, help="the course's UNet.pt (a plain state_dict)")
    p.add_argument("--gt-dir", type=Path, default=None,
                   help="folder of ground-truth NN.png: print the MSE (0-255 pixels) and write OUT_DIR/mse.json")
    p.add_argument("--baseline", type=positive_float, default=20.0,
                   help="with --gt-dir: PASS when the mean MSE is below this (the course's public baseline)")
    p.add_argument("--convention", choices=sorted(CONVENTIONS), default="ldm",
                   help="DDIM grid: ldm = the course's ground truth (981, ..., 1, x_0 clamped, last step to "
                        "alphas_cumprod[0]); paper = the DDIM paper's (980, ..., 0, no clamping, last step to 1)")
    p.add_argument("--eta", type=probability, default=0.0,
                   help="DDIM eta (eq. 16): 0 deterministic, 1 DDPM-like")
    p.add_argument("--steps", type=ddim_steps, default=50,
                   help="DDIM steps on range(0, 1000, 1000 // steps) (+1 for ldm); must divide 1000")
    p.add_argument("--batch-size", type=positive_int, default=10, help="images sampled together")
    p.add_argument("--eta-sweep", action="store_true",
                   help=f"also write OUT_DIR/eta_sweep.png: eta {', '.join(map(str, ETAS))} x the first 4 noises, "
                        "and eta_sweep.json: the mean absolute pixel differences between its rows")
    p.add_argument("--interpolation", action="store_true",
                   help="also write OUT_DIR/interpolation.png: slerp and lerp between the first two noises, "
                        "alpha = 0, 0.1, ..., 1, and interpolation.json + interpolation_stats.png: the noise's "
                        "RMS and the images' contrast and saturation per alpha")
    p.add_argument("--compare-conventions", action="store_true",
                   help="also sample every noise with both conventions (eta 0): OUT_DIR/conventions.png "
                        "(rows ldm, paper) and conventions.json (the MSE between them)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stochastic noise (eta > 0, eta sweep)")
    add_dtype_flag(p, default="fp32", auto="bf16 on CUDA, fp32 on a CPU; the ground truth was made in fp32")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--skip-missing", action="store_true",
                   help="if NOISE_DIR, UNET_PATH or --gt-dir is missing, say which and exit 0 (for run_all.sh)")
    return p.parse_args(argv)


def figure_tiles(images: torch.Tensor) -> np.ndarray:
    """images (R, C, 3, H, W) -> uint8 tiles (R, C, H, W, 3), each min-max normalised as NN.png is."""
    rows, cols = images.shape[:2]
    return minmax_uint8(images.flatten(0, 1)).reshape(rows, cols, *images.shape[-2:], 3)


def save_figure(tiles: np.ndarray, row_labels, col_labels, title, path: Path) -> None:
    """uint8 tiles (R, C, H, W, 3) -> a labelled grid PNG, small tiles scaled up to about 128 pixels."""
    scale = max(1, 128 // tiles.shape[-2])
    labelled_grid(tiles, row_labels, col_labels, title, scale=scale).save(path)


def plot_interpolation_stats(stats: dict, title: str, path: Path) -> None:
    """interpolation_stats' numbers against alpha, one panel each (noise RMS, contrast, saturation),
    slerp and linear as two lines."""
    import matplotlib  # here, not at the top: the grader's plain run needs no matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = [("noise_rms", "Noise RMS", "RMS of x_T"), ("contrast", "Contrast", "std of the image's luma (0-255)"),
              ("saturation", "Saturation", "mean HSV saturation (0-1)")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (key, panel_title, ylabel) in zip(axes, panels):
        for name, style in zip(INTERPOLATIONS, ("o-", "s--")):
            ax.plot(stats["alphas"], stats[key][name], style, label=name, markersize=4)
        ax.set(xlabel="alpha", ylabel=ylabel, title=panel_title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].axhline(stats["noise_rms_ends"], color="grey", lw=0.8, ls=":", label="mean of the two ends")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_finite(x: torch.Tensor, labels: list[str], what: str) -> torch.Tensor:
    """Samples x (..., N, 3, H, W), one label per column N: a UserError naming the first column with a NaN
    or inf anywhere (min-max normalisation would write it as a black image, and exit 0)."""
    ok = torch.isfinite(x.flatten(-3)).all(-1).reshape(-1, x.shape[-4]).all(0).tolist()  # (N,)
    bad = [label for label, fine in zip(labels, ok) if not fine]
    if bad:
        raise UserError(f"{what}: sampling gave NaN or inf for {len(bad)} of {len(labels)} columns, first "
                        f"{bad[0]}; check the noise files' scale and the UNet's weights")
    return x


@cli(PROG)
def main(argv=None):
    args = parse_args(argv)
    inputs = {"noise folder": args.noise_dir, "UNet": args.unet_path, "ground truth": args.gt_dir}
    if skip_missing(PROG, missing_paths(inputs), args.skip_missing):
        return None
    # everything is read and checked before the first image is sampled
    check_apart(args.out_dir, "OUT_DIR", {"noise folder": args.noise_dir, "UNet": args.unet_path,
                                          "--gt-dir": args.gt_dir})  # OUT_DIR is replaced whole
    check_writable_dir(args.out_dir)
    check_replaceable(args.out_dir, "OUT_DIR", lambda f: len(f.parts) == 1 and f.suffix in (".png", ".json"))
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
    dtype = resolve_dtype(args.dtype, device)
    options = dict(num_steps=args.steps, batch_size=args.batch_size, dtype=dtype, progress=True)
    setting = {"convention": args.convention, "eta": args.eta, "steps": args.steps,
               "dtype": str(dtype).removeprefix("torch."), "seed": args.seed}

    # everything is sampled and checked finite first, then written into a folder that replaces OUT_DIR whole
    noise_files = [f"{name}.pt" for name in names]
    samples = check_finite(sample_faces(model, x_T, eta=args.eta, generator=generator, convention=args.convention,
                                        **options), noise_files, "NN.png")
    sweep = interpolation = conventions = None
    if args.eta_sweep:
        sweep = check_finite(eta_sweep(model, x_T[:4], ETAS, seed=args.seed, convention=args.convention, **options),
                             noise_files[:4], ETA_SWEEP_PNG)  # (5, 4, 3, H, W)
    if args.interpolation:
        noises = interpolated_noises(x_T[0], x_T[1], ALPHAS)  # (2, 11, 3, H, W)
        interpolation = check_finite(sample_faces(model, noises.flatten(0, 1), eta=0.0, convention=args.convention,
                                                  **options).view(noises.shape),
                                     [f"alpha {a:.1f}" for a in ALPHAS], INTERPOLATION_PNG)
    if args.compare_conventions:
        conventions = {c: samples if (c, args.eta) == (args.convention, 0) else
                       check_finite(sample_faces(model, x_T, eta=0.0, convention=c, **options), noise_files,
                                    f"{CONVENTIONS_PNG} ({c})") for c in ("ldm", "paper")}

    images = minmax_uint8(samples)
    with staged_dir(args.out_dir) as out:
        save_pngs(images, names, out)
        if gt is not None:
            mse = mse_255(images, gt)
            for name, value in zip(names, mse):
                print(f"{name}.png  MSE {value:.3f}")
            mean, passed = float(mse.mean()), bool(mse.mean() < args.baseline)
            print(f"mean MSE {mean:.3f} over {len(mse)} images ({args.convention} convention)")
            print(f"{'PASS' if passed else 'FAIL'}: mean MSE {mean:.3f} {'<' if passed else '>='} "
                  f"baseline {args.baseline:g}")
            write_json(out / MSE_JSON, {"per_image": dict(zip(names, mse.tolist())), "mean": mean,
                                          "baseline": args.baseline, "passed": passed, **setting})
        if sweep is not None:
            tiles = figure_tiles(sweep)  # the pixels of the figure, and of the numbers
            save_figure(tiles, [f"eta={e:g}" for e in ETAS], names[:4],
                        f"DDIM {args.steps} steps ({args.convention}), eta sweep (seed {args.seed})",
                        out / ETA_SWEEP_PNG)
            stats = eta_sweep_stats(tiles, ETAS)
            write_json(out / ETA_SWEEP_JSON, {"etas": stats.pop("etas"), "noises": names[:4], "pixel_scale": "0-255",
                                              **stats, "perceptual": None})  # no perceptual metric runs offline
        if interpolation is not None:
            tiles = figure_tiles(interpolation)
            title = f"x_T from {names[0]} (alpha 0) to {names[1]} (alpha 1), DDIM eta 0 ({args.convention})"
            save_figure(tiles, ["slerp", "lerp"], [f"{a:.1f}" for a in ALPHAS], title, out / INTERPOLATION_PNG)
            stats = interpolation_stats(x_T[0].cpu(), x_T[1].cpu(), noises.cpu(), tiles, ALPHAS)
            write_json(out / INTERPOLATION_JSON, stats)
            plot_interpolation_stats(stats, title, out / INTERPOLATION_STATS_PNG)
        if conventions is not None:
            ldm, paper = conventions["ldm"], conventions["paper"]
            mse = mse_255(minmax_uint8(ldm), minmax_uint8(paper))
            print(f"ldm vs paper convention: mean MSE {mse.mean():.3f} (0-255 pixels) over {len(mse)} images")
            save_figure(figure_tiles(torch.stack([ldm, paper])), ["ldm", "paper"], names,
                        f"DDIM {args.steps} steps, eta 0: ldm (981..1, clamped) vs paper (980..0) grid; "
                        f"mean MSE {mse.mean():.2f}", out / CONVENTIONS_PNG)
            write_json(out / CONVENTIONS_JSON,
                       {"per_image": dict(zip(names, mse.tolist())), "mean": float(mse.mean()),
                        "steps": args.steps, "dtype": setting["dtype"]})
        written = sorted(p.name for p in out.iterdir())
    print(f"wrote {args.out_dir}: {', '.join(written)}")
    return images


if __name__ == "__main__":
    main()
