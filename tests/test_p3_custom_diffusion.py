"""P3 Custom Diffusion on CPU: a tiny randomly initialised SD v1 (the textual-inversion tests' configs), the
real dog and cat photos, 32 px, a few steps."""
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: nothing may download

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import CustomDiffusionAttnProcessor
from PIL import Image
from safetensors.torch import load_file

import p3_custom_diffusion as cd
from models.custom_diffusion import RARE_WORDS, WEIGHTS_NAME, kv_state, merge_kv, save_weights
from models.sd_loading import load_pipeline, random_pipeline
from models.stable_diffusion import SAMPLERS, embeds_path, save_learned_embeds
from standins import tiny_transformers_clip
from utils.clip_score import ClipScorer
from utils.outputs import CD_COMPARISON_JSON, CD_COMPARISON_PNG

TINY = json.loads((Path(__file__).parent / "fixtures" / "ti_tiny_sd.json").read_text())
TOKENS, CLASSES = ["<new1>", "<new3>"], ["dog", "cat"]
RES = ["--resolution", "32"]
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models are too small to gain from threads; on a shared 2-core machine two threads that
    wait for each other made the module 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------- the merge
def objective(w, w0, c_reg):
    return torch.linalg.matrix_norm((w - w0) @ c_reg.T).item()


def test_merge_meets_the_constraint_and_moves_the_regularization_outputs_least():
    g = torch.Generator().manual_seed(0)
    d, out, n_reg, n_tgt = 24, 16, 60, 6
    w0, c_reg = torch.randn(out, d, generator=g, dtype=torch.float64), torch.randn(n_reg, d, generator=g, dtype=torch.float64)
    c_tgt, v = torch.randn(n_tgt, d, generator=g, dtype=torch.float64), torch.randn(n_tgt, out, generator=g, dtype=torch.float64)
    w = merge_kv(w0, c_reg, c_tgt, v)
    assert torch.allclose(w @ c_tgt.T, v.T, atol=1e-9)  # W C_tgt^T = V^T
    # every other solution is w + Z N^T with N spanning the null space of C_tgt: each moves the outputs more
    null = torch.linalg.svd(c_tgt).Vh[n_tgt:].T  # (d, d - n_tgt), C_tgt @ null = 0
    best = objective(w, w0, c_reg)
    for _ in range(20):
        other = w + 1e-3 * torch.randn(out, d - n_tgt, generator=g, dtype=torch.float64) @ null.T
        assert torch.allclose(other @ c_tgt.T, v.T, atol=1e-9) and objective(other, w0, c_reg) > best
    # and it is the least-squares optimum over that family, solved independently
    w_p = torch.linalg.lstsq(c_tgt, v).solution.T  # one solution of the constraint
    z = torch.linalg.lstsq((c_reg @ null), -(c_reg @ (w_p - w0).T)).solution.T
    assert torch.allclose(w_p + z @ null.T, w, atol=1e-8)


def test_merge_with_ridge_is_eq_4_with_a_penalty_on_the_change():
    """--ridge r solves argmin ||(W - W0) C_reg^T||^2 + lam ||W - W0||^2 under the constraint, lam = r x the mean
    eigenvalue of C_reg^T C_reg: eq. 4 with C_reg stacked on sqrt(lam) I, solved exactly (ridge 0, whose
    solution the test above checks by least squares)."""
    g = torch.Generator().manual_seed(2)
    d, out = 12, 5
    w0, c_reg = torch.randn(out, d, generator=g, dtype=torch.float64), torch.randn(30, d, generator=g, dtype=torch.float64)
    c_tgt, v = torch.randn(3, d, generator=g, dtype=torch.float64), torch.randn(3, out, generator=g, dtype=torch.float64)
    ridge = 0.3
    lam = ridge * (c_reg.T @ c_reg).trace() / d
    stacked = torch.cat([c_reg, lam.sqrt() * torch.eye(d, dtype=torch.float64)])
    w = merge_kv(w0, c_reg, c_tgt, v, ridge=ridge)
    assert torch.allclose(w, merge_kv(w0, stacked, c_tgt, v), atol=1e-10)
    assert not torch.allclose(w, merge_kv(w0, c_reg, c_tgt, v), atol=1e-3)  # a different problem from eq. 4


