"""Write the homework report OUTPUTS_DIR/report.md from the figures and JSON the programs wrote.

One section per problem (P1, P2, P3 CLIP, P3 textual inversion, P3 Custom Diffusion); every number
is read from a JSON file, every figure linked relatively with a caption saying how it was made.
A section whose inputs are missing says what to put where and the command that makes it.
Training curves (loss and learning rate against step, accuracy against step) when a run folder
is given. Curves and thumbnails go to OUTPUTS_DIR/report_files/ (replaced whole). See docs/report.md.
"""
import argparse
import json
import math
import os
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
from PIL import Image

from utils import observations
from utils.cli import check_writable_dir, safe_name, staged_dir, staged_file
from utils.errors import UserError, cli
from utils.report_pdf import write_pdf
from utils.outputs import (
    ACCURACY_JSON,
    CASES_PNG,
    CD_COMPARISON_JSON,
    CD_COMPARISON_PNG,
    ETA_SWEEP_JSON,
    ETA_SWEEP_PNG,
    EVAL_JSON,
    INTERPOLATION_JSON,
    INTERPOLATION_PNG,
    INTERPOLATION_STATS_PNG,
    MSE_JSON,
    MULTI_CONCEPT_PNG,
    REPORT_MD,
    REPORT_PDF,
    RESULTS_JSON,
    RUN_INFO_JSON,
    SAMPLING_JSON,
    TI_SCORES_JSON,
    TRAIN_LOG_JSONL,
    grid_png,
    reverse_process_png,
)

# The homework report: `OUTPUTS_DIR/report.md` assembled from the figures and JSON the programs wrote.
#
# Every number in the report is read from a JSON file (never typed in); every figure is linked
# relatively with a caption saying how it was made. A section whose inputs are missing says what
# to put where and the command that makes it; the other sections are still written. A JSON file of
# the wrong shape (a list for an object, a string, NaN, inf or an out-of-range value for a number) is
# a one-line error naming the file and the key: nothing is printed from it as a result.
#
# Inputs, relative to OUTPUTS_DIR (the layout `run_all.sh` writes):
#   run_info.json             the flags run_all.sh used (checkpoints, samplers, steps, guidance, seeds)
#   p1/grid_*.png, p1/reverse_process_*.png, p1/sampling.json, p1/eval.json (p1_ddpm_sample.py, p1_ddpm_eval.py)
#   p2/NN.png, p2/mse.json, p2/eta_sweep.png, p2/interpolation.png (p2_ddim.py)
#   p3_clip/results.json, p3_clip/cases.png                       (p3_clip_zeroshot.py)
#   p3_ti/, p3_ti_scores.json, p3_multi_concept.png               (p3_textual_inversion.py)
#   p3_cd*/                                                        (p3_custom_diffusion.py)
# and, given a run folder, RUN_DIR/train_log.jsonl ({"step", "loss", "lr"} per line) and
# RUN_DIR/accuracy.json (benchmarks/bench_p1_quality.py on the kept RUN_DIR/model_STEP.pt).
DATASET_NAMES = {"mnistm": "MNIST-M", "svhn": "SVHN"}
REVERSE_T = "500, 320, 200, 120, 40, 1"  # the report's reverse-process timesteps (p1_ddpm_sample.py)
THUMB = 96  # side of the CLIP case thumbnails in pixels
FILES = "report_files"  # folder beside report.md for the curves and thumbnails


# ------------------------------------------------------------------------------------------ reading
# What the report reads is checked against the shape it prints: a spec is a function (value, file, key) that
# returns the value or raises a one-line UserError naming the file and the key (a wrong type, NaN, inf, a
# number out of range). Keys beyond a spec's are allowed: the programs record more than the report prints.
def _wrong(file: Path, key: str, expected: str, value) -> UserError:
    shown = json.dumps(value) if isinstance(value, float) and not math.isfinite(value) else repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return UserError(f"{file}: {key + ': ' if key else ''}expected {expected}, found {shown}")


def number(lo: float = -math.inf, hi: float = math.inf, integer: bool = False):
    """A finite JSON number in lo..hi (an integer if `integer`)."""
    base = "an integer" if integer else "a finite number"
    what = base + (f" in {lo:g}..{hi:g}" if math.isfinite(lo) and math.isfinite(hi) else
                   f" >= {lo:g}" if math.isfinite(lo) else f" <= {hi:g}" if math.isfinite(hi) else "")

    def check(value, file, key):
        if (isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
                or not math.isfinite(value) or not lo <= value <= hi):
            raise _wrong(file, key, what, value)
        return value
    return check


def kind(type_: type, what: str):
    """A JSON value of one Python type (str, bool)."""
    def check(value, file, key):
        if not isinstance(value, type_):
            raise _wrong(file, key, what, value)
        return value
    return check


text, boolean = kind(str, "a string"), kind(bool, "true or false")
share, count = number(0, 1), number(0, integer=True)


def plain_name(value, file, key):
    """A string that is one plain file or folder name: it names a file the report reads or writes."""
    return safe_name(text(value, file, key), f"{file}: {key}")


def nullable(spec):
    """The spec's value, or null."""
    return lambda value, file, key: None if value is None else spec(value, file, key)


