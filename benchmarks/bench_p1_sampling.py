"""P1 sampling cost in units of the classic recipe, both measured in the same run.

The unit: one classifier-free-guided step of the classic recipe over the 1,000 graded images, i.e.
TeaPearce's ContextUnet with 128 features as published (`classic_context_unet.py`, BatchNorm blocks,
2.75 GFLOP per image forward), fp32, 2,000 image forwards in batches of 250 (the classic recipe
samples with 400 such steps: 400 units). The graded run: `hw2_1.sh`'s settings
(`models.p1_sampling.checkpoint_defaults`: the shipped checkpoint's, 50 images per digit per data set, seed 0), sampled
and written to a temporary folder, in fp32 and, where the CPU has native bf16, in bf16. The unit is
timed before and after each graded run and averaged, so a neighbour's load shifts both alike.
Absolute seconds vary 2-5x between hosts and with load: the ratio is the result. Writes JSON.
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.classic_context_unet import ClassicContextUnet, classic_gflop_per_image, gflop
from models.p1_networks import load_p1_model
from models.p1_sampling import DEFAULTS, Settings, checkpoint_defaults, guided_denoiser, sample, write_outputs
from utils.cli import write_json
from utils.runtime import cpu_capability, native_bf16

ROOT = Path(__file__).resolve().parents[1]


UNIT_FORWARDS, UNIT_BATCH = 2000, 250


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", type=Path, default=ROOT / "checkpoints" / "p1_ddpm.pt", help="P1 checkpoint")
    p.add_argument("--dtype", nargs="+", choices=["fp32", "bf16"], default=None,
                   help="precisions of the graded run (default: fp32, and bf16 where the CPU has native bf16)")
    p.add_argument("--per-digit", type=int, default=50, help="images per digit per data set (50 = the graded 1,000)")
    p.add_argument("--keep", type=Path, default=None,
                   help="write the graded images to KEEP/{fp32,bf16}/ (to score them with p1_ddpm_eval.py) "
                        "instead of a temporary folder")
    p.add_argument("--unit-forwards", type=int, default=UNIT_FORWARDS,
                   help=f"classic forwards timed for the unit (batches of up to {UNIT_BATCH}), scaled to "
                        f"{UNIT_FORWARDS}: fewer give a quicker, noisier unit")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "p1_sampling.json",
                   help="where to write the JSON")
    return p.parse_args(argv)


@torch.no_grad()
def time_unit(net: ClassicContextUnet, forwards: int = UNIT_FORWARDS) -> float:
    """Seconds for one unit: 2,000 image forwards of the classic network in fp32, batches of 250 (`forwards`
    of them timed, in batches of up to 250, and scaled to 2,000)."""
    batch = min(UNIT_BATCH, forwards)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 28, 28, generator=gen)
    c, t = torch.arange(batch) % 10, torch.rand(batch, generator=gen)
    mask = (torch.arange(batch) >= batch // 2).float()  # half conditional, half null, as guidance
    net(x, c, t, mask)  # warm-up
    batches = max(1, forwards // batch)
    start = time.perf_counter()
    for _ in range(batches):
        net(x, c, t, mask)
    return (time.perf_counter() - start) * UNIT_FORWARDS / (batch * batches)


def gflop_per_image(net, config: dict, settings: Settings = DEFAULTS) -> float:
    """GFLOP per image of sampling with `settings`: the guided denoiser at each of its timesteps, on one image
    (a guided step runs the encoder once and the decoder twice, an unguided step each once)."""
    zero = torch.zeros(1, dtype=torch.int64)
    model = guided_denoiser(net, zero, zero, settings)
    x = torch.zeros(1, 3, 28, 28)
    return sum(gflop(model, x, torch.tensor([t])) for t in settings.timesteps(config["schedule"]["num_steps"]))


def time_graded(net, config, settings: Settings, per_digit: int, dtype: torch.dtype,
                keep: Path | None) -> tuple[float, float]:
    """(seconds sampling, seconds sampling and writing) of the graded run with `settings` (hw2_1.sh's)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        images = sample(net, config, settings, per_digit=per_digit, seed=0, dtype=dtype)
        sampled = time.perf_counter() - start
        write_outputs(keep or Path(tmp), config["datasets"], images)
        return sampled, time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    dtypes = args.dtype or (["fp32", "bf16"] if native_bf16() else ["fp32"])
    classic = ClassicContextUnet(n_feat=128).eval()
    net, config = load_p1_model(args.ckpt)
    settings = checkpoint_defaults(config)
    ours, classic_gflop = gflop_per_image(net, config, settings), classic_gflop_per_image(classic)
    flop_units = ours / (UNIT_FORWARDS / 1000 * classic_gflop)  # the unit: 2 classic forwards per image
    n_images = 20 * args.per_digit
    print(f"{cpu_capability()}; torch {torch.__version__}")
    print(f"graded settings: {settings} -> {ours:.2f} GFLOP per image ({flop_units:.2f} units by FLOPs), "
          f"{n_images} images")
    units = [time_unit(classic, args.unit_forwards)]
    print(f"unit: {units[0]:.1f} s", flush=True)
    rows = []
    for name in dtypes:
        dtype = torch.bfloat16 if name == "bf16" else torch.float32
        sampled, total = time_graded(net, config, settings, args.per_digit, dtype, args.keep and args.keep / name)
        units.append(time_unit(classic, args.unit_forwards))
        unit = (units[-2] + units[-1]) / 2
        rows.append({"dtype": name, "unit_s": unit, "graded_s": total, "sampling_s": sampled,
                     "units": total / unit * 1000 / n_images,
                     # measured units over units by FLOPs: < 1 where our FLOPs run faster than the classic's
                     "units_per_flop_unit": total / unit * 1000 / n_images / flop_units})
        r = rows[-1]
        print(f"graded run {name}: {total:.1f} s (sampling {sampled:.1f} s); unit around it {unit:.1f} s "
              f"-> {r['units']:.2f} units", flush=True)
    result = {"cpu": cpu_capability(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "settings": vars(settings), "images": n_images,
              "classic_gflop_per_image_forward": classic_gflop, "gflop_per_image": ours, "flop_units": flop_units,
              "units_timed_s": units, "rows": rows,
              "units_per_flop_unit_fp32": next((r["units_per_flop_unit"] for r in rows if r["dtype"] == "fp32"), None)}
    print(f"\n{cpu_capability()}")
    print(f"{'graded run':12s} {'units':>6s} {'graded s':>9s} {'unit s':>7s} {'units by FLOPs':>15s}")
    for r in rows:
        print(f"{r['dtype']:12s} {r['units']:6.2f} {r['graded_s']:9.1f} {r['unit_s']:7.1f} {flop_units:15.2f}")
    print(f"(the classic recipe, 400 guided DDPM steps, is 400 units; GFLOP per image: a classic forward "
          f"{classic_gflop:.2f}, our graded run {ours:.2f})")
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
