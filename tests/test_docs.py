"""Every shell command the docs show is run here: the fenced ```bash blocks of README.md and docs/**/*.md.

tests/doc_commands.py lists each documented command once, with what it needs to run on this CPU in a
few seconds (flags appended to make it tiny, commands run before it) or, for the few that need the
course's real weights, a GPU or hours, why and the tiny command run instead. A command added to the
docs, changed or removed fails `test_every_documented_command_is_listed` until the list says how to run
it, so the docs cannot drift from the code. Each runs with bash in a copy of the project whose
hw2_data/ holds small stand-ins (tests/standins.py).
"""
import contextlib
import io
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from doc_commands import COMMANDS, HEAVY, PLACEHOLDERS, Covered, Instead
from standins import make_sandbox

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def strip_comment(line: str) -> str:
    """`line` without a trailing shell comment (a # outside quotes, at the start or after white space)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def documented_commands(paths=DOCS) -> dict[str, list[str]]:
    """{command: ['file:line', ...]} of every command in a ```bash block; `\\` continues a line and
    white space is folded, so the same command written twice is one entry."""
    found: dict[str, list[str]] = {}
    for path in paths:
        inside, pending, start = False, "", 0
        for number, line in enumerate(path.read_text().splitlines(), 1):
            fence = line.strip()
            if fence.startswith("```"):
                inside = not inside and fence[3:].strip() in ("bash", "sh", "shell", "console")
                continue
            if not inside:
                continue
            if not pending:
                start = number
            code = strip_comment(line)
            if code.endswith("\\"):
                pending += code[:-1] + " "
                continue
            command = " ".join((pending + code).split())
            pending = ""
            if command:
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.setdefault(command, []).append(f"{where}:{start}")
    return found


def test_the_reader_finds_commands_as_a_user_would_copy_them(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text("text\n```bash\n# a comment\npython a.py --x 1   # explained\npython b.py \\\n"
                   "    --y '#not a comment'\n\n```\n```text\npython not_a_command.py\n```\n"
                   "```bash\npython a.py --x 1\n```\n")
    assert documented_commands([doc]) == {"python a.py --x 1": [f"{doc}:4", f"{doc}:13"],
                                          "python b.py --y '#not a comment'": [f"{doc}:5"]}


def test_every_documented_command_is_listed():
    documented = documented_commands()
    unlisted = {c: where for c, where in documented.items() if c not in COMMANDS}
    stale = [c for c in COMMANDS if c not in documented]
    assert not unlisted, "documented but not in tests/doc_commands.py:\n" + "\n".join(
        f"  {c!r}  ({', '.join(w)})" for c, w in unlisted.items())
    assert not stale, "in tests/doc_commands.py but in no doc any more:\n" + "\n".join(f"  {c!r}" for c in stale)


@pytest.fixture(scope="session")
def sandbox_template(shared, tmp_path_factory):
    return make_sandbox(shared, tmp_path_factory.mktemp("docs") / "project")


def fill(command: str) -> str:
    """The documented command with its placeholders (OUT_DIR, NOISE_DIR, ...) made concrete."""
    return re.sub(r"\b[A-Z][A-Z0-9_]*[A-Z0-9]\b", lambda m: PLACEHOLDERS.get(m.group(), m.group()), command)


SCRIPT = re.compile(r"(?:\.venv/bin/)?python (?:-m (?P<module>[\w.]+)|(?P<script>[\w/]+\.py))(?P<args>.*)")


def run(command: str, cwd: Path, env: dict, monkeypatch) -> tuple[int, str]:
    """Exit status and output of `command` run with bash in `cwd`, `env` set on top of our environment. A
    plain `python SCRIPT ...` runs in this process (runpy, as `python` would run it: its own __file__,
    sys.argv, the working folder and environment set), which spares a second import of torch and diffusers;
    anything else runs in a subprocess."""
    m = SCRIPT.fullmatch(command)
    if m is None or re.search(r"[*?|;&$<>`()]", command):
        done = subprocess.run(["bash", "-c", command], cwd=cwd, env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=400)
        return done.returncode, done.stdout + done.stderr
    out = io.StringIO()
    with monkeypatch.context() as mp:
        mp.chdir(cwd)
        for key, value in env.items():
            mp.setenv(key, value)
        argv = shlex.split(m["args"])
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                if m["module"]:
                    mp.setattr(sys, "argv", [m["module"], *argv])
                    runpy.run_module(m["module"], run_name="__main__", alter_sys=True)
                else:
                    mp.setattr(sys, "argv", [m["script"], *argv])
                    runpy.run_path(str(cwd / m["script"]), run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue()


def readable_id(command: str) -> str:
    """A readable test id: the command's words, quotes and globs dropped (pytest shows plain strings only)."""
    return re.sub(r"[^\w./=-]+", " ", command).strip()


@pytest.mark.parametrize("documented", [pytest.param(c, marks=[pytest.mark.heavy] if c in HEAVY else [], id=readable_id(c))
                                        for c in sorted(COMMANDS)])
def test_documented_command(documented, sandbox_template, tmp_path, monkeypatch):
    how = COMMANDS[documented]
    if isinstance(how, Covered):  # run by another test: that test must exist
        path, name = how.by.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), f"{how.by} not found"
        return
    project = tmp_path / "project"
    subprocess.run(["cp", "-al", str(sandbox_template), str(project)], check=True)  # hard links: a cheap copy
    env = {"PATH": f"{project / '.venv' / 'bin'}:{os.environ['PATH']}", "HW2_SKIP_SETUP": "1",  # on top of ours
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", **how.env}
    for before in how.before:
        code, output = run(before, project, env, monkeypatch)
        assert code == 0, f"{before}\nexit {code}\n{output[-5000:]}"
    command = how.command if isinstance(how, Instead) else f"{fill(documented)} {how.append}".strip()
    code, output = run(command, project, env, monkeypatch)
    assert code == 0, f"{command}\nexit {code}\n{output[-5000:]}"
    assert "skipped, missing" not in output or how.may_skip, f"{command}: a stand-in is missing\n{output[-3000:]}"
    for path in how.creates:
        assert (project / path).exists(), f"{command}: did not write {path}\n{output[-3000:]}"
    for text in how.prints:
        assert text in output, f"{command}: {text!r} not in its output\n{output[-3000:]}"
    shutil.rmtree(project, ignore_errors=True)