class optional:
    """A key of `fields` that may be absent."""
    def __init__(self, spec):
        self.spec = spec


def fields(**specs):
    """An object with these keys (each required unless `optional`), and any others."""
    def check(value, file, key):
        if not isinstance(value, dict):
            raise _wrong(file, key, "an object", value)
        for name, spec in specs.items():
            if name in value:
                (spec.spec if isinstance(spec, optional) else spec)(value[name], file, f"{key}.{name}".lstrip("."))
            elif not isinstance(spec, optional):
                raise UserError(f"{file}: {key + ': ' if key else ''}missing key {name}")
        return value
    return check


def list_of(spec, size: int | None = None):
    """A list of values of the spec (of exactly `size` items if given)."""
    def check(value, file, key):
        if not isinstance(value, list) or (size is not None and len(value) != size):
            raise _wrong(file, key, "a list" if size is None else f"a list of {size}", value)
        for i, item in enumerate(value):
            spec(item, file, f"{key}[{i}]")
        return value
    return check


def dict_of(spec):
    """An object of any keys, each value of the spec."""
    def check(value, file, key):
        if not isinstance(value, dict):
            raise _wrong(file, key, "an object", value)
        for name, item in value.items():
            spec(item, file, f"{key}.{name}".lstrip("."))
        return value
    return check


# the settings a caption names (Report.settings), as run_info.json and p1/sampling.json record them
SETTING_KEYS = {name: optional(nullable(spec)) for name, spec in {
    "ckpt": text, "unet": text, "model": text, "embeds_dir": text, "sampler": text, "dtype": text,
    "steps": number(1, integer=True), "guidance": number(0), "eta": share, "seed": count}.items()}
RUN_INFO = fields(trained=optional(boolean), p1=optional(fields(**SETTING_KEYS)), p2=optional(fields(**SETTING_KEYS)),
                  p3_clip=optional(fields(val_dir=optional(text))),
                  p3_ti=optional(fields(input_json=optional(text), **SETTING_KEYS)))
P1_SAMPLING = fields(**SETTING_KEYS)
TRAIN_RECORD = fields(step=count, loss=number(), lr=number(0))  # a line of a train_log.jsonl
P1_SCORES = fields(mean=share, classifiers=optional(dict_of(text)),
                   **{d: optional(fields(n=count, accuracy=share, per_digit=dict_of(share))) for d in DATASET_NAMES})
P1_CURVE = fields(per_digit=optional(count), rows=list_of(fields(
    train_step=count, sampler=text, steps=number(1, integer=True), guidance=number(0),
    **{d: share for d in (*DATASET_NAMES, "mean")})))
P2_MSE = fields(per_image=dict_of(number(0)), mean=number(0), steps=optional(number(1, integer=True)),
                eta=optional(share), dtype=optional(text), convention=optional(text), baseline=optional(number(0)),
                passed=optional(boolean))
SERIES = list_of(number())
PER_METHOD = fields(slerp=SERIES, linear=SERIES)
ETA_SWEEP = fields(etas=list_of(share), noises=list_of(text), reference_eta=share, mad_from_eta0=list_of(SERIES),
                   mad_between_rows=list_of(SERIES), mean_from_eta0=SERIES, mean_between_rows=SERIES)
INTERPOLATION = fields(alphas=list_of(share), noise_rms=PER_METHOD, noise_rms_ends=number(0), contrast=PER_METHOD,
                       saturation=PER_METHOD)
CD_METHOD = fields(image_sim=dict_of(number()), text_sim=number(), n_images=count)
CD_COMPARISON = fields(prompt=text, concepts=list_of(text, 2), methods=dict_of(CD_METHOD), text_prompt=optional(text))
CLIP_CASE = fields(file=plain_name, true_label=text, pred_label=text, probability=share, true_probability=share)
CLIP_RESULTS = fields(accuracy=share, top5_accuracy=share, n=count, n_classes=optional(count), model=optional(text),
                      pretrained=optional(text), templates=optional(list_of(text)),
                      per_class=dict_of(fields(class_id=optional(number(integer=True)), n=optional(count),
                                               accuracy=nullable(share))),
                      successes=list_of(CLIP_CASE), failures=list_of(CLIP_CASE),
                      prompting=optional(fields(single=fields(template=text, accuracy=share),
                                                ensemble=fields(templates=count, accuracy=share))),
                      confused_pairs=optional(list_of(fields(true_label=text, pred_label=text, count=count))))
TI_SCORES = list_of(fields(concept=plain_name, prompt=count, image_score=number(), text_score=number(),
                           baseline=list_of(number(), 2), **{"pass": boolean}))
TI_PROMPTS = dict_of(fields(prompt=optional(list_of(text))))  # the course's input.json, for the prompts' text


def read_json(path: Path, spec):
    """A JSON file's content checked against `spec`, or None if the file does not exist; a file that is not
    JSON, or not of the spec's shape, is a one-line UserError naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    return spec(data, path, "")


def read_train_log(path: Path) -> list[dict]:
    """The records of a training log (one JSON object {"step", "loss", "lr", ...} per line), sorted by
    step; a step logged twice (a resumed run that redid it) keeps its last record."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: training log not found")
    records = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {number}: not valid JSON ({e.msg})") from None
        records[TRAIN_RECORD(record, f"{path} line {number}", "")["step"]] = record
    if not records:
        raise UserError(f"{path}: no records")
    return [records[s] for s in sorted(records)]


