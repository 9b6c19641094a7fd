"""Checkpoints that carry their own config, loaded with errors that say what is wrong."""
from pathlib import Path

import torch

from utils.errors import UserError, reason


def save_checkpoint(obj: dict, path: Path) -> None:
    """Write atomically (temp file + rename) so an interrupted save never corrupts `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, required: tuple[str, ...] = (), what: str = "checkpoint") -> dict:
    """torch.load on the CPU, with a clear error for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise UserError(f"{path}: not a readable {what} ({reason(e)})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict, found {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise UserError(f"{path}: not a {what}: {counted(missing, 'missing entry', 'missing entries')}")
    return obj


def counted(keys: list[str], one: str, many: str) -> str:
    """'missing key a.b' or '3 missing keys, first: a.b': a listing kept to one short line."""
    return f"{one} {keys[0]}" if len(keys) == 1 else f"{len(keys)} {many}, first: {keys[0]}"


def check_finite(tensors: dict, source: str) -> None:
    """A UserError naming `source` and the first floating-point tensor of `tensors` ({key: tensor}) that
    holds a NaN or inf: such weights sample black images without any other sign."""
    bad = [k for k, v in tensors.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{source}: NaN or inf in {counted(bad, 'tensor', 'tensors')}")


def load_state_dict_strict(model: torch.nn.Module, state: dict, source: str) -> None:
    """load_state_dict(strict=True), reporting missing/unexpected keys and shape mismatches together in one
    line, and refusing weights that hold a NaN or inf."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: expected {tuple(own[k].shape)}, found {tuple(state[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(own[k].shape) != tuple(state[k].shape)]
    problems = [counted(keys, one, many) for keys, one, many in (
        (missing, "missing key", "missing keys"), (unexpected, "unexpected key", "unexpected keys"),
        (shapes, "wrong shape", "wrong shapes")) if keys]
    if problems:
        raise UserError(f"{source} does not fit {type(model).__name__}: {'; '.join(problems)}")
    check_finite(state, source)
    model.load_state_dict(state, strict=True)
