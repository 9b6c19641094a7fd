"""Benchmark P3 Custom Diffusion: one training step (concept + regularization images) and 25 images.

Everywhere: the tiny CPU pipeline of the tests (32 px). On a CUDA device also the real SD v1 configs
(random weights: speed and memory do not depend on them): a `p3_custom_diffusion.py train` step at
512 px with batch 2 (+2 regularization images), bf16 mixed precision, frozen weights in bf16 and
gradient checkpointing, and 25 fp16 images at 512 px, with peak memory against a 24 GB card.
The step is also given as a ratio to a textual-inversion step on as many images, timed in the same run.
Prints a table and writes benchmarks/results/p3_custom_diffusion.json.
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

from benchmarks.bench_p3_textual_inversion import bench_generate, fmt_gb, peak_gb, sync
from benchmarks.bench_p3_textual_inversion import bench_train as bench_ti_train
from models.custom_diffusion import custom_diffusion_loss, setup_training
from models.sd_loading import random_pipeline, shipped_configs
from models.stable_diffusion import restore_rows
from utils.cli import write_json
from utils.runtime import autocast, cpu_capability, seed_everything

ROOT = Path(__file__).resolve().parents[1]


CARD_GB = 24


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "p3_custom_diffusion.json",
                   help="JSON results file")
    p.add_argument("--train-steps", type=int, default=5, help="timed training steps (after one warm-up step)")
    p.add_argument("--sample-steps", type=int, default=30, help="denoising steps of the GPU sampling run")
    p.add_argument("--skip-gpu", action="store_true", help="only the tiny CPU pipeline")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="CPU threads (1 is faster for the tiny models on a busy machine)")
    return p.parse_args(argv)


def bench_train(pipe, device, dtype, batch: int, res: int, steps: int) -> dict:
    """Seconds per step of the training loop: loss on batch concept + batch class images, backward,
    clipping, AdamW, restore rows (as `p3_custom_diffusion.py train`, without the data loading)."""
    gen = seed_everything(0)
    ids, params, original = setup_training(pipe, ["<new1>"], device, dtype)
    optimizer = torch.optim.AdamW(params, lr=1e-5 * batch, weight_decay=1e-2)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    captions = ["photo of a <new1> dog"] * batch + ["photo of a dog"] * batch
    input_ids = pipe.tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    masks = torch.ones(2 * batch, 1, res // factor, res // factor)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 1):  # the first step warms up
        pixels = torch.rand(2 * batch, 3, res, res, generator=gen) * 2 - 1
        sync(device)
        start = time.perf_counter()
        with autocast(device, dtype):
            loss = custom_diffusion_loss(pipe.unet, pipe.vae, pipe.text_encoder, scheduler, pixels, masks, input_ids,
                                         gen, num_instance=batch, device=device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        restore_rows(params[0], original, ids)
        sync(device)
        times.append(time.perf_counter() - start)
    return {"s_per_step": sum(times[1:]) / steps, "peak_gb": peak_gb(device)}


def run(name, configs, device, train_dtype, sample_dtype, res, batch_train, batch_sample, sample_steps, train_steps):
    torch.manual_seed(0)
    row = {"setup": name, "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
           or "cpu", "resolution": res, "train_batch": f"{batch_train}+{batch_train}", "sample_batch": batch_sample,
           "sample_steps": sample_steps, "train_dtype": str(train_dtype), "sample_dtype": str(sample_dtype)}
    row["train"] = bench_train(random_pipeline(configs), device, train_dtype, batch_train, res, train_steps)
    torch.manual_seed(0)  # textual inversion on as many images per step, for the ratio
    row["ti_train"] = bench_ti_train(random_pipeline(configs), device, train_dtype, 2 * batch_train, res, train_steps)
    torch.manual_seed(0)
    row["generate"] = bench_generate(random_pipeline(configs), device, sample_dtype, res, sample_steps, batch_sample,
                                     guidance=6.0, prompt="photo of a dog")
    return row


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_capability()}")
    tiny = json.loads((ROOT / "tests" / "fixtures" / "ti_tiny_sd.json").read_text())
    rows = [run("tiny (tests' pipeline), CPU", tiny, torch.device("cpu"), torch.float32, torch.float32, 32, 2, 25, 10,
                args.train_steps)]
    if torch.cuda.is_available() and not args.skip_gpu:
        rows.append(run("SD v1 (random weights), CUDA", shipped_configs(), torch.device("cuda"), torch.bfloat16,
                        torch.float16, 512, 2, 5, args.sample_steps, args.train_steps))
    else:
        print("no CUDA device: the SD v1-size benchmark did not run")
    print(f"\n{'setup':32} {'train s/step':>12} {'x TI step':>9} {'train GB':>9} {'25 images s':>12} "
          f"{'sample GB':>10}  card")
    for r in rows:
        card = ""
        if r["train"]["peak_gb"] is not None:
            peak = max(r["train"]["peak_gb"], r["generate"]["peak_gb"])
            card = f"{'fits' if peak < CARD_GB else 'OVER'} {CARD_GB} GB"
        ratio = r["train"]["s_per_step"] / r["ti_train"]["s_per_step"]
        print(f"{r['setup']:32} {r['train']['s_per_step']:12.3f} {ratio:9.2f} {fmt_gb(r['train']['peak_gb']):>9} "
              f"{r['generate']['s_per_25_images']:12.2f} {fmt_gb(r['generate']['peak_gb']):>10}  {card}")
    write_json(args.out, {"torch": torch.__version__, "cpu": cpu_capability(), "rows": rows})
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
