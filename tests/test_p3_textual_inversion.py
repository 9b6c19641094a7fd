"""P3 textual inversion on CPU: a tiny randomly initialised SD v1 (small UNet, VAE, CLIP text encoder)
with the real CLIP vocabulary, the real dog photos, and a tiny transformers CLIP for the scores."""
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: nothing may download

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPTextModel

import p3_textual_inversion as p3
from models.sd_loading import (
    SD_V1_CONFIGS,
    clip_tokenizer,
    components_from_single_file,
    load_pipeline,
)
from models.stable_diffusion import Sampling, load_learned_embeds, save_learned_embeds
import p3_sd_cli as sd_cli
from utils.errors import UserError
from utils.ti_data import ConceptImages, read_prompt_file

TINY = json.loads((Path(__file__).parent / "fixtures" / "ti_tiny_sd.json").read_text())
RES = ["--resolution", "32"]
# diffusers' DPM-Solver builds a numpy array from a tensor the numpy-2 way it warns about; not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


# ------------------------------------------------------------------ tiny models and the LDM key layout
def unet_to_ldm(state: dict, config) -> dict:
    """diffusers UNet keys -> the original LDM names (input_blocks / middle_block / output_blocks)."""
    L, n = config["layers_per_block"], len(config["block_out_channels"])
    down_attn = ["CrossAttn" in t for t in config["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    prefixes = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
                ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
                ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
                ("mid_block.resnets.1.", "middle_block.2.")]
    for i in range(n):
        for j in range(L):
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(L + 1) * i + j + 1}.0."))
            if down_attn[i]:
                prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(L + 1) * i + j + 1}.1."))
        for j in range(L + 1):
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(L + 1) * i + j}.0."))
            if up_attn[i]:
                prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(L + 1) * i + j}.1."))
        if i < n - 1:
            prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(L + 1) * (i + 1)}.0.op."))
            upsample = f"output_blocks.{(L + 1) * i + L}.{2 if up_attn[i] else 1}."  # after the attention, if any
            prefixes.append((f"up_blocks.{i}.upsamplers.0.", upsample))
    resnet = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
              ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection.")]
    out = {}
    for key, value in state.items():
        hf, sd = next((h, s) for h, s in prefixes if key.startswith(h))
        rest = key[len(hf):]
        if ".resnets." in hf or hf.startswith("mid_block.resnets"):
            rest = next((s + rest[len(h):] for h, s in resnet if rest.startswith(h)), rest)
        out["model.diffusion_model." + sd + rest] = value
    return out


