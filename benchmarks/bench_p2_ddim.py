"""Benchmark P2's DDIM sampling of the face UNet, against the same UNet driven by diffusers' DDIMScheduler.

CPU: time per image of `--steps` DDIM steps at `--size`, extrapolated to 50 steps (every step is
one UNet forward), ours and diffusers' loop in the same run, their ratio, peak RSS. Where CUDA
is available: `--gpu-images` images at 256x256 with 50 steps in fp32, bf16 and fp16, time, peak
GPU memory and the MSE (0-255 pixels, min-max normalised PNG values) of each against fp32.
Without `--unet` the weights are random: timings hold, but the MSE check needs the real UNet.pt.
Writes a JSON to `--out`.
"""
import argparse
import platform
import resource
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from models.face_ddim import NUM_TRAIN_STEPS, sample_faces
from models.face_unet import FaceUNet, load_face_unet
from p2_ddim import ddim_steps
from utils.cli import write_json
from utils.face_io import load_noises, minmax_uint8, mse_255
from utils.runtime import (
    DTYPES,
    seed_everything,
)

COURSE_STEPS = 50


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--unet", type=Path, default=None, help="the course's UNet.pt; random weights if not given")
    p.add_argument("--noise-dir", type=Path, default=None, help="noise files NN.pt to use; random noise if not given")
    p.add_argument("--size", type=int, default=256, help="CPU: image height and width (multiple of 32)")
    p.add_argument("--steps", type=ddim_steps, default=2,
                   help="CPU: DDIM steps timed, a divisor of 1000 (the time is scaled to 50 steps)")
    p.add_argument("--repeats", type=int, default=2, help="CPU: timed runs of each loop, alternating; the best counts")
    p.add_argument("--num-images", type=int, default=1, help="CPU: images sampled in one batch")
    p.add_argument("--gpu-images", type=int, default=10, help="GPU: images at 256x256, 50 steps")
    p.add_argument("--gpu-batch-size", type=int, default=10, help="GPU: images sampled together")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="GPU: largest per-image MSE (0-255 pixels) against fp32 for a 16-bit dtype to count as ok")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU part even where CUDA is available")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/p2_ddim.json"), help="where the JSON goes")
    return p.parse_args(argv)


@torch.no_grad()
def diffusers_loop(model, x_T: torch.Tensor, num_steps: int) -> torch.Tensor:
    """The same DDIM sampling with diffusers' DDIMScheduler, configured to the course's ldm convention
    (Stable Diffusion v1's settings: 981, ..., 1, x_0 clamped, last step to alphas_cumprod[0])."""
    scheduler = DDIMScheduler(num_train_timesteps=NUM_TRAIN_STEPS, beta_schedule="linear", beta_start=1e-4,
                              beta_end=0.02, clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=False,
                              steps_offset=1, timestep_spacing="leading")
    scheduler.set_timesteps(num_steps)
    x = x_T
    for t in scheduler.timesteps:
        eps = model(x, t.to(x.device).expand(len(x)))
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def starting_noise(args, n: int, size: int) -> torch.Tensor:
    if args.noise_dir is not None:
        return load_noises(args.noise_dir)[1][:n]
    return torch.randn(n, 3, size, size, generator=seed_everything(0))


def bench_cpu(model, args) -> dict:
    cpu = torch.device("cpu")
    x_T = starting_noise(args, args.num_images, args.size)
    with torch.no_grad():
        model(x_T[:1], torch.tensor([500]))  # warm-up
    t_ours, t_theirs = [], []
    for _ in range(args.repeats):  # alternating, so a busy machine slows both alike
        ours, seconds = timed(lambda: sample_faces(model, x_T, num_steps=args.steps), cpu)
        t_ours.append(seconds)
        theirs, seconds = timed(lambda: diffusers_loop(model, x_T, args.steps), cpu)
        t_theirs.append(seconds)
    scale = COURSE_STEPS / args.steps / len(x_T)
    return {"size": x_T.shape[-1], "images": len(x_T), "steps_timed": args.steps, "repeats": args.repeats,
            "threads": torch.get_num_threads(), "ours_s_per_image_50_steps": min(t_ours) * scale,
            "diffusers_s_per_image_50_steps": min(t_theirs) * scale,
            "ratio_ours_over_diffusers": min(t_ours) / min(t_theirs),
            "max_rel_diff_vs_diffusers": ((ours - theirs).abs().max() / theirs.abs().max()).item(),
            "peak_rss_mib": peak_rss_mib()}


