"""The docs stay true: every ``python jobs/...`` line of a fenced ``bash`` block in README.md and
docs/ (drafts included) parses and composes through its entry point, in this process; every link
between the docs reaches an existing file and heading; README.md stays short.

How each command is checked, without data or finished runs:

* ``launch.py``: run as a dry run (``dry_run=true`` appended; ``show``, ``status`` and ``--help``
  as they are), with HPCLAB_DATA/HPCLAB_RESULTS/HPCLAB_CACHE in a temporary folder and SLURM's
  commands off PATH, so nothing is staged, submitted or asked of a controller.
* ``prepare_data.py``: its arguments composed as it composes them, every weight name known.
* ``analyze.py``: the analysis exists and takes the arguments given.
* argparse scripts (``report.py``, ``activations.py``, ``compare_runs.py``, ``make_phantoms.py``):
  their arguments parsed by their own parser, nothing run.

A line meant to fail says so: ``error`` in its comment (exit 2 expected), or a next line
``# error: ...`` (exit 2 and exactly that line on stderr). Shell variables set in the same block
(``VAR="..."``, ``export VAR=...``) are expanded and continuation lines joined; a line needing
anything else (``<placeholders>``, ``...``, an unset ``$VAR``), or a block after
``<!-- docs test: skip: REASON -->``, is skipped with its reason (``pytest -ra`` lists them).
"""

from __future__ import annotations

import argparse
import inspect
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO, path_without, run_main

if not (REPO / "docs").is_dir():  # the container image carries the code, tests and README.md only
    pytest.skip("no docs/ in this copy of the project (the container image has none)", allow_module_level=True)

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docs" / "drafts").glob("*.md"))]
SKIP_MARK = re.compile(r"<!--\s*docs test: skip:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>|(?<![.\w])\.\.\.(?![.\w])")
ARGPARSE_SCRIPTS = {"report.py", "activations.py", "compare_runs.py", "make_phantoms.py"}


@dataclass
class Command:
    """One ``python jobs/<script> ...`` line of a doc, ready to check."""

    where: str  # "docs/slurm.md:12"
    text: str  # the line as written (continuations joined)
    script: str = ""
    args: list[str] = field(default_factory=list)
    error_line: str | None = None  # the '# error: ...' line that must be printed
    expect_error: bool = False
    skip: str | None = None  # why it cannot be checked here


def bash_blocks(text: str) -> list[tuple[int, list[str], str | None]]:
    """(first line number, lines, skip reason) of each fenced bash block, fences at any indent."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, language, start = opening.group(1), opening.group(2), i + 1
        i = start
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if language == "bash":
            mark = SKIP_MARK.search(lines[start - 2]) if start >= 2 else None
            body = [line[len(indent) :] if line.startswith(indent) else line for line in lines[start:i]]
            blocks.append((start + 1, body, mark.group(1) if mark else None))
        i += 1
    return blocks


def logical_lines(body: list[str]) -> list[tuple[int, str]]:
    """(offset, line) with backslash continuations and open quotes joined across lines."""
    out, i = [], 0
    while i < len(body):
        offset, line = i, body[i]
        while i + 1 < len(body) and (line.rstrip().endswith("\\") or _open_quote(line)):
            line = (line.rstrip()[:-1] if line.rstrip().endswith("\\") else line + " ") + body[i + 1].strip()
            i += 1
        out.append((offset, line))
        i += 1
    return out


def _open_quote(line: str) -> bool:
    try:
        shlex.split(line, comments=True)
    except ValueError:
        return True
    return False


def _words(line: str) -> list[str]:
    """Shell words of a line, its comment dropped (``[]`` if its quotes never close)."""
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        return []


def _assignments(words: list[str]) -> dict[str, str] | None:
    """The variables a line sets when it only sets variables (``A=1``, ``export A=1 B=2``)."""
    words = words[1:] if words[:1] == ["export"] else words
    if not words or not all(ASSIGNMENT.match(w) for w in words):
        return None
    return dict(w.split("=", 1) for w in words)


def _comment(line: str) -> str:
    """The comment of a line: from the first ``#`` that starts a word."""
    match = re.search(r"(?:^|\s)#(.*)$", line)
    return match.group(1) if match else ""