def vae_to_ldm(state: dict, config) -> dict:
    """diffusers AutoencoderKL keys -> the original LDM names (down.i.block.j, mid.attn_1 with 1x1 convs)."""
    L, n = config["layers_per_block"], len(config["block_out_channels"])
    prefixes = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for part in ("encoder", "decoder"):
        prefixes += [(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."),
                     (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."),
                     (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.")]
    for i in range(n):
        prefixes += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.") for j in range(L)]
        prefixes += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.")
                     for j in range(L + 1)]  # LDM numbers the decoder's levels from the bottom
        if i < n - 1:
            prefixes += [(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
                         (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.")]
    parts = [("conv_shortcut.", "nin_shortcut."), ("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."),
             ("to_v.", "v."), ("to_out.0.", "proj_out.")]
    out = {}
    for key, value in state.items():
        hf, sd = next(((h, s) for h, s in prefixes if key.startswith(h)), ("", ""))
        rest = key[len(hf):]
        rest = next((s + rest[len(h):] for h, s in parts if rest.startswith(h)), rest)
        if "attn_1." in sd and rest.split(".")[0] in ("q", "k", "v", "proj_out") and rest.endswith("weight"):
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out["first_stage_model." + sd + rest] = value
    return out


def to_ldm_checkpoint(pipe) -> dict:
    state = {**unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
             **vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
             **{"cond_stage_model.transformer.text_model." + k: v for k, v in pipe.text_encoder.state_dict().items()}}
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return state


class LightningCallbackStandIn:
    """Pickled beside the weights, as Lightning does with its ModelCheckpoint callback."""

    def __init__(self):
        self.best_model_score = 0.5


def assert_same_weights(loaded, original):
    a, b = loaded.state_dict(), original.state_dict()
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


# -------------------------------------------------------------------------------- offline loading
def test_tokenizer_matches_open_clip(shared):
    from open_clip.tokenizer import SimpleTokenizer
    reference, tok = SimpleTokenizer(), clip_tokenizer()
    assert len(tok) == 49408 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407
    assert tok.model_max_length == 77
    concepts = read_prompt_file(shared / "hw2_data/textual_inversion/input.json")
    for text in [p for c in concepts for p in c.prompts + c.clip_prompts] + ["it's 2024: a café!"]:
        assert tok(text).input_ids == [49406] + reference.encode(text) + [49407]


def test_shipped_configs_are_sd_v1():
    """The published parameter counts of SD v1's UNet, VAE and CLIP ViT-L/14 text encoder."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD_V1_CONFIGS / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD_V1_CONFIGS / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(SD_V1_CONFIGS / "text_encoder"))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]
    assert vae.config.scaling_factor == 0.18215


def test_original_layout_at_full_size_fits_the_shipped_configs():
    """SD v1's original checkpoint holds 686 UNet and 248 VAE tensors; diffusers' converters map that
    layout (written here from the LDM module names) onto every parameter of the shipped configs."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD_V1_CONFIGS / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD_V1_CONFIGS / "vae"))
    for model, to_ldm, convert, count in ((unet, unet_to_ldm, convert_ldm_unet_checkpoint, 686),
                                          (vae, vae_to_ldm, convert_ldm_vae_checkpoint, 248)):
        own = model.state_dict()
        ldm = to_ldm(own, model.config)
        back = convert(ldm, dict(model.config))
        assert len(ldm) == count and sorted(back) == sorted(own)
        assert all(back[k].shape == own[k].shape for k in own)
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)


def test_single_file_checkpoint_loads_like_the_original(tiny_sd, tmp_path):
    folder, pipe = tiny_sd
    state = to_ldm_checkpoint(pipe)
    ckpt = tmp_path / "tiny-sd-v1.ckpt"
    torch.save({"state_dict": state, "global_step": 470000,
                "callbacks": {"ModelCheckpoint": LightningCallbackStandIn()}}, ckpt)
    from safetensors.torch import save_file
    safe = tmp_path / "tiny-sd-v1.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, safe)
    for path in (ckpt, safe):
        parts = components_from_single_file(path, config_dir=folder)
        for name in ("unet", "vae", "text_encoder"):
            assert_same_weights(parts[name], getattr(pipe, name))
        assert parts["tokenizer"]("a dog").input_ids == pipe.tokenizer("a dog").input_ids


def test_loading_errors_are_clear(tiny_sd, tmp_path):
    folder, pipe = tiny_sd
    with pytest.raises(UserError, match="not found"):
        load_pipeline(tmp_path / "sd-v1-4.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_pipeline(tmp_path / "garbage.ckpt")
    no_vae = {k: v for k, v in to_ldm_checkpoint(pipe).items() if not k.startswith("first_stage_model.")}
    torch.save(no_vae, tmp_path / "no_vae.ckpt")
    with pytest.raises(UserError, match=r"no weights for vae \('first_stage_model"):
        components_from_single_file(tmp_path / "no_vae.ckpt", config_dir=folder)
    with pytest.raises(UserError, match="model_index.json"):
        load_pipeline(tmp_path)


# ------------------------------------------------------------------------------------------ data
def test_prompt_file_real_and_malformed(shared, tmp_path):
    concepts = read_prompt_file(shared / "hw2_data/textual_inversion/input.json")
    assert [(c.id, c.token, len(c.prompts)) for c in concepts] == [("0", "<new1>", 2), ("1", "<new2>", 2)]
    assert concepts[0].baselines == ((79, 34), (74, 35))
    bad = tmp_path / "bad.json"
    for text, message in [('{"0": {"token_name": "<new1>", "prompt": ["a"],}}', "not valid JSON"),
                          ('{"0": {"token_name": "<new1>"}}', "missing prompt"),
                          ('{"0": {"token_name": "new1", "prompt": ["a"]}}', "token_name must look like"),
                          ('{"0": {"token_name": "<new1>", "prompt": ["a", "b"], "baseline": [[1, 2]]}}',
                           "one \\[image score, text score\\] pair per prompt")]:
        bad.write_text(text)
        with pytest.raises(UserError, match=message):
            read_prompt_file(bad)


def test_concept_images_are_reproducible(shared):
    data = ConceptImages(shared / "hw2_data/textual_inversion/0", resolution=32)
    x1, c1 = data.batch(3, torch.Generator().manual_seed(1))
    x2, c2 = data.batch(3, torch.Generator().manual_seed(1))
    assert len(data) == 5 and x1.shape == (3, 3, 32, 32) and x1.min() >= -1 and x1.max() <= 1
    assert torch.equal(x1, x2) and c1 == c2 and all("{}" in c for c in c1)


# ------------------------------------------------------------------------------------------ train
def train_args(tiny_sd, shared, tmp_path, *extra):
    return ["train", str(shared / "hw2_data/textual_inversion/0"), str(tiny_sd[0]), "--token", "<new1>",
            "--initializer", "dog", "--batch-size", "2", "--lr", "0.05", "--embeds-dir", str(tmp_path / "embeds"),
            "--run-dir", str(tmp_path / "runs"), "--quiet", *RES, *extra]


def test_train_changes_only_the_placeholder_rows(tiny_sd, shared, tmp_path):
    _, pipe = tiny_sd
    result = p3.main(train_args(tiny_sd, shared, tmp_path, "--steps", "3"))
    before = pipe.text_encoder.get_input_embeddings().weight
    after = result.text_encoder.get_input_embeddings().weight.detach()
    assert after.shape == (49409, 32) and result.ids == [49408]
    assert torch.equal(after[:49408], before)  # every original row, including the caption's words
    dog = pipe.tokenizer.convert_tokens_to_ids("dog</w>")
    assert not torch.allclose(after[49408], before[dog])  # it learned something, starting from "dog"
    token, vectors = load_learned_embeds(result.embeds)
    assert result.embeds.name == "new1.safetensors" and token == "<new1>"
    assert torch.equal(vectors, after[49408:])
    # the file is what diffusers' loader reads
    from safetensors.torch import load_file
    assert set(load_file(result.embeds)) == {"<new1>"}


def test_train_resumes_exactly_with_two_vectors(tiny_sd, shared, tmp_path):
    straight = p3.main(train_args(tiny_sd, shared, tmp_path / "a", "--steps", "4", "--num-vectors", "2"))
    p3.main(train_args(tiny_sd, shared, tmp_path / "b", "--steps", "2", "--num-vectors", "2"))
    resumed = p3.main(train_args(tiny_sd, shared, tmp_path / "b", "--steps", "4", "--num-vectors", "2", "--resume"))
    a, b = load_learned_embeds(straight.embeds)[1], load_learned_embeds(resumed.embeds)[1]
    assert a.shape == (2, 32) and torch.allclose(a, b, atol=1e-6)
    again = p3.main(train_args(tiny_sd, shared, tmp_path / "b", "--steps", "4", "--num-vectors", "2", "--resume"))
    assert again.text_encoder is None and torch.equal(load_learned_embeds(again.embeds)[1], b)  # nothing to do


def test_train_refuses_bad_tokens_and_an_earlier_run(tiny_sd, shared, tmp_path, cli_error):
    (tmp_path / "embeds").mkdir()
    (tmp_path / "embeds" / "new1.safetensors").write_bytes(b"another token's file")
    for token in ("new1", "<new 1>", "<new1", "<../new1>", "<a/b>"):
        with cli_error("--token: .* must look like '<new1>'"):
            p3.main(train_args(tiny_sd, shared, tmp_path, "--steps", "1")[:4] + [token]
                    + train_args(tiny_sd, shared, tmp_path, "--steps", "1")[5:])
    assert (tmp_path / "embeds" / "new1.safetensors").read_bytes() == b"another token's file"
    for flag, value in (("--steps", "0"), ("--batch-size", "0"), ("--save-every", "0"), ("--lr", "inf"),
                        ("--resolution", "30")):
        with cli_error(f"argument {flag}"):
            p3.main(train_args(tiny_sd, shared, tmp_path, flag, value))
    (tmp_path / "runs" / "new1").mkdir(parents=True)
    (tmp_path / "runs" / "new1" / "last.pt").write_bytes(b"an earlier run")
    with cli_error("already holds a run of this token .*add --resume"):
        p3.main(train_args(tiny_sd, shared, tmp_path, "--steps", "1"))
    assert (tmp_path / "runs" / "new1" / "last.pt").read_bytes() == b"an earlier run"


def test_train_skip_missing_model(shared, tmp_path, capsys):
    args = ["train", str(shared / "hw2_data/textual_inversion/0"), str(tmp_path / "sd-v1-4.ckpt"),
            "--token", "<new1>", "--initializer", "dog", "--skip-missing"]
    assert p3.main(args) is None
    assert "missing model" in capsys.readouterr().out


# --------------------------------------------------------------------------------------- generate
@pytest.fixture(scope="module")
def embeds_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embeds")
    g = torch.Generator().manual_seed(0)
    for token, n in (("<new1>", 1), ("<new2>", 1), ("<new3>", 2)):
        save_learned_embeds(p3.embeds_path(folder, token), token, torch.randn(n, 32, generator=g))
    return folder


PROMPTS = {"0": {"token_name": "<new1>", "src_image": "dog",
                 "prompt": ["A <new1> on a bench.", "a <new1> next to a <new3>"],
                 "prompt_4_clip_eval": ["A dog on a bench.", "a dog next to a cat"],
                 "baseline": [[-1000, -1000], [1000, 1000]]},  # the first passes, the second fails
           "1": {"token_name": "<new2>", "src_image": "style", "prompt": ["Paris in the style of <new2>."],
                 "prompt_4_clip_eval": ["Paris in the style of David Revoy."], "baseline": [[-1000, -1000]]}}


@pytest.fixture(scope="module")
def generated(tiny_sd, embeds_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    (root / "input.json").write_text(json.dumps(PROMPTS))
    out = p3.main(["generate", str(root / "input.json"), str(root / "out"), str(tiny_sd[0]), "--embeds-dir",
                   str(embeds_dir), "--steps", "2", "--batch-size", "25", "--quiet", *RES])
    return root / "input.json", out


def test_generate_writes_the_course_layout(generated):
    _, out = generated
    for cid, n_prompts in (("0", 2), ("1", 1)):
        assert sorted(p.name for p in (out / cid).iterdir()) == [str(i) for i in range(n_prompts)]
        for i in range(n_prompts):
            files = sorted((out / cid / str(i)).iterdir(), key=lambda p: int(p.stem))
            assert [p.name for p in files] == [f"{k}.png" for k in range(25)]
            assert Image.open(files[0]).size == (32, 32)
    a = np.asarray(Image.open(out / "0/0/0.png"), dtype=int)
    b = np.asarray(Image.open(out / "0/1/0.png"), dtype=int)
    assert np.abs(a - b).max() > 0  # the prompt (and the two-token prompt's embeddings) reach the images


def test_sampling_does_not_depend_on_the_batch_size(tiny_sd, embeds_dir):
    pipe = p3.learned_pipeline(tiny_sd[0], embeds_dir, ["<new1>", "<new3>"])
    prompt = "a <new1> next to a <new3>"
    together = [np.asarray(im, dtype=int) for im in p3.sample(pipe, prompt, 3, Sampling(batch_size=3, steps=2))]
    alone = [np.asarray(im, dtype=int) for im in p3.sample(pipe, prompt, 3, Sampling(batch_size=1, steps=2))]
    assert together[0].shape == (32, 32, 3)  # the tiny model's own size (16 latent pixels x 2)
    assert all(np.abs(x - y).max() <= 1 for x, y in zip(together, alone))
    assert np.abs(together[0] - together[1]).max() > 0


def test_generate_without_embeddings_says_so(tiny_sd, tmp_path, capsys, cli_error):
    (tmp_path / "input.json").write_text(json.dumps(PROMPTS))
    argv = ["generate", str(tmp_path / "input.json"), str(tmp_path / "out"), str(tiny_sd[0]),
            "--embeds-dir", str(tmp_path / "none")]
    with cli_error(r"learned embeddings of <new1>: .*new1\.safetensors"):
        p3.main(argv)
    assert p3.main(argv + ["--skip-missing"]) is None
    assert "skipped" in capsys.readouterr().out and not (tmp_path / "out").exists()


def test_generate_rerun_replaces_the_folder_whole(tiny_sd, embeds_dir, tmp_path, monkeypatch, cli_error):
    one = {"0": {"token_name": "<new1>", "prompt": ["A <new1> on a bench."]}}
    (tmp_path / "input.json").write_text(json.dumps(one))
    out = tmp_path / "out"
    argv = ["generate", str(tmp_path / "input.json"), str(out), str(tiny_sd[0]), "--embeds-dir", str(embeds_dir),
            "--steps", "1", "--batch-size", "25", "--quiet", *RES]
    (out / "0" / "3").mkdir(parents=True)  # an earlier run's prompt that this input.json no longer has
    Image.new("RGB", (32, 32)).save(out / "0" / "3" / "0.png")
    p3.main(argv)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_dir()) == ["0", "0/0"]
    before = {p: p.read_bytes() for p in out.rglob("*.png")}
    assert len(before) == 25

    calls = []

    def fails_midway(*args, **kwargs):  # an interrupted rerun: the earlier images must all stay as they were
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(sd_cli, "sample", fails_midway)  # the loop that writes the graded layout
    with pytest.raises(KeyboardInterrupt):
        p3.main(argv + ["--seed", "7"])
    assert calls and {p: p.read_bytes() for p in out.rglob("*.png")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.json", "out"]  # no staging folder left behind
    monkeypatch.undo()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with cli_error("OUT_DIR .*mine: holds notes.txt, which this program does not write; OUT_DIR is replaced whole"):
        p3.main(argv[:2] + [str(tmp_path / "mine")] + argv[3:])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_hw2_3_sh_writes_the_graded_layout(tiny_sd, shared, tmp_path):
    """The grading wrapper itself with its defaults, on a copy of the project whose checkpoints/ holds tiny
    learned embeddings, one prompt, and the tiny model with 8 x 8 latents (its own size: 16 px)."""
    import shutil
    import subprocess
    import sys

    from models.stable_diffusion import save_learned_embeds as save
    root, project = Path(p3.__file__).resolve().parent, tmp_path / "project"
    for folder in ("models", "utils"):
        shutil.copytree(root / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("hw2_3.sh", "p3_textual_inversion.py"):
        shutil.copy(root / name, project / name)
    model = shutil.copytree(tiny_sd[0], tmp_path / "model")
    unet_config = json.loads((model / "unet" / "config.json").read_text())
    (model / "unet" / "config.json").write_text(json.dumps({**unet_config, "sample_size": 8}))
    course = json.loads((shared / "hw2_data/textual_inversion/input.json").read_text())
    one = {"0": {**course["0"], "prompt": course["0"]["prompt"][:1]}}
    one["0"].pop("prompt_4_clip_eval", None), one["0"].pop("baseline", None)
    (tmp_path / "input.json").write_text(json.dumps(one))
    token = one["0"]["token_name"]
    embeds = project / "checkpoints" / "p3_textual_inversion"
    save(p3.embeds_path(embeds, token), token, torch.randn(1, 32, generator=torch.Generator().manual_seed(0)))
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    usage = subprocess.run(["bash", str(project / "hw2_3.sh"), "a"], env=env, capture_output=True, text=True,
                           check=False)
    assert usage.returncode == 2 and "usage" in usage.stderr
    result = subprocess.run(["bash", str(project / "hw2_3.sh"), str(tmp_path / "input.json"), str(tmp_path / "out"),
                             str(model)], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*")) == \
        ["0", "0/0"] + sorted(f"0/0/{k}.png" for k in range(25))
    # the graded defaults (30 DPM-Solver++ steps, seed 0, guidance 7.5, the model's own size): image 0 as here
    pipe = p3.learned_pipeline(model, embeds, [token])
    first = np.asarray(p3.sample(pipe, one["0"]["prompt"][0], 1, Sampling())[0], dtype=int)
    written = np.asarray(Image.open(tmp_path / "out" / "0" / "0" / "0.png"), dtype=int)
    assert written.shape == (16, 16, 3) and np.abs(written - first).max() <= 1


def find_tile(figure: np.ndarray, tile: np.ndarray) -> tuple[int, int] | None:
    """(y, x) of the one place where `tile` appears pixel for pixel in `figure`, or None."""
    h, w, _ = tile.shape
    found = [(y, x) for y, x in np.argwhere((figure[:-h + 1, :-w + 1] == tile[0, 0]).all(-1))
             if np.array_equal(figure[y:y + h, x:x + w], tile)]
    return tuple(int(v) for v in found[0]) if len(found) == 1 else None


def test_figure_has_both_orders(tiny_sd, embeds_dir, tmp_path):
    out = p3.main(["figure", str(tiny_sd[0]), str(tmp_path / "fig.png"), "--tokens", "<new1>", "<new3>",
                   "--embeds-dir", str(embeds_dir), "--steps", "2", "--num", "2", "--tile", "32", "--quiet", *RES])
    figure = np.asarray(Image.open(out).convert("RGB"))
    pipe = p3.learned_pipeline(tiny_sd[0], embeds_dir, ["<new1>", "<new3>"])
    rows = [[np.asarray(im) for im in p3.sample(pipe, prompt, 2, Sampling(steps=2, resolution=32))]
            for prompt in ("a <new1> next to a <new3>", "a <new3> next to a <new1>")]
    assert not np.array_equal(rows[0][0], rows[1][0])  # the order of the tokens changes the image
    (a, b), (c, d) = [[find_tile(figure, tile) for tile in row] for row in rows]
    assert None not in (a, b, c, d), "a generated image is missing from the figure"
    assert a[0] == b[0] < c[0] == d[0]                 # one row per order, <new1> first on top
    assert a[1] == c[1] < b[1] == d[1]                 # images in seed order, left to right


def test_figure_template_and_tokens_are_checked(tiny_sd, embeds_dir, tmp_path, cli_error):
    base = ["figure", str(tiny_sd[0]), str(tmp_path / "fig.png"), "--embeds-dir", str(embeds_dir)]
    for template in ("a {} and a dog", "{} {} {}", "a {0} next to a {1}", "a {} next to a {} {"):
        with cli_error("--template: .* exactly two"):
            p3.main([*base, "--tokens", "<new1>", "<new3>", "--template", template])
    with cli_error("--tokens: 'new1' must look like '<new1>'"):
        p3.main([*base, "--tokens", "new1", "<new3>"])
    assert not (tmp_path / "fig.png").exists()


# --------------------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    torch.manual_seed(0)
    config = CLIPConfig(text_config=TINY["text_encoder"], projection_dim=16,
                        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                                           num_hidden_layers=2, num_attention_heads=4))
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=clip_tokenizer()).save_pretrained(folder)
    return folder


def course_scores(model, processor, images, references, text):
    """The course's computation, image by image: its per-reference loop and logits_per_image."""
    image_scores, text_scores = [], []
    with torch.no_grad():
        ref_feats = [model.get_image_features(**processor(images=[r], return_tensors="pt")).pooler_output
                     for r in references]
        for im in images:
            feat = model.get_image_features(**processor(images=[im], return_tensors="pt")).pooler_output
            image_scores.append(sum(100 * torch.nn.functional.cosine_similarity(feat, r).item()
                                    for r in ref_feats) / len(ref_feats))
            out = model(**processor(text=[text], images=[im], return_tensors="pt", padding=True))
            text_scores.append(out.logits_per_image.item())
    best = sorted(range(len(images)), key=lambda i: image_scores[i] + 2.5 * text_scores[i], reverse=True)[:5]
    return np.mean([image_scores[i] for i in best]), np.mean([text_scores[i] for i in best])


def test_evaluate_equals_the_course_computation(generated, tiny_clip, shared, tmp_path):
    input_json, out = generated
    concept_root = shared / "hw2_data/textual_inversion"
    results = p3.main(["evaluate", str(input_json), str(out), "--concept-root", str(concept_root),
                       "--clip", str(tiny_clip), "--device", "cpu", "--json", str(tmp_path / "scores.json")])
    assert [(r["concept"], r["prompt"], r["pass"]) for r in results] == [("0", 0, True), ("0", 1, False),
                                                                          ("1", 0, True)]
    model, processor = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPProcessor.from_pretrained(tiny_clip)
    for r, (cid, i, text) in zip(results, [("0", 0, "A dog on a bench."), ("0", 1, "a dog next to a cat"),
                                           ("1", 0, "Paris in the style of David Revoy.")]):
        images = [Image.open(out / cid / str(i) / f"{k}.png").convert("RGB") for k in range(25)]
        references = [Image.open(p).convert("RGB") for p in sorted((concept_root / cid).iterdir())]
        img, txt = course_scores(model, processor, images, references, text)
        assert r["image_score"] == pytest.approx(img, abs=1e-3) and r["text_score"] == pytest.approx(txt, abs=1e-3)
    assert json.loads((tmp_path / "scores.json").read_text()) == results


def test_evaluate_insists_on_25_images(generated, tiny_clip, shared, tmp_path, cli_error):
    input_json, out = generated
    short = tmp_path / "out"
    for cid, i in (("0", 0), ("0", 1), ("1", 0)):
        (short / cid / str(i)).mkdir(parents=True)
        for k in range(24 if (cid, i) == ("0", 1) else 25):
            (short / cid / str(i) / f"{k}.png").write_bytes((out / cid / str(i) / f"{k}.png").read_bytes())
    with cli_error("found 24 images; the course's evaluator needs exactly 25"):
        p3.main(["evaluate", str(input_json), str(short), "--concept-root", str(shared / "hw2_data/textual_inversion"),
                 "--clip", str(tiny_clip)])


# ------------------------------------------------------------------------------ inputs that must not pass
@pytest.mark.parametrize("cid", ["../../escaped", "{tmp}/escaped", "a/b", "..", "."])
def test_a_concept_id_names_one_folder_of_out_dir(tiny_sd, embeds_dir, tmp_path, cid, cli_error):
    cid = cid.format(tmp=tmp_path)
    (tmp_path / "input.json").write_text(json.dumps({cid: {"token_name": "<new1>", "prompt": ["A <new1>."]}}))
    with cli_error(r"input.json: concept id .*: not a plain file or folder name"):
        p3.main(["generate", str(tmp_path / "input.json"), str(tmp_path / "a" / "b" / "out"), str(tiny_sd[0]),
                 "--embeds-dir", str(embeds_dir), "--steps", "1", "--quiet", *RES])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.json"]


def test_train_keeps_another_runs_embeddings_unless_told(tiny_sd, shared, tmp_path, cli_error):
    first = p3.main(train_args(tiny_sd, shared, tmp_path, "--steps", "1"))
    learned = first.embeds.read_bytes()
    again = train_args(tiny_sd, shared, tmp_path, "--steps", "1")
    again[again.index("--run-dir") + 1] = str(tmp_path / "other_runs")  # a new run, the same --embeds-dir
    with cli_error(r"--embeds-dir .*embeds: already holds <new1>'s learned embeddings \(new1.safetensors\); "
                   "add --overwrite"):
        p3.main(again)
    assert first.embeds.read_bytes() == learned and not (tmp_path / "other_runs").exists()
    p3.main(again + ["--overwrite", "--seed", "1"])
    assert first.embeds.read_bytes() != learned


def test_num_vectors_that_do_not_fit_the_prompt_are_refused(tiny_sd, shared, tmp_path, cli_error):
    """77 tokens hold the start and end tokens, the caption's words and the learned vectors: more are cut off
    (the last vectors would never train, or a second concept's token would vanish from the prompt)."""
    with cli_error(r"--num-vectors 70: '.*<new1>.*' takes \d+ tokens with its learned vectors, more than the text "
                   "encoder's 77"):
        p3.main(train_args(tiny_sd, shared, tmp_path, "--steps", "1", "--num-vectors", "70"))
    assert not (tmp_path / "embeds").exists() and not (tmp_path / "runs" / "new1" / "train_log.jsonl").exists()
    embeds = tmp_path / "embeds"
    save_learned_embeds(p3.embeds_path(embeds, "<new1>"), "<new1>", torch.zeros(1, 32))
    save_learned_embeds(p3.embeds_path(embeds, "<new3>"), "<new3>", torch.zeros(72, 32))
    (tmp_path / "input.json").write_text(json.dumps({"0": {"token_name": "<new1>",
                                                           "prompt": ["a <new3> next to a <new1>"]}}))
    with cli_error(r"input.json: 'a <new3> next to a <new1>' takes 79 tokens"):  # start, a, 72, next, to, a, 1, end
        p3.main(["generate", str(tmp_path / "input.json"), str(tmp_path / "out"), str(tiny_sd[0]),
                 "--embeds-dir", str(embeds), "--steps", "1", "--quiet", *RES])
    assert not (tmp_path / "out").exists()


def test_a_nan_embedding_is_named_and_nothing_is_written(tiny_sd, tmp_path, cli_error):
    vectors = torch.zeros(2, 32)
    vectors[1, 5] = float("nan")
    save_learned_embeds(p3.embeds_path(tmp_path / "embeds", "<new1>"), "<new1>", vectors)
    (tmp_path / "input.json").write_text(json.dumps({"0": {"token_name": "<new1>", "prompt": ["A <new1>."]}}))
    with cli_error(r"new1.safetensors: NaN or inf in tensor <new1>\n$"):
        p3.main(["generate", str(tmp_path / "input.json"), str(tmp_path / "out"), str(tiny_sd[0]),
                 "--embeds-dir", str(tmp_path / "embeds"), "--steps", "1", "--quiet", *RES])
    assert not (tmp_path / "out").exists()


def test_sampling_that_gives_nan_is_an_error(tiny_sd, embeds_dir):
    pipe = p3.learned_pipeline(tiny_sd[0], embeds_dir, ["<new1>"])
    with torch.no_grad():
        pipe.vae.decoder.conv_out.bias[0] = float("nan")  # as an fp16 overflow or a broken VAE would
    with pytest.raises(UserError, match=r"sampling 'A <new1>.' \(seeds 0..1\) gave NaN or inf"):
        p3.sample(pipe, "A <new1>.", 2, Sampling(batch_size=2, steps=1))
