"""Break important features on purpose, one at a time, and check that the test suite notices.

Each mutation replaces one exact piece of source text (which must occur exactly once) and runs the
tests that guard that feature; a mutation the tests do not catch "survives", and the script exits 1.
The file is restored after every run, also on Ctrl-C. Not part of CI: it runs the tests once per
mutation (about 10-60 s each on a 2-core CPU with the default targeted tests; `--full` runs the whole
suite every time).

    .venv/bin/python tools/mutation_check.py              # all mutations, their own tests
    .venv/bin/python tools/mutation_check.py --list       # what each one breaks
    .venv/bin/python tools/mutation_check.py ema guidance # some of them
    .venv/bin/python tools/mutation_check.py --full       # the whole suite for each
"""
import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str        # the feature it breaks, in words
    path: str        # file, relative to the project root
    old: str         # exact text, found exactly once
    new: str
    tests: tuple     # pytest node ids or files that should fail


MUTATIONS = (
    Mutation("guidance", "classifier-free guidance ignored: the conditional eps alone",
             "models/diffusion.py", "eps_c[idx] = (1 + self.w) * eps_c[idx] - self.w * eps_u",
             "eps_c[idx] = eps_c[idx]", ("tests/test_p1_diffusion.py",)),
    Mutation("ddpm-variance", "DDPM posterior variance replaced by beta_t",
             "models/diffusion.py", "var = beta * (1.0 - ab_prev) / (1.0 - ab_t)", "var = beta",
             ("tests/test_p1_diffusion.py",)),
    Mutation("x0-clamp", "the ldm DDIM convention's x_0 clamp dropped",
             "models/diffusion.py", "x0 = x0.clamp(-clip_x0, clip_x0)", "x0 = x0",
             ("tests/test_p2_ddim.py",)),
    Mutation("ldm-grid", "P2's ldm grid without its offset (980, ..., 0 instead of 981, ..., 1)",
             "models/face_ddim.py", '"ldm": Convention(offset=1,', '"ldm": Convention(offset=0,',
             ("tests/test_p2_ddim.py", "tests/test_p2_cli.py")),
    Mutation("ldm-last-step", "P2's last ldm step to alpha_bar = 1 instead of alphas_cumprod[0]",
             "models/face_ddim.py", '"final_alpha_bar": 1.0 if conv.last_to_one else course_alpha_bar()[0].item()',
             '"final_alpha_bar": 1.0', ("tests/test_p2_ddim.py", "tests/test_p2_cli.py")),
    Mutation("p2-minmax", "P2's images normalised over the whole batch, not each image",
             "utils/face_io.py", "lo, hi = float(img.min()), float(img.max())",
             "lo, hi = float(x.min()), float(x.max())", ("tests/test_p2_cli.py",)),
    Mutation("ddim-sigma", "DDIM eta ignored (sigma always 0)",
             "models/diffusion.py", "return eta * ((1.0 - ab_prev)", "return 0 * eta * ((1.0 - ab_prev)",
             ("tests/test_p1_diffusion.py", "tests/test_p2_ddim.py")),
    Mutation("ema", "EMA weights never updated",
             "models/p1_training.py", "torch._foreach_lerp_(ema_params, params, 1 - decay)", "pass",
             ("tests/test_p1_pipeline.py",)),
    Mutation("labels", "digit labels shuffled when the csv is read",
             "utils/digits.py", "rows.append((name, value))", "rows.append((name, (value + 1) % 10))",
             ("tests/test_p1_data.py",)),
    Mutation("loss-mean", "the training log records the last step's loss, not the interval's mean",
             "utils/training.py", "self.total = loss if self.total is None else self.total + loss",
             "self.total = loss * (self.count + 1)", ("tests/test_training.py",)),
    Mutation("figure-blank", "figures drawn without their tiles",
             "utils/images.py", "fig.paste(Image.fromarray(tiles[r, c]).resize((w, h), Image.NEAREST), corner)",
             "pass", ("tests/test_p1_pipeline.py", "tests/test_p2_cli.py", "tests/test_p3_custom_diffusion.py")),
    Mutation("slerp", "slerp replaced by lerp",
             "models/interpolation.py", "def slerp(x0: torch.Tensor, x1: torch.Tensor, alpha: float) -> torch.Tensor:",
             "def slerp(x0: torch.Tensor, x1: torch.Tensor, alpha: float) -> torch.Tensor:\n"
             "    return lerp(x0, x1, alpha)\n", ("tests/test_interpolation.py",)),
    Mutation("clip-scale", "CLIP logits without the learned temperature",
             "models/clip_zeroshot.py", "return scale * image_emb @ text_emb.to(image_emb.device).T",
             "return image_emb @ text_emb.to(image_emb.device).T", ("tests/test_p3_clip_zeroshot.py",)),
    Mutation("ti-rows", "textual inversion leaves the other embedding rows free to drift",
             "models/stable_diffusion.py", "    weight[keep] = original[keep].to(weight)", "    pass",
             ("tests/test_p3_textual_inversion.py",)),
    Mutation("merge-noop", "the Custom Diffusion merge returns the base weights",
             "models/custom_diffusion.py", "return (w0_ + (v_.T - w0_ @ c_tgt_.T) @ d).to(w0.dtype)",
             "return w0", ("tests/test_p3_custom_diffusion.py",)),
    Mutation("last-token", "diffusers#7294: the last modifier token's gradient masked",
             "models/custom_diffusion.py", "        keep[trained_ids] = False\n        weight.grad[keep] = 0",
             "        keep[trained_ids[:-1]] = False\n        weight.grad[keep] = 0",
             ("tests/test_p3_custom_diffusion.py",)),
    Mutation("no-augment-flip", "--no-augment still flips the concept images",
             "models/custom_diffusion.py",
             "        if augment:\n            if torch.rand((), generator=generator) < 0.5:\n                x = x.flip(-1)\n",
             "        if torch.rand((), generator=generator) < 0.5:\n            x = x.flip(-1)\n        if augment:\n",
             ("tests/test_p3_custom_diffusion.py",)),
    Mutation("min-snr", "Min-SNR-gamma weighting ignored (every timestep weighted 1)",
             "models/diffusion.py", "weight = snr.clamp(max=min_snr_gamma) / snr", "weight = torch.ones_like(snr)",
             ("tests/test_p1_cpu_recipe.py",)),
    Mutation("recipe", "--recipe cpu sets none of its flags",
             "p1_ddpm_train.py", "p.set_defaults(**RECIPES.get(name, {}), recipe=name)", "p.set_defaults(recipe=name)",
             ("tests/test_p1_cpu_recipe.py",)),
    Mutation("cond-down", "cond_down's down path sees the time only (the condition in the up path alone)",
             "models/channel_mult_unet.py", "        return self._up(self._down(x, emb), emb)",
             "        return self._up(self._down(x, self.time_mlp(timestep_embedding(t, self.n_feat))), emb)",
             ("tests/test_p1_cpu_recipe.py",)),
    Mutation("cond-down-guidance", "guidance shares a cond_down network's encode (the null pass sees the condition)",
             "models/diffusion.py", 'if hasattr(self.net, "encode") and not getattr(self.net, "cond_down", False):',
             'if hasattr(self.net, "encode"):', ("tests/test_p1_solvers.py",)),
    Mutation("wording", "the report says a falling series increases",
             "utils/observations.py", '        return "decreases"', '        return "increases"',
             ("tests/test_observations.py",)),
    Mutation("pdf-figures", "the PDF leaves its figures out",
             "utils/report_pdf.py", "                pdf.image(_printable(png, w, scratch),",
             "                (lambda *a, **k: None)(_printable(png, w, scratch),",
             ("tests/test_report.py::test_pdf_holds_every_number_and_figure_of_the_report",)),
    Mutation("cd-lr", "Custom Diffusion's learning rate without the x 2 of prior preservation",
             "models/custom_diffusion.py", "* (2 if prior_preservation else 1)", "* 1",
             ("tests/test_p3_custom_diffusion.py",)),
)


