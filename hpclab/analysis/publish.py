"""Refresh the generated parts of a results document (``docs/results.md``) from results folders.

The prose and the published anchors are written by hand; every number and figure is quoted from
a file the suite generated, between markers that name it::

    <!-- generated: table ae_latent/summary.md -->
    ... replaced by the table of results/ae_latent/summary.md ...
    <!-- end generated -->

Kinds: ``table FILE`` (the Markdown tables and notes of FILE, without its title), ``runs GROUP``
(how the runs of a results group were made: commands' machine, wall time, commits, versions)
and ``figure FILE DEST [WIDTH]`` (FILE copied to DEST, next to the document, and shown: at most
WIDTH pixels wide, default 900, in at most 256 colours so documents stay small). FILE and GROUP
are relative to the results folder. A block whose source does not exist yet is left as it is
and reported, so the document can be refreshed study by study as runs finish.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hpclab.analysis.report import run_records
from hpclab.errors import ConfigError
from hpclab.rundir import CONFIG, ENVIRONMENT, SUMMARY, is_run_folder_name, summary_problem
from hpclab.utils import atomic_path, atomic_write_text

BLOCK = re.compile(
    r"(?P<open><!-- generated: (?P<spec>[^>]+?) -->\n)(?P<body>.*?)(?P<close><!-- end generated -->)", re.S
)


MAX_WIDTH = 900  # pixels of a figure copied into the document's folder


class SourceNotReady(FileNotFoundError):
    """A block's source has not been generated yet."""


def _table(path: Path) -> str:
    if not path.is_file():
        raise SourceNotReady(str(path))
    lines = path.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    return "\n".join(lines[start:]).strip() + "\n"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _runs(group: Path) -> str:
    summaries = dict(run_records(group, SUMMARY))
    done = {run: s for run, s in summaries.items() if summary_problem(s) is None and s.get("status") == "completed"}
    if not done:
        raise SourceNotReady(str(group))
    envs = dict(run_records(group, ENVIRONMENT))
    hosts, commits, versions, cpus = set(), set(), set(), set()
    for run in done:
        env = _mapping(envs.get(run))  # an untrusted record: wrong shapes read as absent
        hosts.add(str(env.get("hostname") or "?"))
        commits.add(str(env.get("git_commit") or "?")[:10])
        versions.add(f"torch {_mapping(env.get('packages')).get('torch')}, Python {env.get('python')}")
        cpu = _mapping(env.get("cpu"))
        cpus.add(f"{cpu.get('model')}, {cpu.get('usable')} usable core(s)" if cpu else "not recorded")
        if isinstance(env.get("cuda_devices"), list) and env["cuda_devices"]:
            cpus.add("GPU " + ", ".join(map(str, env["cuda_devices"])))
    wall = sum(float(s.get("wall_time_s") or 0) for s in done.values())
    total = sum(1 for p in group.iterdir() if p.is_dir() and is_run_folder_name(p.name))
    return (
        f"- runs: {len(done)} finished of {total}; training and analyses took {wall / 3600:.2f} h in all "
        f"({wall / len(done) / 60:.1f} min per run on average)\n"
        f"- machine: host {', '.join(sorted(hosts))}; CPU {'; '.join(sorted(cpus))}\n"
        f"- software: {'; '.join(sorted(versions))}; commit {', '.join(sorted(commits))}\n"
    )


def _figure(source: Path, dest: Path, doc: Path, width: int = MAX_WIDTH) -> str:
    if not source.is_file():
        raise SourceNotReady(str(source))
    from PIL import Image

    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image = image.convert("RGB")  # plots are drawn on white: no transparency to keep
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        # an adaptive palette: a third of the bytes of a full-colour PNG, no visible change on plots
        image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        with atomic_path(dest) as tmp:
            image.save(tmp, format="PNG", optimize=True)
    return f"![{dest.stem}]({dest.relative_to(doc.parent).as_posix()})\n"


def render(spec: str, results: Path, doc: Path) -> str:
    """The generated text of one block."""
    kind, _, rest = spec.strip().partition(" ")
    args = rest.split()
    if kind == "table" and len(args) == 1:
        return _table(results / args[0])
    if kind == "runs" and len(args) == 1:
        return _runs(results / args[0])
    if kind == "figure" and len(args) in (2, 3) and (len(args) == 2 or args[2].isdigit()):
        return _figure(results / args[0], doc.parent / args[1], doc, *(int(a) for a in args[2:]))
    raise ConfigError(f"{doc}: unknown generated block '{spec}' (table FILE | runs GROUP | figure FILE DEST [WIDTH])")


def sources(spec: str, results: Path) -> list[Path]:
    """The files under ``results`` a block is generated from, for curated copies: a table's
    file; a run record's summary.json, environment.json and config.yaml of every run (figures
    are copied next to the document already)."""
    kind, _, rest = spec.strip().partition(" ")
    args = rest.split()
    if kind == "table" and args:
        return [results / args[0]]
    if kind == "runs" and args:
        group = results / args[0]
        return [
            path
            for name in (SUMMARY, ENVIRONMENT, CONFIG)
            for path in sorted(group.glob(f"*/{name}"))
            if is_run_folder_name(path.parent.name)
        ]
    return []


def curate(spec: str, results: Path, into: Path) -> list[Path]:
    """Copy a block's sources (:func:`sources`) into ``into`` at the same relative paths."""
    copied = []
    for source in sources(spec, results):
        target = into / source.relative_to(results)
        atomic_write_text(target, source.read_text())
        copied.append(target)
    return copied


def block_group(spec: str) -> str:
    """The results group a block quotes (the first component of its source)."""
    parts = spec.split()
    return parts[1].split("/", 1)[0] if len(parts) > 1 else ""


def publish(
    doc: Path | str, results: Path | str, only: set[str] | None = None, curate_into: Path | str | None = None
) -> tuple[int, list[str]]:
    """Refresh every block of ``doc`` whose source exists (with ``only``: of those groups, so one
    study's section is refreshed without touching the others), and with ``curate_into`` keep a
    copy of each refreshed block's sources there (the curated summaries a clone carries);
    (blocks refreshed, sources missing)."""
    doc, results = Path(doc), Path(results)
    missing: list[str] = []
    refreshed = 0

    def replace(match: re.Match) -> str:
        nonlocal refreshed
        if only is not None and block_group(match["spec"]) not in only:
            return match.group(0)
        try:
            body = render(match["spec"], results, doc)
        except SourceNotReady as exc:
            missing.append(str(exc))
            return match.group(0)
        refreshed += 1
        if curate_into is not None and Path(curate_into).resolve() != results.resolve():
            curate(match["spec"], results, Path(curate_into))
        return match["open"] + body + match["close"]

    text = BLOCK.sub(replace, doc.read_text())
    atomic_write_text(doc, text)
    return refreshed, missing
