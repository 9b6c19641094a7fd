"""A bad input ends in exactly one line, `PROG: error: FILE: problem`: no hints on a second line, no key
listings, no library traceback text quoted whole."""
import argparse

import open_clip
import torch

import p1_ddpm_sample
from models.clip_weights import missing_weights_message
from models.face_unet import FaceUNet
from utils.checkpoint import load_checkpoint, load_state_dict_strict
from utils.errors import UserError


def message_of(call) -> str:
    try:
        call()
    except UserError as e:
        return str(e)
    raise AssertionError("no UserError")


def test_a_foreign_pickle_is_one_line(tmp_path):
    """torch.load's weights-only refusal spans several lines (and terminal colour codes)."""
    torch.save({"args": argparse.Namespace(lr=1)}, tmp_path / "foreign.pt")
    message = message_of(lambda: load_checkpoint(tmp_path / "foreign.pt"))
    assert message.startswith(f"{tmp_path / 'foreign.pt'}: not a readable checkpoint (UnpicklingError: ")
    assert "\n" not in message and "\x1b" not in message


def test_many_wrong_keys_are_counted_not_listed(tmp_path):
    state = FaceUNet(channels=32).state_dict()
    for key in [k for k in state if k.startswith("up")][:30]:
        del state[key]
    state["extra.weight"] = torch.zeros(1)
    message = message_of(lambda: load_state_dict_strict(FaceUNet(channels=32), state, "UNet.pt"))
    assert message == ("UNet.pt does not fit FaceUNet: 30 missing keys, first: up1.resblocks.conv1.bias; "
                       "unexpected key extra.weight")
    torch.save({f"key{i}": i for i in range(100)}, tmp_path / "ckpt.pt")
    assert message_of(lambda: load_checkpoint(tmp_path / "ckpt.pt", required=("config", "step"))) == \
        f"{tmp_path / 'ckpt.pt'}: not a checkpoint: 2 missing entries, first: config"


def test_missing_clip_weights_say_where_in_one_line():
    cfg = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    message = missing_weights_message("ViT-B-32", "openai", cfg)
    assert "\n" not in message and message.count("put ") == 2


def test_a_missing_p1_checkpoint_is_one_line_with_its_hint(tmp_path, cli_error):
    with cli_error() as err:
        p1_ddpm_sample.main([str(tmp_path / "out"), "--ckpt", str(tmp_path / "none.pt")])
    assert err.message == (f"p1_ddpm_sample.py: error: {tmp_path / 'none.pt'}: P1 DDPM checkpoint not found; "
                           "train one with p1_ddpm_train.py, or pass --ckpt PATH\n")


def test_p1_samples_that_are_not_finite_are_not_written(tmp_path, cli_error):
    """A guidance weight far beyond any trained one overflows: no black or white images are written."""
    from models.p1_networks import build_from_config
    config = {"model": {"in_channels": 3, "n_feat": 8, "num_digits": 10, "num_datasets": 2},
              "schedule": {"num_steps": 50, "beta_start": 1e-4, "beta_end": 2e-2}, "datasets": ["mnistm", "svhn"],
              "image_size": 28, "p_uncond": 0.1}
    torch.manual_seed(0)
    torch.save({"config": config, "ema": build_from_config(config).state_dict()}, tmp_path / "model.pt")
    with cli_error(r"sampling gave NaN or inf in \d+ of 20 images \(unipc, 5 steps, guidance 1e\+38\)") as err:
        p1_ddpm_sample.main([str(tmp_path / "out"), "--ckpt", str(tmp_path / "model.pt"), "--per-digit", "1",
                             "--guidance", "1e38", "--quiet", "--dtype", "fp32"])
    assert err.message.count("\n") == 1 and not (tmp_path / "out" / "mnistm").exists()