def run(mutation: Mutation, full: bool) -> tuple[bool, str, float]:
    """Apply, run the tests, restore. True when a test fails (pytest's exit status 1: the mutation is
    caught), with the first failing test; a mutation that stops the collection (exit 2: a syntax or import
    error) is broken, not caught, and ends the script."""
    path = ROOT / mutation.path
    source = path.read_text()
    if source.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: the text to replace occurs {source.count(mutation.old)} times in "
                         f"{mutation.path} (the source changed: update the mutation)")
    tests = [] if full else list(mutation.tests)
    start = time.time()
    try:
        path.write_text(source.replace(mutation.old, mutation.new))
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider",
                               "-n", "2" if full else "0", *tests], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    finally:
        path.write_text(source)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{mutation.name}: pytest exited {done.returncode} (collection or usage error), so the "
                         f"mutation is broken:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    failed = next((line.split()[1] for line in done.stdout.splitlines() if line.startswith("FAILED ")), "")
    return done.returncode == 1, failed, time.time() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="mutations to run (default: all); see --list")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument("--full", action="store_true", help="run the whole suite for each mutation, not its own tests")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    known = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:16} {m.what} ({m.path})")
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        p.error(f"unknown mutation(s) {', '.join(unknown)}; see --list")
    chosen = [known[n] for n in args.names] or list(MUTATIONS)
    results = []
    for m in chosen:
        caught, failed, seconds = run(m, args.full)
        results.append({"name": m.name, "what": m.what, "caught": caught, "by": failed, "seconds": round(seconds, 1)})
        print(f"{'caught  ' if caught else 'SURVIVED'} {m.name:16} {seconds:6.1f} s  {m.what}"
              + (f"\n{'':26}by {failed}" if failed else ""), flush=True)
    survived = [r["name"] for r in results if not r["caught"]]
    print(f"{len(results) - len(survived)} caught, {len(survived)} survived" +
          (f": {', '.join(survived)}" if survived else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