def commands_of(path: Path, name: str | None = None) -> list[Command]:
    """Every ``python jobs/...`` command in the bash blocks of one doc."""
    name = name or str(path.relative_to(REPO))
    found = []
    for first, body, block_skip in bash_blocks(path.read_text()):
        variables: dict[str, str] = {}
        lines = logical_lines(body)
        for index, (offset, line) in enumerate(lines):
            if "jobs/" not in line:
                set_here = _assignments(_words(line)) if not line.lstrip().startswith("#") else None
                variables.update(set_here or {})
                continue
            command = Command(f"{name}:{first + offset}", line.strip(), skip=block_skip)
            following = lines[index + 1][1].strip() if index + 1 < len(lines) else ""
            if following.startswith("# error:"):
                command.error_line = following[2:]
            command.expect_error = bool(command.error_line) or re.search(r"\berror\b", _comment(line), re.I) is not None
            _parse(command, line, variables)
            if command.script:
                found.append(command)
    return found


def _parse(command: Command, line: str, variables: dict[str, str]) -> None:
    """Fill in the script and its arguments, or why the line cannot be checked."""
    code = line.split(" #")[0]
    unknown = sorted({a or b for a, b in VARIABLE.findall(code)} - set(variables))
    expanded = VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), line)
    words = _words(expanded)
    for i, word in enumerate(words[:-1]):
        if re.fullmatch(r"(\S*/)?python3?", word) and re.fullmatch(r"jobs/\w+\.py", words[i + 1]):
            rest = words[i + 2 :]
            end = next((j for j, w in enumerate(rest) if w in ("&&", ";", "|", "||")), len(rest))
            command.script, command.args = words[i + 1][len("jobs/") :], rest[:end]
            break
    else:
        return
    if command.skip:
        return
    if unknown:
        command.skip = f"needs shell variable(s) {', '.join('$' + v for v in unknown)}"
    elif PLACEHOLDER.search(code):
        command.skip = "a placeholder (<...> or ...) stands for the user's own value"


ALL_COMMANDS = [command for path in DOCS for command in commands_of(path)]


# --------------------------------------------------------------------------- checking one command

SLURM_COMMANDS = ("sinfo", "squeue", "scontrol", "sbatch", "scancel", "sacct", "srun", "salloc")


@pytest.fixture(scope="module")
def no_slurm(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PATH without SLURM's commands (no controller is asked or waited for: with a missing
    config they retry for a minute), but an ``srun`` that fails at once, since submitit's SLURM
    executor will not even be built without one on PATH."""
    folder = tmp_path_factory.mktemp("path")
    path = path_without(folder, *SLURM_COMMANDS)
    stub = folder / "bin-without" / "srun"
    stub.write_text("#!/bin/sh\necho 'srun: a stand-in of tests/test_docs.py' >&2\nexit 1\n")
    stub.chmod(0o755)
    return path


def check(command: Command, home: Path, path: str) -> tuple[int, str]:
    """Exit code and stderr of the command's check (see the module docstring)."""
    env = {
        "HPCLAB_DATA": str(home / "data"),
        "HPCLAB_RESULTS": str(home / "results"),
        "HPCLAB_CACHE": str(home / "cache"),
        "PATH": path,
    }
    args = command.args
    if command.script == "launch.py":
        as_is = args[:1] in (["show"], ["status"]) or "--help" in args
        if not as_is and not any(a.startswith("dry_run=") for a in args):
            args = [*args, "dry_run=true"]
        proc = run_main("launch.py", *args, cwd=home, env=env)
        return proc.returncode, proc.stderr
    if command.script == "prepare_data.py":
        return _composes_for_staging(args)
    if command.script == "analyze.py" and "--help" not in args:
        return _analysis_takes(args)
    if command.script in ARGPARSE_SCRIPTS:
        return _parses(command.script, args, home, env)
    if command.script == "analyze.py":
        proc = run_main(command.script, *args, cwd=home, env=env)
        return proc.returncode, proc.stderr
    return 1, f"no check for jobs/{command.script}: add one to tests/test_docs.py"


