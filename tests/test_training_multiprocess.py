"""Data-parallel training with two CPU processes (torchrun, gloo), against one process with the same
global batch on the same images: gradients averaged across processes give the same weights."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import p1_ddpm_train
from models import p1_training
from utils.training import process_seed

ROOT = Path(__file__).resolve().parents[1]
B = 4  # images per process and step
P1_TINY = ["--limit", "50", "--n-feat", "8", "--num-timesteps", "50", "--save-every", "1", "--log-every", "1",
           "--dtype", "fp32", "--threads", "1", "--warmup", "1"]


def torchrun(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / script), *args]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    return result


def p1_replay(steps: int, rank: int, data_root: Path) -> tuple[list[torch.Tensor], torch.Generator]:
    """The image indices process `rank` draws in `steps` steps, and its generator afterwards."""
    from utils.digits import DigitData
    data = DigitData(data_root, limit=50)
    gen = torch.Generator().manual_seed(process_seed(0, rank))
    draws = [p1_training.draw_batch(gen, data.balanced_weights(), (data.digits, data.sets), (10, 2), B, 50, 0.1)
             for _ in range(steps)]
    return [d.idx for d in draws], gen


def loss_invariant(config: dict) -> set[str]:
    """Names of the parameters whose gradient of the epsilon loss is zero up to rounding (float32)."""
    from models.p1_networks import build_from_config
    from models.diffusion import epsilon_loss
    net = build_from_config(config)
    x0, noise = torch.rand(6, 3, 28, 28), torch.randn(6, 3, 28, 28)
    cond = (torch.arange(6) % 11, torch.arange(6) % 3)
    epsilon_loss(net, x0, torch.arange(6) * 7, torch.linspace(0.99, 0.1, 50), noise, cond).backward()
    largest = max(p.grad.abs().max() for p in net.parameters())
    return {name for name, p in net.named_parameters() if p.grad.abs().max() < 1e-5 * largest}


@pytest.mark.heavy
def test_p1_two_processes_equal_one_with_the_global_batch(shared, tmp_path, monkeypatch):
    digits = shared / "hw2_data" / "digits"
    two = tmp_path / "two"
    first = torchrun("p1_ddpm_train.py", "--data-root", str(digits), "--out-dir", str(two), "--steps", "2",
                     "--batch-size", str(B), *P1_TINY)
    assert first.stdout.splitlines()[0] == "training on 2 processes (MULTI_CPU), devices cpu, cpu; recipe gpu"
    at2 = torch.load(two / "last.pt", weights_only=True)
    assert at2["config"]["training"] == {"num_processes": 2, "batch_per_process": B, "global_batch": 2 * B}
    # written by the main process only: one log line per step, the two generators gathered into one file
    assert [json.loads(line)["step"] for line in (two / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in two.iterdir()) == ["last.pt", "model.pt", "train_log.jsonl"]
    # each process drew from its own stream: the saved states are those of the replayed draws, which differ
    replays = [p1_replay(2, rank, digits) for rank in (0, 1)]
    assert len(at2["generators"]) == 2
    for (idx, gen), saved in zip(replays, at2["generators"]):
        assert torch.equal(gen.get_state(), saved)
    assert all(not torch.equal(a, b) for a, b in zip(replays[0][0], replays[1][0]))

    resumed = torchrun("p1_ddpm_train.py", "--data-root", str(digits), "--out-dir", str(two), "--steps", "3",
                       "--batch-size", str(B), "--resume", *P1_TINY)
    assert "resuming from" in resumed.stdout and "note:" not in resumed.stdout
    at3 = torch.load(two / "last.pt", weights_only=True)
    assert at3["step"] == 3
    assert [json.loads(line)["step"] for line in (two / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3]

    # one process, batch 2B: its batch is process 0's draw followed by process 1's
    gens = [torch.Generator().manual_seed(process_seed(0, rank)) for rank in (0, 1)]
    draw = p1_training.draw_batch

    def both(gen, weights, labels, null, n, num_timesteps, p_uncond, w_range=None):
        assert w_range is None  # plain training: no guidance weights drawn
        parts = [draw(g, weights, labels, null, n // 2, num_timesteps, p_uncond) for g in gens]
        return p1_training.Batch(torch.cat([p.idx for p in parts]),
                                 tuple(torch.cat(c) for c in zip(*(p.cond for p in parts))),
                                 torch.cat([p.t for p in parts]), torch.cat([p.noise for p in parts]))

    monkeypatch.setattr(p1_training, "draw_batch", both)
    one = tmp_path / "one"
    p1_ddpm_train.main(["--data-root", str(digits), "--out-dir", str(one), "--steps", "3", "--batch-size", str(2 * B),
                        "--keep-every", "2", *P1_TINY])
    reference = {2: torch.load(one / "model_000002.pt", weights_only=True),
                 3: torch.load(one / "last.pt", weights_only=True)}
    # Adam turns the gradient of a weight the loss does not depend on (a convolution's bias just before a
    # GroupNorm) into steps of +-lr decided by rounding noise; every other weight must agree closely
    free = loss_invariant(reference[3]["config"])
    assert free and all(name.endswith(".bias") for name in free)
    for step, ckpt, keys in ((2, at2, ("ema",)), (3, at3, ("model", "ema"))):
        for key in keys:
            for name, value in reference[step][key].items():
                atol, rtol = (2 * 4e-4 * step, 0) if name in free else (1e-6, 1e-4)
                torch.testing.assert_close(ckpt[key][name], value, rtol=rtol, atol=atol)
    # and training did move the weights (the comparison is not between two untrained networks)
    start = torch.load(one / "model_000002.pt", weights_only=True)["ema"]
    assert any(not torch.allclose(start[k], v) for k, v in at3["ema"].items())


@pytest.mark.heavy
def test_textual_inversion_two_processes_equal_one_with_the_global_batch(shared, tmp_path, monkeypatch):
    import p3_textual_inversion as p3
    from models.sd_loading import random_pipeline
    from models.stable_diffusion import load_learned_embeds
    from utils.ti_data import ConceptImages

    tiny = json.loads((ROOT / "tests" / "fixtures" / "ti_tiny_sd.json").read_text())
    torch.manual_seed(0)
    random_pipeline(tiny).save_pretrained(tmp_path / "tiny_sd")

    def argv(folder: Path, steps: int, batch: int, *extra: str) -> list[str]:
        return ["train", str(shared / "hw2_data/textual_inversion/0"), str(tmp_path / "tiny_sd"), "--token", "<new1>",
                "--initializer", "dog", "--batch-size", str(batch), "--lr", "0.05", "--resolution", "32",
                "--steps", str(steps), "--save-every", "1", "--log-every", "1", "--dtype", "fp32", "--quiet",
                "--embeds-dir", str(folder / "embeds"), "--run-dir", str(folder / "runs"), *extra]

    two = tmp_path / "two"
    first = torchrun("p3_textual_inversion.py", *argv(two, 2, 1))
    assert first.stdout.splitlines()[0] == "training on 2 processes (MULTI_CPU), devices cpu, cpu"
    run = two / "runs" / "new1"
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["config"]["training"] == {"num_processes": 2, "batch_per_process": 1, "global_batch": 2}
    assert len(state["generators"]) == 2 and not torch.equal(*state["generators"])
    assert sorted(p.name for p in run.iterdir()) == ["last.pt", "train_log.jsonl"]
    assert [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    at2 = load_learned_embeds(two / "embeds" / "new1.safetensors")[1]
    resumed = torchrun("p3_textual_inversion.py", *argv(two, 3, 1, "--resume"))
    assert "resuming from" in resumed.stdout
    at3 = load_learned_embeds(two / "embeds" / "new1.safetensors")[1]
    assert [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3]

    # one process, batch 2: process 0's image and noise, then process 1's (each from its own stream)
    gens = [torch.Generator().manual_seed(process_seed(0, rank)) for rank in (0, 1)]
    batch, loss = ConceptImages.batch, p3.diffusion_loss

    def both_batches(self, size, generator):
        parts = [batch(self, size // 2, g) for g in gens]
        return torch.cat([pixels for pixels, _ in parts]), [c for _, captions in parts for c in captions]

    def mean_loss(unet, vae, text_encoder, scheduler, pixels, input_ids, generator):
        h = pixels.shape[0] // 2
        return (loss(unet, vae, text_encoder, scheduler, pixels[:h], input_ids[:h], gens[0])
                + loss(unet, vae, text_encoder, scheduler, pixels[h:], input_ids[h:], gens[1])) / 2

    monkeypatch.setattr(ConceptImages, "batch", both_batches)
    monkeypatch.setattr(p3, "diffusion_loss", mean_loss)
    one = tmp_path / "one"
    ref2 = load_learned_embeds(p3.main(argv(one, 2, 2)).embeds)[1]
    ref3 = load_learned_embeds(p3.main(argv(one, 3, 2, "--resume")).embeds)[1]
    torch.testing.assert_close(at2, ref2, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(at3, ref3, rtol=1e-4, atol=1e-6)
    assert (ref3 - ref2).abs().max() > 1e-3  # the steps did move the embedding
