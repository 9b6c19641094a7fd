"""Training on one device or several with Hugging Face `accelerate`, shared by the P1, textual-inversion
and Custom Diffusion trainers.

Run a trainer as usual for one device, or as `accelerate launch --multi_gpu --num_processes N
SCRIPT ...` (or `torchrun --nproc_per_node N SCRIPT ...`) for data parallelism: every process
draws its own batches from its own random stream (`process_generator`), gradients are averaged
across processes, so the global batch is `--batch-size` x N. Only the main process writes
checkpoints, the log and the progress bar. docs/training.md has the details.
"""
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object
from tqdm import tqdm

from utils.cli import staged_file
from utils.errors import UserError
from utils.runtime import mixed_precision, pick_device, resolve_dtype


@contextmanager
def accelerated(device: str, dtype: str, *, cuda: str, cpu: str) -> Iterator[tuple[Accelerator, torch.dtype]]:
    """An `Accelerator` for `--device` and `--dtype` (auto: `cuda` on CUDA, `cpu` on a CPU; see
    `resolve_dtype`), and the dtype it resolved. Its state is reset on exit, so one Python process
    (a test, a notebook) can train twice with different settings."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if device == "auto":
        use_cpu = not torch.cuda.is_available()
    else:
        chosen = pick_device(device)
        use_cpu = chosen.type == "cpu"
        if chosen.type == "cuda" and chosen.index is not None:
            if launched:
                raise UserError(f"--device {device}: under a launcher every process takes its own GPU; "
                                "use --device auto or cuda")
            torch.cuda.set_device(chosen)
    dt = resolve_dtype(dtype, torch.device("cpu" if use_cpu else "cuda"), cuda=cuda, cpu=cpu)
    if use_cpu and dt == torch.float16:
        raise UserError("--dtype fp16: mixed precision in fp16 needs CUDA; use bf16 or fp32 on a CPU")
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=mixed_precision(dt))
    try:
        yield accelerator, dt
    finally:
        accelerator.end_training()
        AcceleratorState._reset_state(reset_partial_state=True)


def describe(accelerator: Accelerator) -> str:
    """'2 processes (MULTI_CPU) on cpu, cpu' / '1 process on cuda:0': the run's first line. Collective."""
    device = accelerator.device
    devices = gather_object(["cpu" if device.type == "cpu" else str(device)])
    n = accelerator.num_processes
    kind = "" if n == 1 else f" ({accelerator.distributed_type.value})"
    return f"training on {n} process{'es' if n > 1 else ''}{kind}, device{'s' if n > 1 else ''} {', '.join(devices)}"


