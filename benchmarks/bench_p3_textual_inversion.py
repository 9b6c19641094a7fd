"""Benchmark P3: one textual-inversion training step and the 25 images of one prompt.

On a CUDA device: the real SD v1 configs (random weights: speed and memory do not depend on them),
bf16 training at 512 px with batch 4 and fp16 sampling at 512 px, against the course's limits
(hw2_3.sh within 15 minutes, a 20 GB card). Everywhere: the tiny CPU pipeline of the tests.
Prints a table and writes benchmarks/results/p3_textual_inversion.json.
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import DDPMScheduler

from models.sd_loading import random_pipeline, shipped_configs
from models.stable_diffusion import Sampling, add_placeholder, sample
from models.textual_inversion import diffusion_loss, optimise, setup_training
from utils.cli import write_json
from utils.clip_score import IMAGES_PER_PROMPT
from utils.runtime import seed_everything

ROOT = Path(__file__).resolve().parents[1]


COURSE_MINUTES, COURSE_GB = 15, 20
PROMPTS_IN_INPUT_JSON = 4  # the course's input.json: 2 concepts x 2 prompts


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "p3_textual_inversion.json",
                   help="JSON results file")
    p.add_argument("--train-steps", type=int, default=5, help="timed training steps (after one warm-up step)")
    p.add_argument("--sample-steps", type=int, default=30, help="denoising steps of the GPU sampling run")
    p.add_argument("--skip-gpu", action="store_true", help="only the tiny CPU pipeline")
    return p.parse_args(argv)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def fmt_gb(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def bench_train(pipe, device, dtype, batch: int, res: int, steps: int) -> dict:
    """Seconds per step of the `p3_textual_inversion.py train` loop (loss, backward, AdamW, restore rows)."""
    gen = seed_everything(0)
    ids = add_placeholder(pipe.tokenizer, pipe.text_encoder, "<bench>", "dog")
    weight, original, opt = setup_training(pipe, device, dtype, lr=5e-3)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    input_ids = pipe.tokenizer(["a photo of a <bench>"] * batch, padding="max_length", max_length=77,
                               return_tensors="pt").input_ids
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 1):  # the first step warms up
        pixels = torch.rand(batch, 3, res, res, generator=gen) * 2 - 1
        sync(device)
        start = time.perf_counter()
        loss = diffusion_loss(pipe.unet, pipe.vae, pipe.text_encoder, scheduler, pixels, input_ids, gen)
        optimise(opt, loss, weight, original, ids)
        sync(device)
        times.append(time.perf_counter() - start)
    return {"s_per_step": sum(times[1:]) / steps, "peak_gb": peak_gb(device)}


def bench_generate(pipe, device, dtype, res: int, steps: int, batch: int, guidance: float = 7.5,
                   prompt: str = "a photo of a dog") -> dict:
    """Seconds for the 25 images of one prompt, as `p3_textual_inversion.py generate` (and Custom Diffusion's)
    makes them."""
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    settings = Sampling(seed=0, batch_size=batch, steps=steps, guidance=guidance, resolution=res)
    sample(pipe, prompt, batch, settings)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    sample(pipe, prompt, IMAGES_PER_PROMPT, settings)
    sync(device)
    return {"s_per_25_images": time.perf_counter() - start, "peak_gb": peak_gb(device)}


def run(name, configs, device, train_dtype, sample_dtype, res, batch_train, batch_sample, sample_steps, train_steps):
    torch.manual_seed(0)
    row = {"setup": name, "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
           or "cpu", "resolution": res, "train_batch": batch_train, "sample_batch": batch_sample,
           "sample_steps": sample_steps, "train_dtype": str(train_dtype), "sample_dtype": str(sample_dtype)}
    row["train"] = bench_train(random_pipeline(configs), device, train_dtype, batch_train, res, train_steps)
    torch.manual_seed(0)
    row["generate"] = bench_generate(random_pipeline(configs), device, sample_dtype, res, sample_steps, batch_sample)
    # hw2_3.sh: every prompt of input.json, 25 images each (model loading not included)
    row["hw2_3_minutes"] = row["generate"]["s_per_25_images"] * PROMPTS_IN_INPUT_JSON / 60
    return row


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))))
    tiny = json.loads((ROOT / "tests" / "fixtures" / "ti_tiny_sd.json").read_text())
    cpu = torch.device("cpu")
    rows = [run("tiny (tests' pipeline), CPU", tiny, cpu, torch.float32, torch.float32, 32, 2, 25, 10,
                args.train_steps)]
    if torch.cuda.is_available() and not args.skip_gpu:
        gpu = torch.device("cuda")
        rows.append(run("SD v1 (random weights), CUDA", shipped_configs(), gpu, torch.bfloat16, torch.float16,
                        512, 4, 5, args.sample_steps, args.train_steps))
    else:
        print("no CUDA device: the SD v1-size benchmark did not run")

    print(f"\n{'setup':32} {'train s/step':>12} {'train GB':>9} {'25 images s':>12} {'sample GB':>10} "
          f"{'hw2_3 min':>10}  limits")
    for r in rows:
        limits = ""
        if r["train"]["peak_gb"] is not None:
            peak = max(r["train"]["peak_gb"], r["generate"]["peak_gb"])
            ok = r["hw2_3_minutes"] < COURSE_MINUTES and peak < COURSE_GB
            limits = f"{'within' if ok else 'OVER'} {COURSE_MINUTES} min / {COURSE_GB} GB"
        print(f"{r['setup']:32} {r['train']['s_per_step']:12.3f} {fmt_gb(r['train']['peak_gb']):>9} "
              f"{r['generate']['s_per_25_images']:12.2f} {fmt_gb(r['generate']['peak_gb']):>10} "
              f"{r['hw2_3_minutes']:10.2f}  {limits}")
    write_json(args.out, {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows})
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
