"""Seeding, device choice and precision, shared by the scripts.

Precision has one flag everywhere, `--dtype auto|fp32|bf16|fp16` (`add_dtype_flag`); the P1
scripts also accept the older `--bf16 auto|on|off` (on = bf16, off = fp32). Networks run under
autocast in that dtype (`autocast`); weights, optimizers and the samplers' arithmetic stay fp32.
"""
import argparse
import random

import numpy as np
import torch

from utils.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here")
    return device


def native_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 is about 2x faster."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cpu_capability() -> str:
    """What the CPU offers torch, for benchmarks: e.g. 'AVX512, native bf16, 2 threads'."""
    bf16 = "native bf16" if native_bf16() else "no native bf16"
    return f"{torch.backends.cpu.get_cpu_capability()}, {bf16}, {torch.get_num_threads()} threads"


def resolve_dtype(name: str, device: torch.device, *, cuda: str = "bf16", cpu: str = "fp32") -> torch.dtype:
    """`--dtype` to a torch dtype. 'auto' -> `cuda` on CUDA; on a CPU `cpu`, where 'bf16' means
    bf16 only on CPUs with native bf16 (fp32 elsewhere, where emulated bf16 is slower)."""
    if name == "auto":
        name = cuda if device.type == "cuda" else cpu
        if device.type != "cuda" and name == "bf16" and not native_bf16():
            name = "fp32"
    if name not in DTYPES:
        raise UserError(f"--dtype {name}: expected auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]


class _Bf16Alias(argparse.Action):
    """`--bf16 on|off|auto`, the P1 scripts' older spelling, stored as --dtype bf16|fp32|auto."""

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, {"on": "bf16", "off": "fp32", "auto": "auto"}[value])


NETWORK_PRECISION = "precision of the network (autocast; weights and the sampler's arithmetic stay fp32)"


def add_dtype_flag(parser: argparse.ArgumentParser, auto: str, default: str = "auto", bf16_alias: bool = False,
                   what: str = NETWORK_PRECISION):
    """Add `--dtype auto|fp32|bf16|fp16` (and, with `bf16_alias`, `--bf16 auto|on|off`); `what` says what it sets,
    `auto` what auto means."""
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default=default, help=f"{what}; auto = {auto}")
    if bf16_alias:
        parser.add_argument("--bf16", dest="dtype", choices=["auto", "on", "off"], action=_Bf16Alias,
                            help="older spelling of --dtype: on = bf16, off = fp32, auto = auto")


def dtype_name(dtype: torch.dtype) -> str:
    """The `--dtype` name of a torch dtype: 'fp32', 'bf16' or 'fp16'."""
    return next(name for name, dt in DTYPES.items() if dt == dtype)


def mixed_precision(dtype: torch.dtype) -> str:
    """accelerate's `mixed_precision` for `dtype`: 'no' for fp32, else its `--dtype` name."""
    return "no" if dtype == torch.float32 else dtype_name(dtype)


def autocast(device: torch.device | str, dtype: torch.dtype) -> torch.autocast:
    """The one precision switch: autocast in `dtype` on `device`'s type, disabled for fp32. Autocast keeps
    GroupNorm and softmax in float32 and runs the convolutions and matmuls in `dtype`; the caller returns
    the network's output in float32, so the sampler's update never rounds x_t to 16 bits."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)