def _composes_for_staging(args: list[str]) -> tuple[int, str]:
    from hpclab.config import compose
    from hpclab.errors import ConfigError
    from hpclab.weights import WEIGHTS

    try:
        cfg = compose(args)
    except ConfigError as exc:
        return 2, f"error: {exc}"
    unknown = [w for w in cfg.weights if w not in WEIGHTS]
    return (2, f"error: unknown weights {unknown}") if unknown else (0, "")


def _analysis_takes(args: list[str]) -> tuple[int, str]:
    from omegaconf import OmegaConf

    from hpclab.analysis import ANALYSES

    if len(args) < 2 or args[1] not in ANALYSES:
        return 2, f"error: not RUN_DIR ANALYSIS [key=value ...] with a known analysis: {args}"
    pairs = args[2:]
    if any("=" not in p for p in pairs):
        return 2, f"error: arguments must be key=value: {pairs}"
    kwargs = OmegaConf.to_container(OmegaConf.from_dotlist(pairs)) if pairs else {}
    try:
        inspect.signature(ANALYSES[args[1]]).bind(None, None, **kwargs)
    except TypeError as exc:
        return 2, f"error: {args[1]}: {exc}"
    return 0, ""


def _parses(script: str, args: list[str], home: Path, env: dict) -> tuple[int, str]:
    """The script's own parser on the arguments, then exit 0 before its work (argparse exits 2
    with its usage line on a bad argument)."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *a, **k):
        original(self, *a, **k)
        raise SystemExit(0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        proc = run_main(script, *args, cwd=home, env=env)
    return proc.returncode, proc.stderr


def verdict(command: Command, code: int, stderr: str) -> str | None:
    """None when the outcome is what the doc says, else what is wrong."""
    if command.expect_error:
        first = stderr.strip().splitlines()[:1]
        if code != 2:
            return f"the doc shows an error, but it exited {code}"
        if command.error_line and first != [command.error_line]:
            return f"the doc shows {command.error_line!r}, it printed {first}"
        return None
    return None if code == 0 else f"exit {code}: {stderr.strip()[-1500:]}"


# --------------------------------------------------------------------------- the tests

OUTCOMES: dict[tuple[str, tuple[str, ...]], tuple[int, str]] = {}


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=[c.where for c in ALL_COMMANDS])
def test_each_documented_command_parses_and_composes(command, tmp_path, no_slurm):
    if command.skip:
        pytest.skip(f"{command.text[:90]}: {command.skip}")
    key = (command.script, tuple(command.args))
    if key not in OUTCOMES:  # the same command shown in several docs is checked once
        OUTCOMES[key] = check(command, tmp_path, no_slurm)
    problem = verdict(command, *OUTCOMES[key])
    assert problem is None, f"{command.where}: {command.text}\n{problem}"


def test_the_docs_show_commands_of_every_kind_checked_here():
    """The extraction finds what the docs hold: dry runs, the shown errors, status, show, the
    other entry points; few lines are skipped."""
    scripts = {c.script for c in ALL_COMMANDS}
    assert {"launch.py", "prepare_data.py", "analyze.py", "report.py", "compare_runs.py"} <= scripts, scripts
    assert any(c.error_line for c in ALL_COMMANDS) and any(c.args[:1] == ["status"] for c in ALL_COMMANDS)
    assert any("$GAN" in c.text and not c.skip for c in ALL_COMMANDS), "block variables are expanded"
    skipped = [c for c in ALL_COMMANDS if c.skip]
    assert len(skipped) <= len(ALL_COMMANDS) // 5, [(c.where, c.skip) for c in skipped]


def test_a_wrong_command_in_a_doc_fails_the_check(tmp_path, no_slurm):
    """The check can fail: a misspelt key, an error the command does not give, a wrong error
    line, an unknown analysis; and a block's variables and continuations are read as a shell would."""
    doc = tmp_path / "doc.md"
    doc.write_text("""
```bash
RUN="experiment=ae_latent
     model.latent_dim=4"
python jobs/launch.py $RUN model.hiden=3
python jobs/launch.py $RUN \\
    train.epochs=1                                   # the error it shows
python jobs/launch.py experiment=ae_latent train.lr=0.01
# error: config key 'train.lr': something else
python jobs/analyze.py results/x/default no_such_analysis
python jobs/report.py results/x --no-such-flag
python jobs/launch.py experiment=ae_latent run_name=<yours>
```
""")
    commands = commands_of(doc, "doc.md")
    assert [c.args[-1] for c in commands] == [
        "model.hiden=3",
        "train.epochs=1",
        "train.lr=0.01",
        "no_such_analysis",
        "--no-such-flag",
        "run_name=<yours>",
    ]
    assert commands[0].args[:2] == ["experiment=ae_latent", "model.latent_dim=4"]
    assert commands[-1].skip and not any(c.skip for c in commands[:-1])
    problems = [verdict(c, *check(c, tmp_path, no_slurm)) for c in commands[:-1]]
    assert all(problems), problems
    assert "model.hiden" in problems[0] and "exited 0" in problems[1] and "something else" in problems[2]


