"""The generated report: its numbers are the JSON's, its links resolve, a missing input gets its
"what to provide" note without touching the other sections, training curves come from the log,
and `run_all.sh --train` runs end to end on tiny settings."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import open_clip
import pytest
import torch
from helpers import copy_digits
from PIL import Image

import p1_ddpm_eval
import p1_ddpm_sample
import p1_ddpm_train
import p2_ddim
import p3_clip_zeroshot
import report
from models.clip_zeroshot import resolve_model
from models.face_unet import FaceUNet
from models.p1_networks import load_p1_model
from torch.utils.flop_counter import FlopCounterMode
from report import read_train_log

ROOT = Path(__file__).resolve().parents[1]
TINY_P1 = ["--limit", "200", "--n-feat", "8", "--num-timesteps", "50", "--batch-size", "16"]
TINY_CLIP = ROOT / "tests" / "fixtures" / "tiny_clip.json"
CLASSES = {"0": "apple", "1": "aquarium_fish", "2": "baby", "3": "bear", "4": "beaver", "5": "bed"}


@pytest.fixture(scope="module")
def outputs(shared, tmp_path_factory):
    """An outputs folder as run_all.sh writes it, every part made by a tiny model (P1, P2, P3 CLIP) or in the
    format its program writes (textual-inversion scores), plus run_info.json; and a P1 run folder."""
    root = tmp_path_factory.mktemp("report")
    out, run = root / "outputs", root / "run"
    # P1: a tiny model trained for 2 steps, sampled, scored by the course's classifier and the shipped judge
    ckpt = p1_ddpm_train.main(["--data-root", str(shared / "hw2_data/digits"), "--out-dir", str(run), "--steps", "2",
                               *TINY_P1])
    p1_ddpm_sample.main([str(out / "p1"), "--ckpt", str(ckpt), "--steps", "5", "--per-digit", "3", "--grid",
                         "--reverse-process", "--quiet", "--bf16", "off"])
    p1_ddpm_eval.main([str(out / "p1"), "--mnistm-classifier", str(shared / "grader/Classifier.pth"),
                       "--svhn-classifier", str(ROOT / "checkpoints/svhn_classifier.pt")])
    # P2: a random width-32 face UNet on four 32x32 noises against random ground truth
    face = root / "face"
    (face / "noise").mkdir(parents=True)
    (face / "GT").mkdir()
    torch.manual_seed(0)
    torch.save(FaceUNet(channels=32).state_dict(), face / "UNet.pt")
    g = torch.Generator().manual_seed(0)
    for name in ("00", "01", "02", "03"):
        torch.save(torch.randn(1, 3, 32, 32, generator=g), face / "noise" / f"{name}.pt")
        Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()).save(
            face / "GT" / f"{name}.png")
    p2_ddim.main([str(face / "noise"), str(out / "p2"), str(face / "UNet.pt"), "--gt-dir", str(face / "GT"),
                  "--steps", "2", "--eta-sweep", "--interpolation"])
    # P3 CLIP: a tiny random open_clip model on 12 real images of 6 classes
    val = root / "clip_val"
    val.mkdir()
    digits = sorted((shared / "hw2_data/digits/mnistm/data").glob("*.png"))
    for i, src in enumerate(digits[:12]):
        Image.open(src).convert("RGB").resize((32, 32)).save(val / f"{i % 6}_{i}.png")
    (root / "id2label.json").write_text(json.dumps(CLASSES))
    torch.manual_seed(0)
    clip_model = open_clip.create_model(resolve_model(str(TINY_CLIP)))
    torch.save(clip_model.state_dict(), root / "tiny_clip.pt")
    p3_clip_zeroshot.main([str(val), str(root / "id2label.json"), str(out / "p3_clip"), "--model", str(TINY_CLIP),
                           "--pretrained", str(root / "tiny_clip.pt"), "--num-cases", "3"])
    # textual inversion: the scores `p3_textual_inversion.py evaluate --json` writes, and one image per prompt
    scores = [{"concept": "0", "prompt": 0, "image_score": 71.234, "text_score": 29.876, "baseline": [70, 30],
               "pass": False},
              {"concept": "1", "prompt": 0, "image_score": 62.5, "text_score": 31.04, "baseline": [60, 28],
               "pass": True}]
    (out / "p3_ti_scores.json").write_text(json.dumps(scores, indent=2))
    for s in scores:
        (out / "p3_ti" / s["concept"] / "0").mkdir(parents=True)
        Image.new("RGB", (64, 64), "gray").save(out / "p3_ti" / s["concept"] / "0" / "0.png")
    (out / "run_info.json").write_text(json.dumps({
        "trained": False, "p1": {"ckpt": str(ckpt), "sampler": "ddim", "steps": 5, "guidance": 4.0, "seed": 0},
        "p2": {"unet": str(face / "UNet.pt"), "steps": 2, "seed": 0, "dtype": "fp32"},
        "p3_clip": {"val_dir": str(val)},
        "p3_ti": {"model": "sd.ckpt", "input_json": str(shared / "hw2_data/textual_inversion/input.json"),
                  "sampler": "dpm++", "steps": 30, "guidance": 7.5, "seed": 0}}))
    return out, run


def make_report(out: Path, *extra) -> str:
    report.main([str(out), *extra])
    return (out / "report.md").read_text()


def section(text: str, title: str) -> str:
    """The markdown from the heading `## {title}...` to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}.*?(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert match, f"no section {title!r}"
    return match.group(0)


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """The cells of the markdown table whose header starts with `| first_header |`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def close(cell: str, value: float, decimals: int) -> bool:
    return abs(float(cell) - value) <= 0.5 * 10 ** -decimals + 1e-12


def json_numbers(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in json_numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in json_numbers(v)]
    return []


def test_every_number_equals_the_json_it_comes_from(outputs, shared):
    out, _ = outputs
    text = make_report(out)
    p1 = json.loads((out / "p1/eval.json").read_text())
    rows = table_rows(section(text, "Problem 1"), "data set")
    assert [r[0] for r in rows] == ["MNIST-M", "SVHN"]
    for row, name in zip(rows, ("mnistm", "svhn")):
        assert row[1].strip("`") == p1["classifiers"][name] and int(row[2]) == p1[name]["n"]
        assert close(row[3], p1[name]["accuracy"], 4)
        assert [close(c, p1[name]["per_digit"][str(d)], 4) for d, c in enumerate(row[4:])] == [True] * 10
    mean = re.search(r"Mean accuracy over the data sets: \*\*([\d.]+)\*\*", text).group(1)
    assert close(mean, p1["mean"], 4)
    # captions give the settings p1_ddpm_sample.py recorded (unipc, 5 steps, w = 3), over run_info.json's (ddim, w = 4)
    used = json.loads((out / "p1/sampling.json").read_text())
    assert (used["sampler"], used["steps"], used["guidance"], used["dtype"]) == ("unipc", 5, 3.0, "fp32")
    assert "sampler unipc, steps 5, guidance w 3.00, seed 0, precision fp32" in section(text, "Problem 1")

    mse = json.loads((out / "p2/mse.json").read_text())
    rows = table_rows(section(text, "Problem 2"), "image")
    assert [r[0] for r in rows] == [f"{n}.png" for n in mse["per_image"]]
    assert all(close(r[2], mse["per_image"][r[0][:-4]], 3) for r in rows)
    assert close(re.search(r"Mean MSE: \*\*([\d.]+)\*\*", text).group(1), mse["mean"], 3)

    clip = json.loads((out / "p3_clip/results.json").read_text())
    p3 = section(text, "Problem 3: CLIP")
    acc, top5 = re.search(r"Accuracy \*\*([\d.]+)\*\*, top-5 accuracy \*\*([\d.]+)\*\*", p3).groups()
    assert close(acc, clip["accuracy"], 4) and close(top5, clip["top5_accuracy"], 4)
    worst = sorted(clip["per_class"].items(), key=lambda kv: (kv[1]["accuracy"], kv[0]))[:5]
    assert [(r[0], float(r[3])) for r in table_rows(p3, "class")] == [
        (name, round(c["accuracy"], 4)) for name, c in worst]
    assert clip["successes"] and clip["failures"], "the fixture should give both kinds of case"
    case_rows = [r for r in table_rows(p3, "image")] + [r for r in table_rows(p3.split("Failures")[1], "image")]
    expected = clip["successes"] + clip["failures"]
    assert [(r[1], r[2], r[3]) for r in case_rows] == [(c["file"], c["true_label"], c["pred_label"]) for c in expected]
    assert all(close(r[4], c["probability"], 4) and close(r[5], c["true_probability"], 4)
               for r, c in zip(case_rows, expected))

    scores = json.loads((out / "p3_ti_scores.json").read_text())
    rows = table_rows(section(text, "Problem 3: textual inversion"), "concept")
    assert [(r[0], int(r[1]), r[7]) for r in rows] == [(s["concept"], s["prompt"], "PASS" if s["pass"] else "FAIL")
                                                      for s in scores]
    assert all(close(r[4], s["image_score"], 2) and close(r[5], s["text_score"], 2) for r, s in zip(rows, scores))
    prompts = json.loads((shared / "hw2_data/textual_inversion/input.json").read_text())
    assert [r[2] for r in rows] == [f"`{prompts[s['concept']]['prompt'][s['prompt']]}`" for s in scores]

    # and no decimal number anywhere that is not (a rounding of) a number of one of the JSON files
    sources = [out / "p1/eval.json", out / "p1/sampling.json", out / "p2/mse.json", out / "p3_clip/results.json",
               out / "p3_ti_scores.json", out / "run_info.json", out / "p2/eta_sweep.json", out / "p2/interpolation.json"]
    known = [x for path in sources for x in json_numbers(json.loads(path.read_text()))]
    # the implementation table: the checkpoint's config, and its forward's FLOPs as torch's counter gives them
    net, config = load_p1_model(used["ckpt"])
    with FlopCounterMode(display=False) as flops:
        net(torch.zeros(1, 3, 28, 28), *[torch.zeros(1, dtype=torch.long)] * 3)
    known += json_numbers(config) + [flops.get_total_flops() / 1e9]
    impl = section(text, "Problem 1").split("### 1.2")[0]
    assert f"| GFLOP per image and forward | {flops.get_total_flops() / 1e9:.3f} |" in impl
    assert f"| parameters | {sum(v.numel() for v in torch.load(used['ckpt'])['ema'].values()):,} |" in impl
    prose = re.sub(r"`[^`]*`|\]\([^)]*\)", "", text)  # paths and link targets are not numbers
    prose = re.sub(r"^#+ .*$", "", prose, flags=re.MULTILINE)  # the headings number the questions
    for number in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", prose):
        decimals = len(number.split(".")[1])
        assert any(close(number, x, decimals) for x in known), f"{number} in report.md is in no JSON"


def links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_every_link_resolves_and_every_image_opens(outputs):
    out, run = outputs
    (run / "accuracy.json").write_text(json.dumps({"per_digit": 1, "rows": [
        {"train_step": 1, "sampler": "ddim", "steps": 5, "guidance": 4.0, "mnistm": 0.1, "svhn": 0.2, "mean": 0.15},
        {"train_step": 2, "sampler": "ddim", "steps": 5, "guidance": 4.0, "mnistm": 0.3, "svhn": 0.4, "mean": 0.35}]}))
    text = make_report(out, "--run-dir", str(run))
    targets = links(text)
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    clip = json.loads((out / "p3_clip/results.json").read_text())
    # P1 grids and reverse process, the loss curve (the run's train_log.jsonl) and the accuracy curve, P2
    # images, eta sweep, interpolation and its statistics, CLIP cases and cases.png, one image per textual-inversion
    # prompt
    assert (run / "train_log.jsonl").is_file()
    assert len(images) == 4 + 2 + 4 + 3 + len(clip["successes"]) + len(clip["failures"]) + 1 + 2
    for target in targets:
        assert not target.startswith("/") and "://" not in target, f"{target}: not a relative link"
        path = out / unquote(target)
        assert path.is_file(), f"{target} does not resolve"
        if path.suffix == ".png":
            with Image.open(path) as im:
                im.verify()
    assert "report_files/p1_accuracy_vs_step.png" in targets and "report_files/p1_training_loss.png" in targets


def test_missing_inputs_say_what_to_provide_and_p1_stays_complete(outputs, tmp_path):
    out, _ = outputs
    full = make_report(out)
    partial = tmp_path / "outputs"
    shutil.copytree(out, partial, ignore=shutil.ignore_patterns("p2", "p3_clip", "p3_ti*", "report*"))
    text = make_report(partial)
    assert section(text, "Problem 1") == section(full, "Problem 1").replace(str(out), str(partial))
    p2 = section(text, "Problem 2")
    assert "**Not available yet.**" in p2 and "hw2_data/face/UNet.pt" in p2
    assert f"python p2_ddim.py hw2_data/face/noise {partial / 'p2'} hw2_data/face/UNet.pt --gt-dir" in p2
    clip = section(text, "Problem 3: CLIP")
    assert "**Not available yet.**" in clip and "python p3_clip_zeroshot.py hw2_data/clip_zeroshot/val" in clip
    ti = section(text, "Problem 3: textual inversion")
    assert "**Not available yet.**" in ti and f"--json {partial / 'p3_ti_scores.json'}" in ti
    assert "**Not available yet.**" in section(text, "Problem 3: Custom Diffusion")


def test_custom_diffusion_outputs_are_linked_when_present(outputs, tmp_path):
    out, _ = outputs
    copy = tmp_path / "outputs"
    shutil.copytree(out, copy)
    (copy / "p3_cd").mkdir()
    Image.new("RGB", (32, 32)).save(copy / "p3_cd" / "samples.png")
    (copy / "p3_cd" / "scores.json").write_text("{}")
    cd = section(make_report(copy), "Problem 3: Custom Diffusion")
    assert "Not available" not in cd and "](p3_cd/samples.png)" in cd and "](p3_cd/scores.json)" in cd


def write_log(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_loss_curve_is_made_from_the_training_log(outputs, tmp_path):
    out, _ = outputs
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-4 * min(1, s / 10), "time": 0.1 * s} for s in range(1, 61)]
    rows.insert(30, {"step": 20, "loss": 9.0, "lr": 1e-4})  # a resumed run redid step 20: the later record wins
    write_log(run / "train_log.jsonl", rows)
    records = read_train_log(run / "train_log.jsonl")
    assert [r["step"] for r in records] == list(range(1, 61)) and records[19]["loss"] == 9.0
    text = make_report(out, "--run-dir", str(run))
    png = out / "report_files" / "p1_training_loss.png"
    assert "](report_files/p1_training_loss.png)" in text
    assert "60 logged steps, last step 60, last loss 0.0167" in text
    pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert pixels.shape[1] > 500 and pixels.std() > 10
    # another loss (same steps and learning rates) gives another picture
    write_log(run / "train_log.jsonl", [{**r, "loss": 2.0 / r["step"] ** 2} for r in records])
    make_report(out, "--run-dir", str(run))
    assert not np.array_equal(pixels, np.asarray(Image.open(png).convert("L"), dtype=float))
    # no accuracy.json: the report says how to make it
    assert "bench_p1_quality.py --ckpt" in section(text, "Problem 1")


def test_bad_inputs_are_one_line_errors(outputs, tmp_path, cli_error):
    with cli_error("not_there: outputs folder not found"):
        report.main([str(tmp_path / "not_there")])
    (tmp_path / "p1").mkdir(parents=True)
    (tmp_path / "p1" / "eval.json").write_text("{not json")
    with cli_error(r"eval.json: not valid JSON"):
        report.main([str(tmp_path)])
    (tmp_path / "p1" / "eval.json").unlink()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    with cli_error(r"train_log.jsonl line 1: missing key lr\n$"):
        report.main([str(tmp_path), "--run-dir", str(tmp_path / "run")])


@pytest.fixture
def tiny_data(shared, tmp_path):
    """hw2_data with 40 real images per digit data set (the course layout), nothing else."""
    root = copy_digits(shared, tmp_path / "hw2_data" / "digits", 40)
    return root.parent


@pytest.mark.heavy
def test_run_all_train_end_to_end(shared, tiny_data, tmp_path):
    out, run = tmp_path / "outputs", tmp_path / "runs"
    env = {**os.environ, "HW2_SKIP_SETUP": "1", "PYTHON": str(ROOT / ".venv/bin/python"),
           "HW2_DATA": str(tiny_data), "HW2_OUT": str(out), "HW2_RUN": str(run),
           "HW2_TRAIN_STEPS": "4", "HW2_KEEP_EVERY": "2",
           "HW2_P1_TRAIN_FLAGS": "--n-feat 8 --num-timesteps 50 --batch-size 16 --save-every 2",
           "HW2_JUDGE_FLAGS": "--epochs 1 --batch-size 16 --width 8", "HW2_PER_DIGIT": "2",
           "HW2_CURVE_PER_DIGIT": "1", "HW2_MNISTM_CLASSIFIER": str(shared / "grader/Classifier.pth"),
           "HW2_PLAN_FORWARDS": "10"}
    done = subprocess.run(["bash", str(ROOT / "run_all.sh"), "--train"], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == f"report: {out / 'report.md'} and {out / 'report.pdf'}"
    # the plan comes first: the device, what runs and what is skipped and why, times from this machine's unit
    lines = done.stdout.splitlines()
    assert lines[0].startswith("run_all.sh will run on CPU (") and "unit" in lines[0]
    plan = "\n".join(lines[:10])
    assert re.search(r"run +P1 training \(p1_ddpm_train.py --recipe cpu\) +about \d+ (minutes|hours) \(\d+ units\); "
                     r"no GPU here, so the CPU recipe", plan), plan
    assert "skip  P2 DDIM: 10 faces, MSE, eta grid, interpolation" in plan and str(tiny_data / "face/UNet.pt") in plan
    assert re.search(r"skip +P3 textual inversion and Custom Diffusion +.*sd-v1-4.ckpt is missing", plan), plan
    assert (out / "report.pdf").is_file()
    # without a GPU --train trains the CPU recipe (its network, with the test's width)
    assert torch.load(run / "p1/model.pt", weights_only=True)["config"]["model"]["arch"] == "channel_mult_unet"
    # P3's inputs are missing: run_all.sh says so itself instead of importing open_clip or diffusers
    assert f"P3 CLIP zero-shot skipped: {tiny_data / 'clip_zeroshot/val'} is missing" in done.stdout
    assert "P3 textual inversion and Custom Diffusion skipped" in done.stdout
    assert torch.load(run / "p1/model.pt", weights_only=True)["step"] == 4
    assert (run / "svhn_classifier.pt").is_file()
    info = json.loads((out / "run_info.json").read_text())
    assert info["trained"] is True and info["p1"]["ckpt"] == str(run / "p1/model.pt")
    assert info["p1"]["svhn_classifier"] == str(run / "svhn_classifier.pt")
    assert [r["train_step"] for r in json.loads((run / "p1/accuracy.json").read_text())["rows"]] == [2, 4]
    assert len(list((out / "p1/mnistm").glob("*.png"))) == 20
    text = (out / "report.md").read_text()
    p1 = section(text, "Problem 1")
    scores = json.loads((out / "p1/eval.json").read_text())
    assert scores["classifiers"]["svhn"] == str(run / "svhn_classifier.pt")
    assert close(re.search(r"Mean accuracy over the data sets: \*\*([\d.]+)\*\*", p1).group(1), scores["mean"], 4)
    assert f"checkpoint {run / 'p1/model.pt'}" in p1 and "report_files/p1_accuracy_vs_step.png" in p1
    for target in links(text):
        assert (out / unquote(target)).is_file(), target
    assert "**Not available yet.**" in section(text, "Problem 2")  # no face data in the tiny hw2_data


CASE = {"file": "0_1.png", "true_label": "apple", "pred_label": "bed", "probability": 0.5, "true_probability": 0.1}
CLIP = {"accuracy": 0.5, "top5_accuracy": 0.9, "n": 12, "per_class": {"apple": {"accuracy": 0.5}},
        "successes": [CASE], "failures": []}


@pytest.mark.parametrize("file, content, message", [
    ("p1/eval.json", '{"mean": NaN}', "p1/eval.json: mean: expected a finite number in 0..1, found NaN"),
    ("p1/eval.json", '{"mean": 0.5, "svhn": {"n": 3, "accuracy": -1, "per_digit": {}}}',
     "p1/eval.json: svhn.accuracy: expected a finite number in 0..1, found -1"),
    ("p1/sampling.json", '{"steps": "five"}', "p1/sampling.json: steps: expected an integer >= 1, found 'five'"),
    ("p2/mse.json", "[1, 2]", r"p2/mse.json: expected an object, found \[1, 2\]"),
    ("p2/mse.json", '{"per_image": {"00": Infinity}, "mean": 1}',
     "p2/mse.json: per_image.00: expected a finite number >= 0, found Infinity"),
    ("p2/mse.json", '{"per_image": {"00": 1.5}}', "p2/mse.json: missing key mean"),
    ("p3_clip/results.json", json.dumps({**CLIP, "per_class": []}), "results.json: per_class: expected an object"),
    ("p3_clip/results.json", json.dumps({**CLIP, "successes": [{**CASE, "file": "../../x.png"}]}),
     r"results.json: successes\[0\].file '../../x.png': not a plain file or folder name"),
    ("p3_ti_scores.json", '{"concept": "0"}', "p3_ti_scores.json: expected a list, found"),
    ("p3_ti_scores.json", json.dumps([{"concept": "0", "prompt": 0, "image_score": 1, "text_score": "2",
                                       "baseline": [1, 2], "pass": True}]),
     "p3_ti_scores.json: \\[0\\].text_score: expected a finite number, found '2'"),
    ("run_info.json", '{"p1": ["ddim"]}', "run_info.json: p1: expected an object, found \\['ddim'\\]")])
def test_json_of_the_wrong_shape_is_one_line_naming_file_and_key(tmp_path, file, content, message, cli_error):
    """NaN, inf, a number out of range, a list for an object, a string for a number: the report prints none of
    them as a result, and says which file and key in one line."""
    (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file).write_text(content)
    with cli_error(message) as err:
        report.main([str(tmp_path)])
    assert err.message.count("\n") == 1 and not (tmp_path / "report.md").exists()


def test_accuracy_curve_of_the_wrong_shape_names_file_and_key(tmp_path, cli_error):
    (tmp_path / "out").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "accuracy.json").write_text(json.dumps({"rows": [{"train_step": None}]}))
    with cli_error(r"accuracy.json: rows\[0\].train_step: expected an integer >= 0, found None\n$"):
        report.main([str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")])
    (tmp_path / "run" / "train_log.jsonl").write_text('{"step": 1, "loss": NaN, "lr": 0.1}\n')
    with cli_error(r"train_log.jsonl line 1: loss: expected a finite number, found NaN\n$"):
        report.main([str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")])


def test_pdf_holds_every_number_and_figure_of_the_report(outputs):
    """report.pdf: A4 pages numbered n / N, every decimal number of report.md's prose and tables in its text, and
    every figure and table image of report.md embedded (counted by their pixel sizes)."""
    from pypdf import PdfReader
    out, run = outputs
    text = make_report(out, "--run-dir", str(run))
    reader = PdfReader(out / "report.pdf")
    pages = [page.extract_text() for page in reader.pages]
    assert len(pages) >= 3
    for i, (page, content) in enumerate(zip(reader.pages, pages), start=1):
        width, height = float(page.mediabox.width), float(page.mediabox.height)
        assert (round(width), round(height)) == (595, 842), "not A4"
        assert f"{i} / {len(pages)}" in content, f"page {i} has no page number"
    # nothing starts outside the text area: every run of text begins within the 18 mm margins
    for page in reader.pages:
        width = float(page.mediabox.width)
        starts = []
        page.extract_text(visitor_text=lambda t, cm, tm, font, size: t.strip() and starts.append(tm[4] * cm[0] + cm[4]))
        assert starts and all(18 / 25.4 * 72 - 1 <= x <= width - 18 / 25.4 * 72 for x in starts), \
            [round(x) for x in starts if not 50 <= x <= width - 51][:5]
    pdf_text = re.sub(r"\s+", " ", " ".join(pages))
    prose = re.sub(r"`[^`]*`|\]\([^)]*\)", "", text)
    numbers = re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", prose)
    assert len(numbers) > 50
    missing = [n for n in numbers if n not in pdf_text]
    assert not missing, f"numbers of report.md not in report.pdf: {missing[:10]}"
    for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE):
        assert re.sub(r"\s+", " ", heading.replace("`", "")) in pdf_text, heading
    # every image report.md shows is in the PDF: the embedded images' sizes are whole multiples of theirs
    shown = [Image.open(out / unquote(t)).size for t in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)]
    embedded = [im.image.size for page in reader.pages for im in page.images]
    for w, h in shown:  # each shown image has an embedded one of its own
        match = next((e for e in embedded if e[0] % w == 0 and e[1] % h == 0 and e[0] // w == e[1] // h), None)
        assert match, f"a {w}x{h} image of report.md is not in report.pdf"
        embedded.remove(match)