def test_merge_with_ridge_keeps_the_constraint_when_captions_are_few():
    g = torch.Generator().manual_seed(1)
    w0, c_reg = torch.randn(8, 32, generator=g), torch.randn(10, 32, generator=g)  # C_reg spans 10 of 32 directions
    c_tgt, v = torch.randn(5, 32, generator=g), torch.randn(5, 8, generator=g)
    w = merge_kv(w0, c_reg, c_tgt, v, ridge=1e-3)
    assert w.dtype == torch.float32 and torch.allclose(w @ c_tgt.T, v.T, atol=1e-4)


# ------------------------------------------------------------------------------------------ train
def test_rescale_masks_exactly_the_image():
    from models.custom_diffusion import LARGE_PREFIXES, SMALL_PREFIXES, rescale
    g = torch.Generator().manual_seed(0)
    image = torch.full((3, 64, 64), 0.5)
    seen = set()
    for _ in range(40):
        x, mask, prefix = rescale(image, 64, 8, g)
        inside = mask.repeat_interleave(8, 1).repeat_interleave(8, 2).bool().expand_as(x)  # (3, 64, 64)
        assert x.shape == (3, 64, 64) and mask.shape == (1, 8, 8) and inside.any()
        assert torch.allclose(x[inside], torch.tensor(0.5), atol=1e-5)  # the loss sees only the image
        covered = (x != 0).float().mean().item()
        if prefix in LARGE_PREFIXES:
            assert covered == 1 and mask.all()
        elif prefix in SMALL_PREFIXES:
            assert covered < 0.6 ** 2
        seen.add(prefix)
    assert seen >= {*SMALL_PREFIXES, *LARGE_PREFIXES, ""}


def test_no_augment_keeps_the_concept_images_as_they_are():
    """--no-augment: neither rescaled nor flipped (an asymmetric image would show a flip)."""
    from models.custom_diffusion import training_batch

    class Images:  # a ConceptImages that always draws its one image
        def __init__(self, x):
            self.x = x

        def batch(self, n, generator):
            return self.x[None].expand(n, -1, -1, -1), None

    ramp = torch.linspace(-1, 1, 16).expand(3, 16, 16).contiguous()  # dark left, bright right
    concepts, regs = [Images(ramp), Images(-ramp)], [Images(torch.zeros(3, 16, 16))] * 2
    flips = 0
    for step in range(20):
        g = torch.Generator().manual_seed(step)
        pixels, masks, captions = training_batch(concepts, regs, TOKENS, CLASSES, step, 2, 16, 8, g, augment=False)
        assert torch.equal(pixels[0], ramp) and torch.equal(pixels[1], -ramp) and masks.all()
        assert captions[:2] == ["photo of a <new1> dog", "photo of a <new3> cat"]
        pixels, _, _ = training_batch(concepts, regs, TOKENS, CLASSES, step, 2, 16, 8, g, augment=True)
        flips += int(pixels[0][0, 8, 0] > 0.5)  # with augmentation the bright side is sometimes on the left
    assert flips > 0


def train_argv(tiny_sd, shared, out, reg, *extra, concepts=("0", "2")):
    root = shared / "hw2_data/textual_inversion"
    return ["train", *[str(root / c) for c in concepts], str(tiny_sd[0]), "--tokens", *TOKENS[:len(concepts)],
            "--class-words", *CLASSES[:len(concepts)], "--out-dir", str(out), "--reg-dir", str(reg),
            "--num-class-images", "2", "--reg-steps", "2", "--log-every", "1", "--quiet", *RES, *extra]