# ------------------------------------------------------------------------------------------ figures
def plot_training(records: list[dict], png: Path, title: str) -> Path:
    """Loss (log scale, with a moving average when there are many points) and learning rate against step."""
    steps = [r["step"] for r in records]
    loss = [r["loss"] for r in records]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, height_ratios=(3, 1))
    ax_loss.plot(steps, loss, lw=0.8, alpha=0.5 if len(loss) > 50 else 1, label="loss", marker="" if len(loss) > 50 else ".")
    if len(loss) > 50:
        k = max(5, len(loss) // 50)
        smooth = [sum(loss[max(0, i - k + 1):i + 1]) / (i + 1 - max(0, i - k + 1)) for i in range(len(loss))]
        ax_loss.plot(steps, smooth, lw=1.6, label=f"moving average of {k} logged steps")
    if all(v > 0 for v in loss):
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title(title)
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    ax_lr.plot(steps, [r["lr"] for r in records], color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("training step")
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_lr.grid(alpha=0.3)
    return _save(fig, png)


def plot_accuracy(rows: list[dict], png: Path, title: str) -> Path:
    """Accuracy per data set (and their mean) against training step, one point per scored checkpoint."""
    rows = sorted(rows, key=lambda r: r["train_step"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("mnistm", "MNIST-M"), ("svhn", "SVHN"), ("mean", "mean")):
        ax.plot([r["train_step"] for r in rows], [r[key] for r in rows], marker="o", label=label,
                ls="--" if key == "mean" else "-")
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy of the sampled digits")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, png)


def _save(fig, png: Path) -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def thumbnail(src: Path, dst: Path, side: int = THUMB) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("RGB")
        if max(im.size) < side:  # small images (CIFAR's 32x32) are enlarged by whole pixels to be seen
            factor = side // max(im.size)
            im = im.resize((im.width * factor, im.height * factor), Image.NEAREST)
        im.thumbnail((side, side))
        im.save(dst)
    return dst


# ---------------------------------------------------------------------------------------- document
def num(x, digits: int = 4) -> str:
    """How every number from a JSON is printed: floats with `digits` decimals, integers as they are."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}" if math.isfinite(x) else str(x)


class Img(NamedTuple):
    """An image in a table cell."""
    path: Path
    alt: str


class Report:
    """The report as a list of blocks, rendered to markdown (`markdown`) and to PDF (utils/report_pdf.py).

    A block is a tuple: ("heading", level, text), ("text", text), ("figure", png, caption, number),
    ("table", header, rows) with cells str or Img, ("missing", what, command). Text uses **bold** and `code`.
    """

    def __init__(self, out_dir: Path, files_dir: Path, info: dict | None, cwd: Path):
        self.out, self.files, self.info, self.cwd = Path(out_dir), Path(files_dir), info or {}, cwd
        self.blocks: list[tuple] = []
        self.count = 0

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", level, text))

    def text(self, *sentences: str) -> None:
        if sentences:
            self.blocks.append(("text", " ".join(sentences)))

    def table(self, header: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", header, rows))

    def link(self, path: Path) -> str:
        """`path` relative to OUTPUTS_DIR, URL-quoted for a markdown link (report_files/ is written into a
        staging folder first, so its files are linked where they will be)."""
        path = Path(path)
        if path.is_relative_to(self.files):
            return quote(f"{FILES}/{path.relative_to(self.files).as_posix()}")
        here = os.path.abspath(Path(self.cwd, path))
        return quote(Path(os.path.relpath(here, os.path.abspath(Path(self.cwd, self.out)))).as_posix())

    def shown(self, path: Path) -> str:
        """A path as the reader types it: relative to where report.py ran."""
        path = Path(path)
        return str(path.relative_to(self.cwd) if path.is_relative_to(self.cwd) else path)

    def figures(self, items: list[tuple[Path, str]], command: str, provide: str = "") -> None:
        """Each (png, caption) that exists as a figure; one note naming the missing ones and their command."""
        for png, caption in items:
            if png.is_file():
                self.figure(png, caption)
        absent = [f"`{self.shown(png)}`" for png, _ in items if not png.is_file()]
        if absent:
            self.missing(f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} missing.{provide}", command)

    def figure(self, path: Path, caption: str) -> None:
        self.count += 1
        self.blocks.append(("figure", Path(path), caption[0].upper() + caption[1:], self.count))

    def missing(self, what: str, command: str) -> None:
        self.blocks.append(("missing", what, command))

    def settings(self, section: str, keys: tuple[str, ...], recorded: dict | None = None) -> str:
        """'checkpoint X, sampler Y, ...' from run_info.json's `section`, overridden by what the program
        `recorded` it used, or what to do to record them."""
        values = {**(self.info.get(section) or {}), **(recorded or {})}
        names = {"ckpt": "checkpoint", "unet": "UNet", "model": "model", "embeds_dir": "embeddings",
                 "sampler": "sampler", "steps": "steps", "guidance": "guidance w", "eta": "eta", "seed": "seed",
                 "dtype": "precision"}
        parts = [f"{names.get(k, k)} {v if isinstance(v, str) else num(v, 2)}" for k in keys
                 if (v := values.get(k)) is not None]
        if not parts:
            return "settings not recorded in run_info.json"
        return ", ".join(parts)

    def cell(self, c) -> str:
        return f"![{c.alt}]({self.link(c.path)})" if isinstance(c, Img) else str(c)

    def markdown(self) -> str:
        lines = []
        for kind, *b in self.blocks:
            if kind == "heading":
                lines += ["#" * b[0] + " " + b[1], ""]
            elif kind == "text":
                lines += [b[0], ""]
            elif kind == "figure":
                path, caption, n = b
                lines += [f"![{path.stem}]({self.link(path)})", "", f"*Figure {n}. {caption}*", ""]
            elif kind == "table":
                header, rows = b
                lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
                lines += ["| " + " | ".join(self.cell(c) for c in row) + " |" for row in rows] + [""]
            elif kind == "missing":
                what, command = b
                lines += [f"> **Not available yet.** {what} To make it, run:", ">", "> ```bash",
                          *[f"> {line}" for line in command.splitlines()], "> ```", ""]
        return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------- sections
# Headings: the assignment's questions in its order, in short (the course's wording, shortened).
QUESTIONS = {
    "p1_impl": "1.1 Implementation details",
    "p1_grid": "1.2 Ten generated images of each digit, for MNIST-M and SVHN",
    "p1_reverse": "1.3 The reverse process of the first \"0\" at t = " + REVERSE_T,
    "p2_eta": "2.1 Faces of noise 00-03 with different eta in one grid: the observation",
    "p2_interp": "2.2 Interpolating noise 00 to 01: slerp against linear interpolation",
    "p3_how": "3.1 How CLIP classifies without training (zero-shot)",
    "p3_acc": "3.2 Accuracy on the validation set, 5 successes and 5 failures",
    "p3_two": "3.4 Two learned concepts in one prompt, and a multi-concept method",
}


def p1_section(r: Report, run_dir: Path | None) -> None:
    p1 = r.out / "p1"
    used = read_json(p1 / SAMPLING_JSON, P1_SAMPLING)  # what p1_ddpm_sample.py sampled with
    made = r.settings("p1", ("ckpt", "sampler", "steps", "guidance", "seed", "dtype"), used)
    sample_cmd = f"python p1_ddpm_sample.py {r.shown(p1)} --ckpt checkpoints/p1_ddpm.pt --grid --reverse-process"
    r.heading(2, "Problem 1: conditional DDPM on MNIST-M and SVHN")
    r.heading(3, QUESTIONS["p1_impl"])
    implementation(r, (used or {}).get("ckpt") or (r.info.get("p1") or {}).get("ckpt"), used)
    if run_dir is not None:
        training_section(r, run_dir)

    r.heading(3, QUESTIONS["p1_grid"])
    r.figures([(p1 / grid_png(name), (f"{label}: rows digits 0-9, columns the first 10 samples of each digit; "
                                         f"{made}.")) for name, label in DATASET_NAMES.items()], sample_cmd)
    scores = read_json(p1 / EVAL_JSON, P1_SCORES)
    if scores is None:
        r.missing(f"`{r.shown(p1 / EVAL_JSON)}` is missing. Put the course's MNIST-M classifier at "
                  "`Classifier.pth` (project root) and sample the images first.",
                  f"{sample_cmd}\npython p1_ddpm_eval.py {r.shown(p1)} --mnistm-classifier Classifier.pth "
                  "--svhn-classifier checkpoints/svhn_classifier.pt")
    else:
        datasets = [d for d in DATASET_NAMES if d in scores]
        judges = scores.get("classifiers", {})
        rows = [[DATASET_NAMES[d], f"`{judges.get(d, 'not recorded')}`", num(scores[d]["n"]),
                 num(scores[d]["accuracy"])] + [num(scores[d]["per_digit"].get(str(k))) for k in range(10)]
                for d in datasets]
        r.table(["data set", "judge", "images", "accuracy", *[f"digit {k}" for k in range(10)]], rows)
        r.text(f"Mean accuracy over the data sets: **{num(scores['mean'])}** (from `{r.shown(p1 / EVAL_JSON)}`, "
               f"written by `p1_ddpm_eval.py`; images made with {made}). The true label is the file name's first "
               "digit; MNIST-M is judged by the course's classifier, SVHN by the project's judge "
               "(`p1_svhn_classifier_train.py`).")
        for d in datasets:
            worst = min(range(10), key=lambda k: (scores[d]["per_digit"].get(str(k), 1.0), k))
            r.text(f"{DATASET_NAMES[d]}: the digit judged right least often is {worst} "
                   f"({num(scores[d]['per_digit'].get(str(worst)))}).")

    r.heading(3, QUESTIONS["p1_reverse"])
    reverse_made = r.settings("p1", ("ckpt", "guidance", "seed", "dtype"), used)
    r.figures([(p1 / reverse_process_png(name),
                (f"{label}: a \"0\" through the ancestral DDPM sampler over all T steps (whatever sampler made the "
                 f"graded images), at t = {REVERSE_T} (each column labelled with its t, scaled to the model's T); "
                 f"{reverse_made}.")) for name, label in DATASET_NAMES.items()], sample_cmd)


def implementation(r: Report, ckpt: str | None, used: dict | None) -> None:
    """The network table of a P1 checkpoint, from its own config: what was trained and how it samples."""
    if not ckpt or not Path(ckpt).is_file():
        r.missing(f"The P1 checkpoint {'`' + ckpt + '`' if ckpt else '(not recorded)'} is not there to describe.",
                  "bash run_all.sh    # records the checkpoint in run_info.json and p1/sampling.json")
        return
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from models.p1_networks import load_p1_model
    net, config = load_p1_model(ckpt)
    model, schedule, training = config["model"], config["schedule"], config.get("training") or {}
    params = sum(p.numel() for p in net.parameters())
    zero = torch.zeros(1, dtype=torch.long)
    w = (torch.zeros(1),) if model.get("guidance_embed") else ()  # a guidance-distilled network takes w too
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        net(torch.zeros(1, 3, 28, 28), zero, zero, zero, *w)
    arch = model.get("arch", "context_unet")
    shape = (f"channels {model['n_feat']} x {tuple(model['channel_mult'])}, patch {model.get('patch', 1)}"
             if "channel_mult" in model else f"n_feat {model['n_feat']}")
    rows = [["network", f"{arch} ({shape})"], ["parameters", f"{params:,}"],
            ["GFLOP per image and forward", f"{flops.get_total_flops() / 1e9:.3f}"],
            ["noise schedule", f"linear betas {schedule['beta_start']:g} to {schedule['beta_end']:g}, "
                               f"T = {schedule['num_steps']}"],
            ["condition", f"digit + data set ({', '.join(config.get('datasets', []))}) embeddings"
                          + (", in the down and the up path" if model.get("cond_down") else "")
                          + f"; dropped together with probability {config.get('p_uncond', 'n/a')} for "
                            "classifier-free guidance"]]
    distilled = config.get("distillation")
    if distilled:
        rows.append(["distillation", f"from `{distilled.get('teacher')}`: guidance w in "
                                     f"{distilled.get('w_range')} as an input"
                                     + (f", {distilled['steps']} DDIM steps" if "steps" in distilled else "")])
    if training:
        rows.append(["training batch", f"{training.get('global_batch')} ({training.get('num_processes')} process(es))"])
        if training.get("min_snr_gamma"):
            rows.append(["loss weighting", f"Min-SNR-{training['min_snr_gamma']:g}"])
    if used:
        rows.append(["sampler", f"{used.get('sampler')}, {used.get('steps')} steps, guidance w {used.get('guidance')}"])
    r.table(["", f"`{r.shown(Path(ckpt))}`"], rows)
    r.text("From the checkpoint's own config (what `p1_ddpm_sample.py` builds the network from); FLOPs counted by "
           "torch's FlopCounterMode on one 28x28 image. Training minimises the simplified DDPM objective (predicted "
           "against true noise), with an EMA of the weights for sampling; a guided step is eps = (1 + w) "
           "eps(x, t, c) - w eps(x, t, null)"
           + ("; this network was trained to give that guided eps in one forward, w being an input (guidance "
              "distillation, Meng et al. 2023)." if distilled else "."))


def training_section(r: Report, run_dir: Path) -> None:
    log = run_dir / TRAIN_LOG_JSONL
    if log.is_file():
        records = read_train_log(log)
        png = plot_training(records, r.files / "p1_training_loss.png", f"P1 training ({r.shown(run_dir)})")
        r.figure(png, f"P1 training loss (log scale) and learning rate against step, from `{r.shown(log)}` "
                      f"({len(records)} logged steps, last step {num(records[-1]['step'])}, last loss "
                      f"{num(records[-1]['loss'])}).")
    else:
        r.missing(f"`{r.shown(log)}` is missing (p1_ddpm_train.py appends one line per logged step).",
                  f"python p1_ddpm_train.py --data-root hw2_data/digits --out-dir {r.shown(run_dir)} --resume")
    acc_json = run_dir / ACCURACY_JSON
    acc = read_json(acc_json, P1_CURVE)
    if acc is None or not acc["rows"]:
        r.missing(f"`{r.shown(acc_json)}` is missing: no kept checkpoints were scored.",
                  f"python p1_ddpm_train.py ... --out-dir {r.shown(run_dir)} --keep-every 1000\n"
                  f"python benchmarks/bench_p1_quality.py --ckpt {r.shown(run_dir)}/model_*.pt "
                  f"--out {r.shown(acc_json)}")
        return
    rows = sorted(acc["rows"], key=lambda row: row["train_step"])
    png = plot_accuracy(rows, r.files / "p1_accuracy_vs_step.png", "P1 accuracy against training step")
    first = rows[0]
    r.figure(png, f"accuracy of {num(acc.get('per_digit'))} images per digit per data set, sampled from each kept "
                  f"checkpoint `model_STEP.pt` ({first['sampler']}, {num(first['steps'])} steps, guidance w "
                  f"{num(first['guidance'], 2)}), from `{r.shown(acc_json)}`.")
    r.table(["training step", "MNIST-M", "SVHN", "mean"],
            [[num(row["train_step"]), num(row["mnistm"]), num(row["svhn"]), num(row["mean"])] for row in rows])


def p2_section(r: Report) -> None:
    p2 = r.out / "p2"
    cmd = (f"python p2_ddim.py hw2_data/face/noise {r.shown(p2)} hw2_data/face/UNet.pt --gt-dir hw2_data/face/GT "
           "--eta-sweep --interpolation")
    provide = ("Put the course's `face/noise/*.pt`, `face/GT/*.png` and `face/UNet.pt` under `hw2_data/` "
               "(see hw2_data/README.md).")
    made = r.settings("p2", ("unet", "steps", "seed", "dtype"))
    r.heading(2, "Problem 2: DDIM with the course's face UNet")
    mse = read_json(p2 / MSE_JSON, P2_MSE)
    r.heading(3, "DDIM against the course's ground truth (MSE)")
    if mse is None:
        r.missing(f"`{r.shown(p2 / MSE_JSON)}` is missing. {provide}", cmd)
    else:
        convention = mse.get("convention") or "not recorded by this p2_ddim.py"
        r.table(["image", "generated", "MSE (0-255 pixels)"],
                [[f"{name}.png", Img(p2 / f"{name}.png", name), num(v, 3)] for name, v in mse["per_image"].items()])
        line = (f"Mean MSE: **{num(mse['mean'], 3)}** over {len(mse['per_image'])} images (DDIM, "
                f"{num(mse.get('steps'))} steps, eta {num(mse.get('eta'), 2)}, {mse.get('dtype', 'fp32')}; "
                f"timestep convention: {convention}; from `{r.shown(p2 / MSE_JSON)}`).")
        if isinstance(mse.get("baseline"), (int, float)):
            line += f" Baseline MSE {num(mse['baseline'], 3)}"
            line += f": **{'PASS' if mse['passed'] else 'FAIL'}**." if "passed" in mse else "."
        r.text(line)
    r.heading(3, QUESTIONS["p2_eta"])
    r.figures([(p2 / ETA_SWEEP_PNG, (f"DDIM from the noises 00-03 (columns), one row per eta from 0 "
                                      f"(deterministic, top) to 1 (bottom), each row labelled with its eta; {made}."))],
              cmd, f" {provide}")
    sweep = read_json(p2 / ETA_SWEEP_JSON, ETA_SWEEP)
    if sweep is not None:
        r.text(*observations.eta_sentences(sweep), f"(Measured by p2_ddim.py: `{r.shown(p2 / ETA_SWEEP_JSON)}`.)")
    r.heading(3, QUESTIONS["p2_interp"])
    r.figures([(p2 / INTERPOLATION_PNG, ("DDIM (eta 0) from noises interpolated between 00 (alpha 0) and 01 "
                                          "(alpha 1), each column labelled with its alpha: spherical (slerp, top row) "
                                          f"against linear (lerp, bottom row); {made}."))], cmd, f" {provide}")
    interp = read_json(p2 / INTERPOLATION_JSON, INTERPOLATION)
    if interp is not None:
        if (p2 / INTERPOLATION_STATS_PNG).is_file():
            r.figure(p2 / INTERPOLATION_STATS_PNG, "the interpolated noise's RMS and the faces' contrast and "
                                                   "saturation against alpha, slerp and linear, as measured by "
                                                   "p2_ddim.py.")
        r.text(*observations.interpolation_sentences(interp),
               f"(Measured by p2_ddim.py: `{r.shown(p2 / INTERPOLATION_JSON)}`.)")


def p3_clip_section(r: Report) -> None:
    folder = r.out / "p3_clip"
    info = r.info.get("p3_clip") or {}
    val_dir = Path(info.get("val_dir", "hw2_data/clip_zeroshot/val"))
    r.heading(2, "Problem 3: CLIP zero-shot classification")
    results = read_json(folder / RESULTS_JSON, CLIP_RESULTS)
    r.heading(3, QUESTIONS["p3_how"])
    templates = (results or {}).get("templates") or ["A photo of {object}."]
    r.text("CLIP trains an image encoder and a text encoder together so that an image and its caption have a high "
           "cosine similarity and mismatched pairs a low one (a contrastive loss over a batch of pairs). To classify "
           "without training, each class name is put into a prompt "
           f"({', '.join(f'`{t}`' for t in templates)}), the prompts are encoded once, and an image is given the "
           "class whose prompt embedding is most similar to its own embedding; a softmax over the similarities "
           "(times CLIP's learned temperature) gives the probabilities shown below.")
    r.heading(3, QUESTIONS["p3_acc"])
    if results is None:
        r.missing(f"`{r.shown(folder / RESULTS_JSON)}` is missing. Put the validation images in "
                  "`hw2_data/clip_zeroshot/val/`, `id2label.json` beside them and the ViT-B-32 weights where "
                  "docs/p3_clip.md says.",
                  f"python p3_clip_zeroshot.py hw2_data/clip_zeroshot/val hw2_data/clip_zeroshot/id2label.json "
                  f"{r.shown(folder)} --model ViT-B-32 --pretrained openai")
        return
    r.text(f"Accuracy **{num(results['accuracy'])}**, top-5 accuracy **{num(results['top5_accuracy'])}** on "
           f"{num(results['n'])} images of {num(results.get('n_classes'))} classes (model "
           f"`{results.get('model', '?')}`, weights `{results.get('pretrained', '?')}`, "
           f"{len(templates)} prompt template(s); from `{r.shown(folder / RESULTS_JSON)}`).",
           *observations.clip_sentences(results))
    scored = [(c["accuracy"], name, c) for name, c in results["per_class"].items() if c.get("accuracy") is not None]
    worst = sorted(scored, key=lambda item: (item[0], item[1]))[:5]
    r.text("The 5 classes with the lowest accuracy:")
    r.table(["class", "id", "images", "accuracy"],
            [[name, num(c.get("class_id")), num(c.get("n")), num(acc)] for acc, name, c in worst])
    for title, cases in (("Successes", results["successes"]), ("Failures", results["failures"])):
        r.text(f"{title} (chosen at random):")
        rows = []
        for c in cases:
            src = val_dir / c["file"]
            image = f"`{r.shown(src)}` (not found)"
            if src.is_file():
                image = Img(thumbnail(src, r.files / "clip_cases" / c["file"]), c["file"])
            rows.append([image, c["file"], c["true_label"], c["pred_label"], num(c["probability"]),
                         num(c["true_probability"])])
        r.table(["image", "file", "true label", "predicted", "p(predicted)", "p(true)"], rows)
    if (folder / CASES_PNG).is_file():
        r.figure(folder / CASES_PNG, "the same successes and failures as drawn by p3_clip_zeroshot.py.")


def p3_ti_section(r: Report, ti_run_dir: Path | None) -> None:
    info = r.info.get("p3_ti") or {}
    scores_json, images = r.out / TI_SCORES_JSON, r.out / "p3_ti"
    made = r.settings("p3_ti", ("model", "embeds_dir", "sampler", "steps", "guidance", "seed"))
    r.heading(2, "Problem 3: textual inversion on Stable Diffusion v1")
    r.heading(3, "3.3 The learned concepts against the course's CLIP baselines")
    scores = read_json(scores_json, TI_SCORES)
    if scores is None:
        r.missing(f"`{r.shown(scores_json)}` is missing. Put `sd-v1-4.ckpt`, `clip-vit-base-patch32/` and "
                  "`textual_inversion/` under `hw2_data/` (see docs/p3_textual_inversion.md), learn the tokens, "
                  "generate and score.",
                  "bash run_all.sh    # trains <new1>..<new3> if needed, generates, scores\n"
                  f"python p3_textual_inversion.py evaluate hw2_data/textual_inversion/input.json {r.shown(images)} "
                  "--concept-root hw2_data/textual_inversion --clip hw2_data/clip-vit-base-patch32 "
                  f"--json {r.shown(scores_json)}")
    else:
        prompts = _ti_prompts(Path(info.get("input_json", "hw2_data/textual_inversion/input.json")))
        rows = []
        for s in scores:
            cid, i = str(s["concept"]), s["prompt"]
            first = images / cid / str(i) / "0.png"
            shown = Img(thumbnail(first, r.files / "ti" / f"{cid}_{i}.png", 128), f"{cid}/{i}") \
                if first.is_file() else "not found"
            rows.append([cid, num(i), f"`{prompts[cid, i]}`" if (cid, i) in prompts else "?", shown,
                         num(s["image_score"], 2), num(s["text_score"], 2),
                         f"{num(s['baseline'][0], 2)} / {num(s['baseline'][1], 2)}", "PASS" if s["pass"] else "FAIL"])
        r.table(["concept", "prompt", "text", "first image", "image score", "text score",
                 "baseline (image / text)", "result"], rows)
        r.text(f"{sum(s['pass'] for s in scores)} of {len(scores)} prompts pass their baseline (the course's CLIP "
               f"scores, from `{r.shown(scores_json)}`; images made with {made}).")
    if ti_run_dir is not None:
        for log in sorted(Path(ti_run_dir).glob(f"*/{TRAIN_LOG_JSONL}")):
            token = log.parent.name
            png = plot_training(read_train_log(log), r.files / f"ti_training_{token}.png",
                                f"textual inversion <{token}>")  # a title, not markdown
            r.figure(png, f"textual-inversion training of `<{token}>`: loss and learning rate against step, from "
                          f"`{r.shown(log)}`.")
    r.heading(3, QUESTIONS["p3_two"])
    multi = r.out / MULTI_CONCEPT_PNG
    r.figures([(multi, ("two learned concepts in one prompt, both orders (`a <new1> next to a <new3>` and the "
                       f"reverse), textual inversion; {made}."))],
              f"python p3_textual_inversion.py figure hw2_data/sd-v1-4.ckpt {r.shown(multi)} --tokens '<new1>' '<new3>'",
              " It needs the SD model and the learned embeddings.")
    r.text("The multi-concept method surveyed: Custom Diffusion (Kumari et al. 2023) fine-tunes only the key and value "
           "projections of the UNet's cross-attention (about 3% of its weights) together with a new token per "
           "concept, with regularisation images of each concept's class against language drift; two concepts are "
           "learnt jointly, or separately and then merged in closed form (the merged projection reproduces each "
           "concept's keys and values for its own captions). Below, textual inversion against both variants on the "
           "same prompt.")
    comparison = r.out / CD_COMPARISON_PNG
    r.figures([(comparison, "the same two-concept prompt by textual inversion, Custom Diffusion trained jointly and "
                            "Custom Diffusion merged (p3_custom_diffusion.py figure).")],
              f"python p3_custom_diffusion.py figure hw2_data/sd-v1-4.ckpt {r.shown(comparison)} --tokens '<new1>' "
              "'<new3>' ...    # see docs/p3_custom_diffusion.md", " It needs the SD model and the trained concepts.")
    data = read_json(r.out / CD_COMPARISON_JSON, CD_COMPARISON)
    if data is not None:
        r.text(*observations.two_concept_sentences(data),
               f"(The Custom Diffusion paper's measures, with the course's CLIP scorer: image similarity to each "
               f"concept's photos and text similarity to \"{data.get('text_prompt') or data['prompt']}\", the "
               f"prompt with each token replaced by its class word; from `{r.shown(r.out / CD_COMPARISON_JSON)}`.)")


def _ti_prompts(input_json: Path) -> dict:
    """(concept id, prompt index) -> prompt text, from the course's input.json when it is there."""
    data = read_json(input_json, TI_PROMPTS)
    if data is None:
        return {}
    return {(cid, i): p for cid, entry in data.items() for i, p in enumerate(entry.get("prompt", []))}


def p3_cd_section(r: Report) -> None:
    r.heading(2, "Problem 3: Custom Diffusion")
    folders = sorted(p for p in r.out.glob("p3_cd*") if p.name not in (CD_COMPARISON_PNG, CD_COMPARISON_JSON))
    if not folders:
        r.missing(f"No `{r.shown(r.out / 'p3_cd*')}` output yet.",
                  "python p3_custom_diffusion.py --help    # see its docs for the commands")
        return
    for folder in folders:
        files = sorted(folder.rglob("*")) if folder.is_dir() else [folder]
        jsons = [f for f in files if f.suffix == ".json"]
        if jsons:
            r.text("Results and settings written by p3_custom_diffusion.py: "
                   + ", ".join(f"[`{r.shown(f)}`]({r.link(f)})" for f in jsons) + ".")
        for png in (f for f in files if f.suffix == ".png"):
            r.figure(png, f"`{r.shown(png)}`, written by p3_custom_diffusion.py (settings in the JSON above).")


def build(out_dir: Path, files_dir: Path, run_dir: Path | None = None, ti_run_dir: Path | None = None,
          cwd: Path | None = None) -> Report:
    """The report of OUTPUTS_DIR; curves and thumbnails are written to `files_dir`."""
    info_path = out_dir / RUN_INFO_JSON
    info = read_json(info_path, RUN_INFO)
    r = Report(out_dir, files_dir, info, cwd or Path.cwd())
    r.heading(1, "DLCV HW2 report")
    r.text(f"Assembled by `report.py` from the outputs in `{r.shown(out_dir)}`: every number below is read from "
           "the JSON file named beside it, every figure is a file the programs wrote, and every observation is a "
           "sentence made from those numbers (edit from there). "
           + (f"Sampling settings from `{r.shown(info_path)}` (written by run_all.sh"
              + (", with --train: the models were trained in this run)" if info and info.get("trained") else ")")
              + f", and for P1 from `p1/{SAMPLING_JSON}` (written by p1_ddpm_sample.py)."
              if info else f"`{r.shown(info_path)}` is missing, so captions give only what the outputs' JSON "
                           "records (bash run_all.sh writes it)."))
    p1_section(r, run_dir)
    p2_section(r)
    p3_clip_section(r)
    p3_ti_section(r, ti_run_dir)
    p3_cd_section(r)
    return r


# ------------------------------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir", type=Path, help="the outputs folder run_all.sh writes (p1/, p2/, p3_clip/, ...)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="P1 training run folder: plot its train_log.jsonl and accuracy.json (kept checkpoints "
                        "scored by benchmarks/bench_p1_quality.py)")
    p.add_argument("--ti-run-dir", type=Path, default=None,
                   help="textual-inversion run folder: plot every TOKEN/train_log.jsonl in it (absent: no curves)")
    return p.parse_args(argv)


@cli("report.py")
def main(argv=None):
    args = parse_args(argv)
    if not args.out_dir.is_dir():
        raise UserError(f"{args.out_dir}: outputs folder not found (bash run_all.sh writes outputs/)")
    check_writable_dir(args.out_dir)
    if args.run_dir is not None and not args.run_dir.is_dir():
        raise UserError(f"--run-dir {args.run_dir}: folder not found")
    report, pdf = args.out_dir / REPORT_MD, args.out_dir / REPORT_PDF
    with staged_dir(args.out_dir / FILES) as files:
        r = build(args.out_dir, files, run_dir=args.run_dir, ti_run_dir=args.ti_run_dir)
        with staged_file(pdf) as tmp:  # drawn while the staged report_files/ it embeds still exist
            write_pdf(r.blocks, tmp, "DLCV HW2 report", r.cell)
    with staged_file(report) as tmp:
        tmp.write_text(r.markdown(), encoding="utf-8")
    print(f"report: {report} and {pdf}")
    return report


if __name__ == "__main__":
    main()