def process_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of process `rank`'s random stream when it starts at `step`: `seed` itself for process 0
    at step 0 (so one process draws exactly what a run without a launcher draws), otherwise a seed
    derived from all three (numpy's SeedSequence), far from every other process's."""
    if rank == 0 and step == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, dtype=np.uint64)[0])


def process_generator(accelerator: Accelerator, seed: int, saved: list | None, step: int) -> torch.Generator:
    """This process's CPU generator: its saved state if the checkpoint has one for this rank, else a
    fresh stream (`process_seed`). `saved` is the checkpoint's list of states, one per process."""
    rank = accelerator.process_index
    if saved is not None and rank < len(saved):
        return torch.Generator().set_state(saved[rank])
    return torch.Generator().manual_seed(process_seed(seed, rank, step if saved is not None else 0))


def generator_states(gen: torch.Generator) -> list[torch.Tensor]:
    """Every process's generator state, in rank order (a collective: every process must call it)."""
    return gather_object([gen.get_state()])


def resume_note(saved: dict | None, accelerator: Accelerator, batch_size: int) -> str | None:
    """What a resume with another number of processes or batch keeps, or None when it is exact."""
    if saved is None:
        return None
    before, now = saved.get("num_processes", 1), accelerator.num_processes
    global_batch = batch_size * now
    if before == now and saved.get("global_batch", global_batch) == global_batch:
        return None
    return (f"note: the run had {before} process(es) and a global batch of {saved.get('global_batch', '?')}; now "
            f"{now} and {global_batch}. Weights, EMA, optimizer state, step and learning-rate schedule carry over "
            f"exactly; the random streams of processes 0..{min(before, now) - 1} continue, new ones start fresh, "
            "so the batches differ from an uninterrupted run")


class TrainLog:
    """OUT/train_log.jsonl: one line per logged step, {"step", "loss", "lr", "time"}, appended (main process
    only). loss = the mean training loss over the steps since the previous line and over all processes;
    lr = the learning rate of the logged step; time = seconds since this invocation started.

    A run that starts at step `resumed_at` (0 for a fresh one) first drops the lines of later steps: they were
    logged after the checkpoint it resumes from (a crash, an interruption) and are about to be logged again,
    so every step appears once.
    """

    def __init__(self, path: Path, enabled: bool, resumed_at: int = 0):
        self.path, self.enabled, self.start = Path(path), enabled, time.time()
        if enabled and self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = [line for line in lines if _logged_step(line) <= resumed_at]
            if len(kept) < len(lines):
                with staged_file(self.path) as tmp:
                    tmp.write_text("".join(kept), encoding="utf-8")

    def write(self, step: int, loss: float, lr: float) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": int(step), "loss": float(loss), "lr": float(lr),
                                "time": round(time.time() - self.start, 3)}) + "\n")


def _logged_step(line: str) -> float:
    """The step of a log line; a line that is not a step's record is kept (-inf): the report names it."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, TypeError, KeyError):
        return -math.inf


class LossMeter:
    """The running sum of the loss on the device (no `.item()` per step); `mean` averages it over the steps
    since the last call and over processes (a collective: every process calls it at the same steps)."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator, self.total, self.count = accelerator, None, 0

    def add(self, loss: torch.Tensor) -> None:
        loss = loss.detach().float()
        self.total = loss if self.total is None else self.total + loss
        self.count += 1

    def mean(self) -> float:
        value = self.accelerator.reduce(self.total / self.count, reduction="mean")
        self.total, self.count = None, 0
        return value.item()


def run_steps(accelerator: Accelerator, train_step: Callable[[int], torch.Tensor], save: Callable[[int], None], *,
              step: int, total: int, lr: float | Callable[[int], float], log_every: int, save_every: int,
              log_path: Path, desc: str = "train", quiet: bool = False) -> int:
    """A trainer's step loop from `step` to `total`: `train_step(step)` makes one optimisation step and returns
    its loss; every `log_every` steps and at the last, the mean loss since the previous line (`LossMeter`) and
    the learning rate of the last step (`lr`, or `lr(i)` for the 0-based step i) go to the progress bar and a
    line of `log_path` (`TrainLog`); every `save_every` steps and at the last, `save(step)` (every process
    calls it: it may gather). With no step left to run it saves once. Only the main process logs and shows the
    bar. Returns the final step."""
    lr_of = lr if callable(lr) else (lambda _: lr)
    main_process = accelerator.is_main_process
    log, meter = TrainLog(log_path, main_process, resumed_at=step), LossMeter(accelerator)
    bar = tqdm(total=total, initial=step, desc=desc, disable=quiet or not main_process, dynamic_ncols=True)
    if step >= total:  # resumed at the end, its outputs missing: write them again
        save(step)
    while step < total:
        loss = train_step(step)
        step += 1
        meter.add(loss)
        bar.update(1)
        if step % log_every == 0 or step == total:
            mean, step_lr = meter.mean(), lr_of(step - 1)
            log.write(step, mean, step_lr)
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{step_lr:.1e}")
        if step % save_every == 0 or step == total:
            save(step)
    bar.close()
    accelerator.wait_for_everyone()
    return step