@pytest.fixture(scope="module")
def trained(tiny_sd, shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("cd")
    result = cd.main(train_argv(tiny_sd, shared, root / "joint", root / "reg", "--steps", "4", "--lr", "1e-3"))
    return root, result


def test_train_changes_only_the_modifier_rows_and_cross_attention_kv(tiny_sd, trained):
    _, pipe = tiny_sd
    _, result = trained
    before = pipe.text_encoder.get_input_embeddings().weight
    after = result.text_encoder.get_input_embeddings().weight.detach()
    assert after.shape == (49410, 32) and result.ids == [49408, 49409]
    assert torch.equal(after[:49408], before)  # no other row, the caption's words included
    # every modifier token learned (diffusers#7294: the last one's gradient was masked, so weight decay
    # alone moved it, by at most steps x lr x decay x |row| = 1.6e-4 |row| here); each moved far beyond that
    for i, word in zip(result.ids, RARE_WORDS):
        start = before[pipe.tokenizer.convert_tokens_to_ids(word + "</w>")]
        decay_alone = 4 * 4e-3 * 1e-2 * start.norm()
        assert (after[i] - start).norm() > 50 * decay_alone, (i, word)
    old, new = dict(pipe.unet.named_parameters()), dict(result.unet.named_parameters())
    kv = {k for k in new if ".attn2.to_k." in k or ".attn2.to_v." in k}
    assert len(kv) == 12 and sorted(old) == sorted(new)
    assert all(torch.equal(old[k], new[k]) for k in old if k not in kv)
    assert all(not torch.equal(old[k], new[k]) for k in kv)


def test_train_writes_a_log_and_diffusers_files(trained):
    root, result = trained
    log = [json.loads(line) for line in (result.out_dir / "train_log.jsonl").read_text().splitlines()]
    # diffusers' train_custom_diffusion.py --scale_lr: lr x batch (2) x processes (1) x 2 with prior preservation
    assert [e["step"] for e in log] == [1, 2, 3, 4] and all(e["lr"] == pytest.approx(4e-3) for e in log)
    assert all(np.isfinite(e["loss"]) for e in log)
    state = load_file(result.out_dir / WEIGHTS_NAME)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight" in state
    assert len(state) == 12 and all(torch.equal(state[k], v) for k, v in kv_state(result.unet).items())
    assert {p.name for p in result.out_dir.iterdir()} >= {"new1.safetensors", "new3.safetensors", "config.json"}
    assert len(list((root / "reg" / "dog").glob("*.png"))) == 2  # the class images are cached


def test_train_resumes_exactly(tiny_sd, shared, trained, tmp_path):
    root, straight = trained
    argv = train_argv(tiny_sd, shared, tmp_path / "b", root / "reg", "--lr", "1e-3", "--save-every", "2")
    cd.main(argv + ["--steps", "2"])
    resumed = cd.main(argv + ["--steps", "4", "--resume"])
    a, b = load_file(straight.out_dir / WEIGHTS_NAME), load_file(resumed.out_dir / WEIGHTS_NAME)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    for token in TOKENS:
        assert torch.allclose(load_file(embeds_path(straight.out_dir, token))[token],
                              load_file(embeds_path(resumed.out_dir, token))[token], atol=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------- generate
PROMPTS = {"0": {"token_name": "<new1>", "prompt": ["a <new1> next to a <new3>"],
                 "prompt_4_clip_eval": ["a dog next to a cat"], "baseline": [[70, 30]]}}
SAMPLING = ["--steps", "2", "--batch-size", "25", "--quiet", *RES]


@pytest.fixture(scope="module")
def generated(tiny_sd, trained):
    root, result = trained
    (root / "input.json").write_text(json.dumps(PROMPTS))
    out = root / "out"
    (out / "stale").mkdir(parents=True)  # an earlier run's leftovers: replaced whole
    cd.main(["generate", str(root / "input.json"), str(out), str(tiny_sd[0]), "--weights", str(result.out_dir),
             *SAMPLING])
    return out


def test_generate_writes_the_course_layout(generated):
    assert sorted(p.name for p in generated.iterdir()) == ["0"]
    files = sorted((generated / "0" / "0").iterdir(), key=lambda p: int(p.stem))
    assert [p.name for p in files] == [f"{k}.png" for k in range(25)]
    assert Image.open(files[0]).size == (32, 32)


def test_diffusers_loaders_give_the_same_images(tiny_sd, trained, generated):
    """The saved files through diffusers' own loaders: load_textual_inversion per token, and
    unet.load_attn_procs (diffusers 0.42.1 installs the processors only when given `_pipeline`, and
    counts every attention layer: the self-attention ones get the empty entries its .bin files hold)."""
    _, result = trained
    pipe = load_pipeline(tiny_sd[0])
    for token in TOKENS:
        pipe.load_textual_inversion(str(embeds_path(result.out_dir, token)), local_files_only=True)
    args = cd.parse_args(["generate", "x.json", "out", str(tiny_sd[0]), *SAMPLING])
    pipe.scheduler = SAMPLERS[args.sampler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompt = PROMPTS["0"]["prompt"][0]
    ours = [np.asarray(Image.open(generated / "0" / "0" / f"{k}.png"), dtype=int) for k in range(2)]
    plain = np.asarray(cd.sample(pipe, prompt, 1, cd.sampling_of(args))[0], dtype=int)
    assert np.abs(plain - ours[0]).max() > 1  # the tokens alone do not give generate's images
    state = load_file(result.out_dir / WEIGHTS_NAME)
    state.update({name: {} for name in pipe.unet.attn_processors if name.endswith("attn1.processor")})
    pipe.unet.load_attn_procs(state, _pipeline=pipe)
    procs = pipe.unet.attn_processors
    assert sum(isinstance(p, CustomDiffusionAttnProcessor) and p.train_kv for p in procs.values()) == 6
    theirs = [np.asarray(im, dtype=int) for im in cd.sample(pipe, prompt, 2, cd.sampling_of(args))]
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(ours, theirs))


# ------------------------------------------------------------------------------------ merge, figure
def fake_concept(folder: Path, base, token: str, cls: str, seed: int) -> Path:
    """A single-concept weights folder: the base k/v plus noise, a random embedding for the token."""
    g = torch.Generator().manual_seed(seed)
    unet = random_pipeline(TINY).unet
    unet.load_state_dict(base.unet.state_dict())
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".attn2.to_k." in name or ".attn2.to_v." in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    folder.mkdir(parents=True)
    save_weights(folder, unet, base.text_encoder, [], [], {"tokens": [token], "class_words": [cls]})
    save_learned_embeds(embeds_path(folder, token), token, torch.randn(1, 32, generator=g))
    return folder


@pytest.fixture(scope="module")
def merged(tiny_sd, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    a = fake_concept(root / "a", tiny_sd[1], "<new1>", "dog", 1)
    b = fake_concept(root / "b", tiny_sd[1], "<new3>", "cat", 2)
    out = cd.main(["merge", str(a), str(b), str(tiny_sd[0]), "--out-dir", str(root / "merged"), "--quiet"])
    return root, out


def test_merged_model_reproduces_each_concepts_outputs_on_its_captions(tiny_sd, merged):
    from models.custom_diffusion import caption_features
    root, out = merged
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "new1.safetensors", "new3.safetensors", WEIGHTS_NAME]
    pipe = load_pipeline(tiny_sd[0])
    for token in TOKENS:
        pipe.load_textual_inversion(str(embeds_path(out, token)), local_files_only=True)
    w = load_file(out / WEIGHTS_NAME)
    base = kv_state(tiny_sd[1].unet)
    for folder, token, cls in ((root / "a", "<new1>", "dog"), (root / "b", "<new3>", "cat")):
        c = caption_features(pipe.tokenizer, pipe.text_encoder, cd.target_captions(token, cls), start_token=token)
        own = load_file(folder / WEIGHTS_NAME)
        for key in w:
            target = c @ own[key].T
            assert torch.allclose(c @ w[key].T, target, atol=1e-3 * target.abs().max())
            assert not torch.allclose(c @ base[key].T, target, atol=1e-2 * target.abs().max())


def test_merge_refuses_what_it_cannot_solve_and_writes_nothing(tiny_sd, merged, monkeypatch, cli_error):
    """--ridge 0 (eq. 4 exactly) with captions whose features do not span the text space (the tiny text
    encoder's final LayerNorm, at its initial weights, makes every feature sum to zero: rank 31 of 32), and
    a merge whose result misses a concept's own outputs: one error line each, the earlier result kept."""
    root, out = merged
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = ["merge", str(root / "a"), str(root / "b"), str(tiny_sd[0]), "--out-dir", str(out), "--quiet"]
    with cli_error(r"--ridge 0: .* span 31 of the 32 text-feature directions"):
        cd.main(argv + ["--ridge", "0"])
    monkeypatch.setattr(cd, "MAX_TARGET_ERROR", 0.0)  # any miss at all counts
    with cli_error(r"miss the concepts' own outputs on their captions by up to .*nothing written"):
        cd.main(argv)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def find_tile(figure: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    """Every (y, x) where `tile` sits in `figure` pixel for pixel."""
    h, w, _ = tile.shape
    ys, xs = np.nonzero((figure[:-h + 1, :-w + 1] == tile[0, 0]).all(-1))
    return [(y, x) for y, x in zip(ys, xs) if np.array_equal(figure[y:y + h, x:x + w], tile)]


def test_figure_tiles_are_the_sampled_images_in_order(tiny_sd, trained, merged, tmp_path):
    ti = tmp_path / "ti"
    g = torch.Generator().manual_seed(3)
    for token in TOKENS:
        save_learned_embeds(embeds_path(ti, token), token, torch.randn(1, 32, generator=g))
    result = cd.main(["figure", str(tiny_sd[0]), str(tmp_path / "fig.png"), "--tokens", *TOKENS, "--ti-embeds",
                      str(ti), "--joint", str(trained[1].out_dir), "--merged", str(merged[1]), "--num", "2",
                      "--tile", "32", "--steps", "2", "--quiet", *RES])
    prompts = ["a <new1> next to a <new3>", "a <new3> next to a <new1>"]
    order = [(m, p) for m in cd.METHODS for p in prompts]
    assert list(result.images) == order and result.labels == [f"{m}: {p}" for m, p in order]
    figure = np.asarray(Image.open(result.png).convert("RGB"))
    places = []
    for key in order:
        row = []
        for im in result.images[key]:
            found = find_tile(figure, np.asarray(im))
            assert len(found) == 1, f"{key}: found {len(found)} times"
            row.append(found[0])
        places.append(row)
    ys = [row[0][0] for row in places]
    assert ys == sorted(ys) and len(set(ys)) == 6  # one row per (method, prompt), in the stated order
    assert all(row[0][0] == row[1][0] and row[0][1] < row[1][1] for row in places)  # seeds left to right


def test_figure_measures_each_drawn_method_with_the_course_scorer(tiny_sd, trained, shared, tmp_path, capsys):
    """OUT_PNG's .json: each drawn method's image alignment to each concept's photos and text alignment to the
    prompt with class words, equal to utils.clip_score's scores of the images drawn; a method whose inputs are
    missing (--skip-missing) is neither drawn nor measured; without the flags no .json, an earlier one removed."""
    ti = tmp_path / "ti"
    g = torch.Generator().manual_seed(3)
    for token in TOKENS:
        save_learned_embeds(embeds_path(ti, token), token, torch.randn(1, 32, generator=g))
    clip = tiny_transformers_clip(tmp_path / "clip")
    concepts = [shared / "hw2_data/textual_inversion" / c for c in "02"]
    out = tmp_path / "out" / CD_COMPARISON_PNG
    base = ["figure", str(tiny_sd[0]), str(out), "--tokens", *TOKENS, "--joint", str(trained[1].out_dir),
            "--merged", str(tmp_path / "no_merge"), "--skip-missing", "--tile", "32", "--steps", "2", "--quiet", *RES]
    result = cd.main([*base, "--ti-embeds", str(ti), "--num", "2", "--concept-dirs", *map(str, concepts),
                      "--clip", str(clip)])
    assert "leaving out Custom Diffusion, merged, missing merged weights" in capsys.readouterr().out
    prompt = "a <new1> next to a <new3>"
    assert [m for m, _ in result.images] == [cd.METHODS[0]] * 2 + [cd.METHODS[1]] * 2  # the merged rows are absent
    written = json.loads((tmp_path / "out" / CD_COMPARISON_JSON).read_text())
    assert written == result.scores
    assert set(written) == {"prompt", "concepts", "clip", "text_prompt", "methods"}
    assert (written["prompt"], written["concepts"], written["clip"]) == (prompt, TOKENS, str(clip))
    assert written["text_prompt"] == "a dog next to a cat"  # the class words of the joint run's config.json
    assert set(written["methods"]) == {"textual_inversion", "custom_diffusion_joint"}
    scorer = ClipScorer(clip)
    refs = {t: [Image.open(p).convert("RGB") for p in sorted(c.glob("*.jpg"))] for t, c in zip(TOKENS, concepts)}
    for method, key in (cd.METHODS[0], "textual_inversion"), (cd.METHODS[1], "custom_diffusion_joint"):
        images = result.images[method, prompt]
        measured = written["methods"][key]
        assert set(measured) == {"image_sim", "text_sim", "n_images"} and measured["n_images"] == 2
        expected = {t: scorer.image_scores(images, refs[t]).mean().item() for t in TOKENS}
        assert measured["image_sim"] == pytest.approx(expected, abs=1e-4)
        assert abs(expected["<new1>"] - expected["<new3>"]) > 1e-3  # a swap of the concepts would show
        assert measured["text_sim"] == pytest.approx(scorer.text_scores(images, "a dog next to a cat").mean().item(),
                                                     abs=1e-4)
        assert abs(measured["text_sim"] - scorer.text_scores(images, prompt).mean().item()) > 1e-3
    # the two methods' images differ, and so do their measures
    assert written["methods"]["textual_inversion"] != written["methods"]["custom_diffusion_joint"]
    # no --concept-dirs / --clip: the figure alone, and the earlier measures (of another figure) are removed
    result = cd.main([*base, "--ti-embeds", str(tmp_path / "no_ti"), "--num", "1"])
    printed = capsys.readouterr().out
    assert f"{CD_COMPARISON_JSON} not written (it needs --concept-dirs and --clip)" in printed
    assert result.scores is None and list(result.images) == [(cd.METHODS[1], prompt),
                                                             (cd.METHODS[1], "a <new3> next to a <new1>")]
    assert out.is_file() and not (tmp_path / "out" / CD_COMPARISON_JSON).exists()


def test_figure_inputs_are_all_required_without_skip_missing(tiny_sd, trained, tmp_path, cli_error):
    argv = ["figure", str(tiny_sd[0]), str(tmp_path / "f.png"), "--tokens", *TOKENS, "--joint",
            str(trained[1].out_dir), "--merged", str(trained[1].out_dir), "--ti-embeds", str(tmp_path / "no_ti")]
    with cli_error("missing textual-inversion embeddings of <new1>"):
        cd.main(argv)
    with cli_error(r"missing reference photos of <new3>: .*nowhere; CLIP model: .*no_clip"):
        cd.main([*argv[:-2], "--ti-embeds", str(trained[1].out_dir), "--concept-dirs", str(tmp_path),
                 str(tmp_path / "nowhere"), "--clip", str(tmp_path / "no_clip")])
    assert not (tmp_path / "f.png").exists()


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input_ends_in_one_error_line(tiny_sd, shared, trained, tmp_path, cli_error):
    root, result = trained
    reg = root / "reg"
    out = tmp_path / "out"
    dog, cat = (str(shared / "hw2_data/textual_inversion" / c) for c in "02")
    model = str(tiny_sd[0])
    cases = [
        (["train", str(tmp_path / "nope"), model, "--tokens", "<new1>", "--class-words", "dog", "--out-dir", str(out)],
         r"missing concept images 0: .*nope"),
        (["train", dog, cat, model, "--tokens", "new1", "<new3>", "--class-words", "dog", "cat"], "angle brackets"),
        (["train", dog, cat, model, "--tokens", "<new1>", "--class-words", "dog", "cat"],
         "2 concept folder.*1 --tokens and 2 --class-words"),
        (train_argv(tiny_sd, shared, out, reg, "--lr", "nan"), "argument --lr: 'nan' is not a finite number"),
        (train_argv(tiny_sd, shared, out, reg, "--steps", "0"), "argument --steps: 0 is out of range"),
        (train_argv(tiny_sd, shared, out, reg, "--prior-weight", "-1"), "argument --prior-weight"),
        (train_argv(tiny_sd, shared, tmp_path / "file.txt" / "sub", reg), r"--out-dir .*file\.txt is a file"),
        (train_argv(tiny_sd, shared, result.out_dir, reg), "holds an earlier run .*pass --resume"),
        (["generate", str(root / "input.json"), str(tmp_path / "file.txt"), str(tiny_sd[0]), "--weights",
          str(result.out_dir)], r"OUT_DIR .*file\.txt: exists and is not a folder"),
        (["generate", str(root / "input.json"), str(root / "out"), str(tiny_sd[0]), "--weights", str(tmp_path)],
         r"missing Custom Diffusion weights"),
        (["figure", str(tiny_sd[0]), str(tmp_path / "f.png"), "--tokens", "<new1>", "new3"], "angle brackets"),
        (["merge", str(result.out_dir), str(tiny_sd[0]), "--ridge", "inf"], "argument --ridge"),
    ]
    (tmp_path / "file.txt").write_text("keep me")
    (root / "input_new2.json").write_text(json.dumps({"0": {"token_name": "<new2>", "prompt": ["a <new2>"]}}))
    cases.append((["generate", str(root / "input_new2.json"), str(root / "out"), str(tiny_sd[0]), "--weights",
                   str(result.out_dir)], "use <new2>, which .* was not trained on"))
    before = {p: p.read_bytes() for p in [*result.out_dir.iterdir(), *(root / "out" / "0" / "0").iterdir()]}
    for argv, message in cases:
        with cli_error(message) as err:
            cd.main(argv)
        lines = err.message.strip().splitlines()  # argparse prints its usage first
        assert [i for i, line in enumerate(lines) if ": error: " in line] == [len(lines) - 1], err.message
    assert {p: p.read_bytes() for p in before} == before and sorted(before) == sorted(
        [*result.out_dir.iterdir(), *(root / "out" / "0" / "0").iterdir()])  # nothing written is lost
    assert (tmp_path / "file.txt").read_text() == "keep me" and not out.exists()


def test_skip_missing_model(shared, tmp_path, capsys):
    argv = ["train", str(shared / "hw2_data/textual_inversion/0"), str(tmp_path / "sd-v1-4.ckpt"), "--tokens", "<new1>",
            "--class-words", "dog", "--out-dir", str(tmp_path / "o"), "--skip-missing"]
    assert cd.main(argv) is None
    assert "missing model" in capsys.readouterr().out and not (tmp_path / "o").exists()