def bench_gpu(model, args) -> dict:
    device = torch.device("cuda")
    model.to(device)
    x_T = starting_noise(args, args.gpu_images, 256).to(device)
    sample_faces(model, x_T[:1], num_steps=2)  # warm-up (cuDNN autotuning, allocator)
    rows, reference = {}, None
    for name, dtype in DTYPES.items():
        torch.cuda.reset_peak_memory_stats(device)
        x0, seconds = timed(lambda: sample_faces(model, x_T, num_steps=COURSE_STEPS, dtype=dtype,
                                                 batch_size=args.gpu_batch_size), device)
        images = minmax_uint8(x0)
        reference = images if reference is None else reference  # fp32 comes first
        mse = mse_255(images, reference)
        rows[name] = {"seconds_total": seconds, "seconds_per_image": seconds / len(x_T),
                      "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20,
                      "mse_vs_fp32_mean": float(mse.mean()), "mse_vs_fp32_max": float(mse.max()),
                      "within_tolerance": bool(mse.max() <= args.tolerance)}
    _, seconds = timed(lambda: diffusers_loop(model, x_T, COURSE_STEPS), device)
    rows["diffusers_fp32"] = {"seconds_total": seconds, "seconds_per_image": seconds / len(x_T)}
    return {"device": torch.cuda.get_device_name(device), "images": len(x_T), "size": 256, "steps": COURSE_STEPS,
            "real_weights": args.unet is not None, "tolerance": args.tolerance, "runs": rows}


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(0)
    model = load_face_unet(args.unet) if args.unet else FaceUNet().eval()
    results = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
               "real_weights": args.unet is not None, "cpu": bench_cpu(model, args)}
    c = results["cpu"]
    param_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(f"CPU, {c['size']}x{c['size']}, {c['images']} image(s), {c['steps_timed']} steps timed "
          f"(best of {c['repeats']}), {c['threads']} thread(s); seconds per image for 50 steps:")
    print(f"  {'ours (ddim_sample)':<24}{c['ours_s_per_image_50_steps']:>10.1f}")
    print(f"  {'diffusers DDIMScheduler':<24}{c['diffusers_s_per_image_50_steps']:>10.1f}")
    print(f"  ratio ours / diffusers {c['ratio_ours_over_diffusers']:.3f}, "
          f"max |diff| / max |x| {c['max_rel_diff_vs_diffusers']:.1e}, "
          f"peak RSS {c['peak_rss_mib']:.0f} MiB (weights {param_mib:.0f} MiB)")

    if torch.cuda.is_available() and not args.no_gpu:
        results["gpu"] = g = bench_gpu(model, args)
        print(f"GPU {g['device']}, {g['images']} images 256x256, 50 steps (course limit: 300 s for 10 images)")
        print(f"  {'run':<16}{'total s':>9}{'s/image':>9}{'peak MiB':>10}{'MSE mean':>10}{'MSE max':>9}  ok")
        for name, r in g["runs"].items():
            mse = (f"{r['mse_vs_fp32_mean']:>10.3f}{r['mse_vs_fp32_max']:>9.3f}  {r['within_tolerance']}"
                   if "mse_vs_fp32_mean" in r else "")
            peak = f"{r['peak_gpu_mib']:>10.0f}" if "peak_gpu_mib" in r else f"{'':>10}"
            print(f"  {name:<16}{r['seconds_total']:>9.1f}{r['seconds_per_image']:>9.2f}{peak}{mse}")
        if not g["real_weights"]:
            print("  (random weights: the MSE column says little about the real UNet.pt; pass --unet)")

    write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
