"""Checkpoints that carry their own config, loaded with errors that say what is wrong."""
from pathlib import Path

import torch

from utils.errors import UserError


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
        raise UserError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict, found {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise UserError(f"{path}: not a {what}: missing entries {missing} (has {sorted(obj)})")
    return obj


def load_state_dict_strict(model: torch.nn.Module, state: dict, source: str) -> None:
    """load_state_dict(strict=True), reporting missing/unexpected keys and shape mismatches together."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: expected {tuple(own[k].shape)}, found {tuple(state[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit {type(model).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''}")
        if shapes:
            lines.append(f"  wrong shapes ({len(shapes)}): " + "; ".join(shapes[:20]))
        raise UserError("\n".join(lines))
    model.load_state_dict(state, strict=True)
