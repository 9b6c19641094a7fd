"""The P1 networks a checkpoint's config may name, built and loaded from it.

Kept apart from the networks so that neither network module imports the other: `channel_mult_unet`
imports the shared embeddings of `context_unet`, and this module imports both.
"""
from torch import nn

from models.channel_mult_unet import ChannelMultUnet
from models.context_unet import ContextUnet
from utils.checkpoint import load_checkpoint, load_state_dict_strict
from utils.errors import UserError, reason

NETWORKS = {"context_unet": ContextUnet, "channel_mult_unet": ChannelMultUnet}
ARCHS = tuple(NETWORKS)  # the P1 networks a config may name (`p1_ddpm_train.py --arch`)


def build_from_config(config: dict) -> nn.Module:
    """The P1 network a checkpoint's `config["model"]` describes: `arch` (default "context_unet", the
    shipped checkpoint's) picks the class, the other keys are its arguments."""
    model = dict(config["model"])
    arch = model.pop("arch", "context_unet")
    if arch not in NETWORKS:
        raise KeyError(f"arch {arch!r} is none of {list(ARCHS)}")
    return NETWORKS[arch](**model)


def load_p1_model(path) -> tuple[nn.Module, dict]:
    """The network (EMA weights when present) and config of a P1 checkpoint, in eval mode."""
    ckpt = load_checkpoint(path, required=("config",), what="P1 DDPM checkpoint")
    state = ckpt.get("ema", ckpt.get("model"))
    if state is None:
        raise UserError(f"{path}: P1 DDPM checkpoint holds no 'ema' or 'model' weights")
    config = ckpt["config"]
    try:
        net = build_from_config(config)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: config does not describe a P1 network ({reason(e)})") from None
    load_state_dict_strict(net, {k: v.float() for k, v in state.items()}, str(path))
    return net.eval(), config
