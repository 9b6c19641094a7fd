"""p1_ddpm_train.py never overwrites a trained model it was not asked to continue, and a resumed run refuses
network or schedule flags that differ from its checkpoint's (flags left at their default take the checkpoint's)."""
import re
import shutil

import pytest
import torch

import p1_ddpm_train

TINY = ["--limit", "40", "--n-feat", "8", "--num-timesteps", "50", "--batch-size", "8", "--save-every", "1"]


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory):
    """A two-step run of a tiny ContextUnet: last.pt, model.pt, train_log.jsonl."""
    out = tmp_path_factory.mktemp("p1run")
    p1_ddpm_train.main(["--data-root", str(digits), "--out-dir", str(out), "--steps", "2", *TINY])
    return out


def test_resume_without_last_pt_keeps_model_pt(digits, run, tmp_path, cli_error):
    (tmp_path / "model.pt").write_bytes((run / "model.pt").read_bytes())
    with cli_error(r"--resume, but there is no last.pt to resume from \(only model.pt"):
        p1_ddpm_train.main(["--data-root", str(digits), "--out-dir", str(tmp_path), "--steps", "3", "--resume", *TINY])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert (tmp_path / "model.pt").read_bytes() == (run / "model.pt").read_bytes()
    for name in ("model.pt", "last.pt"):  # and a fresh run refuses a folder holding either
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        shutil.copy(run / name, folder / name)
        with cli_error(f"already holds a run \\({name}\\); add --resume"):
            p1_ddpm_train.main(["--data-root", str(digits), "--out-dir", str(folder), "--steps", "3", *TINY])
        assert (folder / name).read_bytes() == (run / name).read_bytes()


@pytest.mark.parametrize("flags, named", [
    (["--n-feat", "16"], "--n-feat 16 (it has 8)"),
    (["--num-timesteps", "60", "--beta-end", "0.03"], "--num-timesteps 60 (it has 50), --beta-end 0.03 (it has 0.02)"),
    (["--arch", "channel_mult_unet"], "--arch channel_mult_unet (it has context_unet)"),
    (["--p-uncond", "0.2"], "--p-uncond 0.2 (it has 0.1)")])
def test_resume_refuses_flags_that_differ_from_the_checkpoint(digits, run, tmp_path, flags, named, cli_error):
    shutil.copytree(run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with cli_error(re.escape(f"last.pt: --resume with {named}; a resumed run keeps its checkpoint's network")):
        p1_ddpm_train.main(["--data-root", str(digits), "--out-dir", str(tmp_path / "run"), "--steps", "3",
                            "--resume", "--limit", "40", "--batch-size", "8", *flags])
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_resume_takes_the_checkpoints_values_for_flags_left_at_their_default(digits, run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    p1_ddpm_train.main(["--data-root", str(digits), "--out-dir", str(tmp_path / "run"), "--steps", "3", "--resume",
                        "--limit", "40", "--batch-size", "8", "--n-feat", "8"])  # given, but the same: fine
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 3 and state["config"]["model"]["n_feat"] == 8
    assert state["config"]["schedule"]["num_steps"] == 50  # not the default 500
