"""The face UNet against the course's UNet.pt format (keys.json) and reference forward (golden.pt)."""
import json

import pytest
import torch

from models.face_unet import FaceUNet, load_face_unet
from utils.errors import UserError


@pytest.fixture(scope="module")
def full_net():
    return FaceUNet().eval()


def test_state_dict_has_the_course_keys_and_shapes(full_net, shared):
    expected = json.loads((shared / "fixtures/face_unet/keys.json").read_text())
    state = full_net.state_dict()
    assert list(state) == list(expected)
    assert {k: list(v.shape) for k, v in state.items()} == expected
    assert sum(p.numel() for p in full_net.parameters()) == pytest.approx(113.7e6, rel=1e-3)


def test_forward_matches_golden(full_net, shared):
    # the README's deterministic weights: sorted keys, one generator, randn * 0.05, inv_freq kept
    g = torch.Generator().manual_seed(1234)
    state = full_net.state_dict()
    weights = {k: state[k] if k.endswith("inv_freq") else torch.randn(state[k].shape, generator=g) * 0.05
               for k in sorted(state)}
    full_net.load_state_dict(weights, strict=True)
    golden = torch.load(shared / "fixtures/face_unet/golden.pt", weights_only=True)
    with torch.no_grad():
        out = full_net(golden["forward_x"], golden["forward_t"])
    rel = (out - golden["forward_out"]).norm() / golden["forward_out"].norm()
    assert rel <= 1e-4, f"relative error {rel:.2e}"


def small_state():
    torch.manual_seed(0)
    return FaceUNet(channels=32).state_dict()


def test_load_face_unet_round_trip(tmp_path):
    state = small_state()
    torch.save(state, tmp_path / "UNet.pt")
    model = load_face_unet(tmp_path / "UNet.pt")
    assert not model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_unfit_state_dict_lists_missing_unexpected_and_shapes(tmp_path):
    state = small_state()
    del state["up23.resblocks.conv2.weight"]
    state["up24.resblocks.conv1.weight"] = torch.zeros(1)
    state["mid1.attention.qkv.weight"] = torch.zeros(3, 128, 1, 1)
    torch.save(state, tmp_path / "UNet.pt")
    with pytest.raises(UserError) as err:
        load_face_unet(tmp_path / "UNet.pt")
    message = str(err.value)
    assert "UNet.pt" in message
    assert "missing key up23.resblocks.conv2.weight" in message
    assert "unexpected key up24.resblocks.conv1.weight" in message
    assert "wrong shape mid1.attention.qkv.weight: expected (384, 128, 1, 1), found (3, 128, 1, 1)" in message
    assert "\n" not in message  # one line, however many keys are wrong


@pytest.mark.parametrize("content", [b"not a checkpoint", None, {"model": {"a": 1}}])
def test_unreadable_or_foreign_file_names_the_file(tmp_path, content):
    path = tmp_path / "UNet.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError, match="UNet.pt"):
        load_face_unet(path)


def test_rejects_sizes_not_multiple_of_32():
    net = FaceUNet(channels=32).eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.zeros(1, 3, 48, 64), torch.tensor([10]))