# --------------------------------------------------------------------------- links and size


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*?|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, re.M):
        anchor, n = github_anchor(heading), 1
        while anchor in anchors:
            anchor, n = f"{github_anchor(heading)}-{n}", n + 1
        anchors.add(anchor)
    return anchors


LINKED = [*DOCS, REPO / "CHANGELOG.md"]


@pytest.mark.parametrize("path", LINKED, ids=[str(p.relative_to(REPO)) for p in LINKED])
def test_every_link_between_the_docs_reaches_a_file_and_heading(path):
    text = re.sub(r"```.*?```|`[^`\n]*`", "", path.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors_of(linked):
            broken.append(f"{target}: no heading with that anchor in {linked.name}")
    assert not broken, f"{path.relative_to(REPO)}: {broken}"


def test_readme_stays_short():
    """README.md is the entry (at most 10 KB); topics live in docs/, history in CHANGELOG.md."""
    assert len((REPO / "README.md").read_bytes()) <= 10 * 1024


@pytest.mark.parametrize("path", DOCS[1:], ids=[str(p.relative_to(REPO)) for p in DOCS[1:]])
def test_docs_state_times_only_as_measured(path):
    """As for README.md (tests/test_config.py): a time in a command's comment says it was measured."""
    claims = re.findall(r"#[^\n]*\b\d[\d.,]*\s*(?:s|min|minutes?|h|hours?)\b[^\n]*", path.read_text())
    assert all("measured" in claim for claim in claims), [c for c in claims if "measured" not in c]


@pytest.mark.parametrize("path", LINKED, ids=[str(p.relative_to(REPO)) for p in LINKED])
def test_every_table_has_its_header(path):
    """A table row after a blank line starts a new table: it must be a header (its next line the
    |---| separator), or rows have come apart from their table."""
    lines = re.sub(r"```.*?```", "", path.read_text(), flags=re.S).splitlines()
    stray = [
        row[:60]
        for before, row, after in zip(lines, lines[1:], lines[2:] + [""])
        if not before.strip() and row.startswith("|") and not re.fullmatch(r"\|[-:| ]+\|", after.strip())
    ]
    assert not stray, f"{path.relative_to(REPO)}: rows without a table header: {stray}"
