"""p3_custom_diffusion.py's outputs never land on its inputs: `merge --out-dir` and `generate OUT_DIR` are
replaced whole, so one that is, holds or lies in a weights folder (a trained run) is refused before anything
is read or written; and a concept id of input.json names one folder of OUT_DIR."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

import p3_custom_diffusion as cd


@pytest.fixture
def run_a(tmp_path):
    """What `train` leaves in a folder: weights, embeddings, config, resume state and log (here stand-ins)."""
    folder = tmp_path / "runs" / "a"
    folder.mkdir(parents=True)
    for name, content in (("last.pt", "resume state"), ("train_log.jsonl", '{"step": 1}\n'),
                          ("pytorch_custom_diffusion_weights.safetensors", "weights"), ("new1.safetensors", "row"),
                          ("config.json", json.dumps({"tokens": ["<new1>"], "class_words": ["dog"]}))):
        (folder / name).write_text(content)
    (tmp_path / "model").mkdir()
    return folder


def contents(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("out, relation", [("runs/a", "is"), ("runs", "contains"), ("runs/a/merged", "lies inside"),
                                           ("runs/a/../a", "is")])
def test_merge_out_dir_apart_from_the_runs_it_merges(run_a, tmp_path, out, relation, cli_error):
    before = contents(tmp_path / "runs")
    with cli_error(f"--out-dir .* {relation} the weights folder 0 .*a: it would be overwritten"):
        cd.main(["merge", str(run_a), str(tmp_path / "model"), "--out-dir", str(tmp_path / out)])
    assert contents(tmp_path / "runs") == before


def test_generate_out_dir_apart_from_the_weights(run_a, tmp_path, cli_error):
    (tmp_path / "input.json").write_text(json.dumps({"0": {"token_name": "<new1>", "prompt": ["a <new1> dog"]}}))
    before = contents(tmp_path / "runs")
    for out, relation in ((run_a, "is"), (tmp_path / "runs", "contains")):
        with cli_error(f"OUT_DIR .* {relation} the --weights .*a: it would be overwritten"):
            cd.main(["generate", str(tmp_path / "input.json"), str(out), str(tmp_path / "model"),
                     "--weights", str(run_a)])
    assert contents(tmp_path / "runs") == before


@pytest.mark.parametrize("cid", ["../../escaped", "{tmp}/escaped", "a/b"])
def test_generate_concept_id_names_one_folder(run_a, tmp_path, cid, cli_error):
    cid = cid.format(tmp=tmp_path)
    (tmp_path / "input.json").write_text(json.dumps({cid: {"token_name": "<new1>", "prompt": ["a <new1> dog"]}}))
    with cli_error(r"input.json: concept id .*: not a plain file or folder name"):
        cd.main(["generate", str(tmp_path / "input.json"), str(tmp_path / "x" / "y" / "out"), str(tmp_path / "model"),
                 "--weights", str(run_a)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.json", "model", "runs"]


def test_merge_does_not_replace_a_trained_run(run_a, tmp_path, cli_error):
    """--out-dir is replaced whole: a folder holding more than an earlier merge's files is refused."""
    other = tmp_path / "runs" / "b"
    other.mkdir()
    (other / "last.pt").write_text("another run's resume state")
    with cli_error(r"--out-dir .*b: holds last.pt, which this program does not write"):
        cd.main(["merge", str(run_a), str(tmp_path / "model"), "--out-dir", str(other)])
    assert (other / "last.pt").read_text() == "another run's resume state"


def test_generate_does_not_replace_a_folder_of_other_files(run_a, tmp_path, cli_error):
    (tmp_path / "input.json").write_text(json.dumps({"0": {"token_name": "<new1>", "prompt": ["a <new1> dog"]}}))
    (tmp_path / "out" / "0" / "0").mkdir(parents=True)
    (tmp_path / "out" / "0" / "0" / "0.png").write_text("an earlier image: may go")
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    with cli_error(r"OUT_DIR .*out: holds notes.txt, which this program does not write"):
        cd.main(["generate", str(tmp_path / "input.json"), str(tmp_path / "out"), str(tmp_path / "model"),
                 "--weights", str(run_a)])
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"
