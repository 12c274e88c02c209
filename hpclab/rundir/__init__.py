"""The run folder: its layout, and validated readers of the records in it.

``results/<group>/<run>/`` holds what one run wrote (docs/runs.md). Every module that
names one of its files asks this one. A run folder is untrusted input (a co-worker, a full
disk or a kill may have left anything there), so each reader checks the shape and types of
what it reads: a record that does not fit is either refused with one line that names the
file and what to do (:class:`RunRecordError`), or, in views such as reports and status,
skipped with a warning. Nothing read from a run folder is executed or interpolated.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpclab.errors import RunConflict
from hpclab.utils import read_json

log = logging.getLogger("hpclab")

CONFIG = "config.yaml"  # the resolved config the run was started with
ENVIRONMENT = "environment.json"  # commit, host, packages, threads, SLURM ids
METRICS = "metrics.jsonl"  # every logged metric, one JSON record per line
SUMMARY = "summary.json"  # final metrics, steps, wall time, analyses; written last
PROGRESS = "progress.json"  # total steps and batch per rank, written at each start (status: step/total, rate)
ATTEMPTS = "attempts.json"  # every start of the run: when, where, seconds, last step
SLURM_RECORD = "slurm.json"  # every SLURM task that worked on the run
LOCK = "run.lock"  # while a process owns the run
RUN_LOG = "run.log"
CHECKPOINTS = "checkpoints"  # step<N>.pt and best_<model>.safetensors
STEP_CHECKPOINT = re.compile(r"step(\d+)\.pt")  # a step checkpoint's name in CHECKPOINTS
FIGURES = "figures"
TENSORBOARD = "tb"
SUBMISSIONS = "submissions.json"  # per group: run name -> SLURM job of the launcher's submissions
SUBMITIT = ".submitit"  # per group: submitit's pickles and task logs (unless cluster.folder says elsewhere)

# One plain path component: what a group or run may be called (no separators, no hidden or
# relative names, nothing the report treats as a moved-aside folder).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_+=,@-][A-Za-z0-9._+=,@-]*")
MOVED_ASIDE = ".old-"  # <run>.old-<time>: results moved aside by force=true


class RunRecordError(RunConflict):
    """A record in a run folder is damaged; the message names the file and what to do."""


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name a group or run folder (None when it can)."""
    if not isinstance(name, str) or not name:
        return "is empty"
    if len(name) > 200:
        return "is longer than 200 characters"
    if MOVED_ASIDE in name:
        return f"must be one plain folder name without '{MOVED_ASIDE}', which marks results moved aside by force=true"
    if not NAME_PATTERN.fullmatch(name):
        return (
            "must be one plain folder name (letters, digits and . _ + = , @ -, not starting with '.'; "
            "no '/', spaces, '.' or '..')"
        )
    return None


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def step_checkpoint(run_dir: Path, step: int) -> Path:
    """The step checkpoint of ``step`` (``checkpoints/step<N>.pt``, zero-padded so names sort by step)."""
    return checkpoint_dir(run_dir) / f"step{step:09d}.pt"


def step_checkpoints(run_dir: Path) -> list[Path]:
    """The run's step checkpoints, newest first (none where there is no checkpoint folder)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_CHECKPOINT.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def best_weights(run_dir: Path, model: str = "model") -> Path:
    """The best weights of ``model`` (safetensors), kept by the monitored metric."""
    return checkpoint_dir(run_dir) / f"best_{model}.safetensors"


def run_weights(source: Path | str, model: str = "model") -> Path:
    """A trained run's best weights from its folder, or the safetensors file itself."""
    path = Path(source)
    return path if path.suffix == ".safetensors" else best_weights(path, model)


def run_of(source: Path | str) -> Path:
    """The run folder of ``source``: the folder itself, or the run whose best weights it names."""
    path = Path(source)
    return path.parent.parent if path.suffix == ".safetensors" else path


def moved_aside(run_dir: Path) -> Path:
    """Where force=true moves a run's old results: ``<run>.old-<time>`` beside it."""
    run_dir = Path(run_dir)
    return run_dir.with_name(f"{run_dir.name}{MOVED_ASIDE}{time.strftime('%Y%m%d-%H%M%S')}")


def is_run_folder_name(name: str) -> bool:
    """Run folders of a group, not results moved aside (``<run>.old-<time>``) nor hidden
    folders (``.submitit``)."""
    return not name.startswith(".") and MOVED_ASIDE not in name


# --------------------------------------------------------------------------- checks of shapes


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_or_none(value: Any) -> bool:
    return value is None or (_number(value) and math.isfinite(value))


def _mapping_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, dict) and all(isinstance(k, str) and check(v) for k, v in value.items())


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


# summary.json: the fields its readers use, each with its type (absent fields are allowed
# except status; a field of the wrong type makes the record damaged).
SUMMARY_FIELDS: dict[str, Callable[[Any], bool]] = {
    "status": lambda v: isinstance(v, str),
    "metrics": _mapping_of(_finite_or_none),
    "parameters": _mapping_of(lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "steps": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "epochs": _optional(_number),
    "wall_time_s": _optional(_number),
    "attempts": _optional(lambda v: isinstance(v, int)),
    "analyses": lambda v: isinstance(v, dict),
    "best": lambda v: isinstance(v, dict),
    "config_digest": lambda v: isinstance(v, str),
    "data": lambda v: isinstance(v, dict),
}


def summary_problem(summary: Any) -> str | None:
    """What is wrong with a parsed summary.json (None when its fields have their types)."""
    if not isinstance(summary, dict):
        return f"holds a JSON {type(summary).__name__}, not an object"
    if "status" not in summary:
        return "has no status"
    bad = [key for key, check in SUMMARY_FIELDS.items() if key in summary and not check(summary[key])]
    return f"field {bad[0]!r} has the wrong type" if bad else None


def _load(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"not readable JSON ({type(exc).__name__})") from None


def read_summary(run_dir: Path, strict: bool = False) -> dict[str, Any] | None:
    """The run's summary.json; None when there is none. A damaged one (not JSON, not an
    object, fields of the wrong type) is a :class:`RunRecordError` with ``strict``, else None
    with a warning: the run is then not finished, and the same command finishes it again from
    its checkpoint."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return None
    try:
        summary = _load(path)
        problem = summary_problem(summary)
    except ValueError as exc:
        problem = str(exc)
    if problem is None:
        return summary
    message = f"{path} is damaged ({problem})"
    if strict:
        raise RunRecordError(f"{message}; run the run's command again to rewrite it from its checkpoint")
    log.warning("%s; treated as unfinished (the same command finishes the run again from its checkpoint)", message)
    return None


def completed_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a run that completed (status "completed"), else None."""
    summary = read_summary(run_dir)
    return summary if summary is not None and summary.get("status") == "completed" else None


def _valid_attempt(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and _optional(_number)(entry.get("start_ts"))
        and _optional(_number)(entry.get("wall_time_s"))
        and _optional(lambda v: isinstance(v, int))(entry.get("reached_step"))
    )


def read_attempts(run_dir: Path) -> list[dict[str, Any]]:
    """The starts recorded in attempts.json; entries of the wrong shape are left out with a
    warning (the run's wall time then misses them), a damaged file counts as none."""
    path = Path(run_dir) / ATTEMPTS
    if not path.is_file():
        return []
    try:
        attempts = _load(path)
    except ValueError as exc:
        log.warning("%s is damaged (%s); earlier attempts are left out of the run's wall time", path, exc)
        return []
    if not isinstance(attempts, list):
        log.warning("%s is damaged (not a list); earlier attempts are left out of the run's wall time", path)
        return []
    kept = [a for a in attempts if _valid_attempt(a)]
    if len(kept) < len(attempts):
        log.warning("%s: %d damaged entr(ies) left out of the run's wall time", path, len(attempts) - len(kept))
    return kept


def read_slurm_record(run_dir: Path) -> dict[str, Any]:
    """slurm.json: ``starts`` (a list of task records) and the newest ``job``, ``job_id`` and
    ``log``; anything of another shape is dropped with a warning (the record is a view of the
    past, never needed to run)."""
    path = Path(run_dir) / SLURM_RECORD
    if not path.is_file():
        return {"starts": []}
    try:
        record = _load(path)
    except ValueError as exc:
        log.warning("%s is damaged (%s); its task history is ignored", path, exc)
        return {"starts": []}
    if not isinstance(record, dict):
        log.warning("%s is damaged (not an object); its task history is ignored", path)
        return {"starts": []}
    starts = record.get("starts")
    out: dict[str, Any] = {"starts": [s for s in starts if isinstance(s, dict)] if isinstance(starts, list) else []}
    for key in ("job", "job_id", "log"):
        if isinstance(record.get(key), str):
            out[key] = record[key]
    return out


def read_submissions(group_dir: Path, strict: bool = True) -> dict[str, dict[str, str]]:
    """A group's submissions.json: run name -> {job_id, log, run_dir} (strings). It holds the
    only record of the launcher's job ids, so a damaged file is refused (``strict``: one line,
    never overwritten) or, in views, ignored with a warning."""
    path = Path(group_dir) / SUBMISSIONS
    if not path.is_file():
        return {}
    problem = None
    try:
        record = _load(path)
    except ValueError as exc:
        problem = str(exc)
    else:
        if not isinstance(record, dict):
            problem = "not a JSON object of run name -> job"
        elif not all(isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in record.values()):
            problem = "an entry is not {job_id, log, run_dir} strings"
    if problem is None:
        return record
    if strict:
        raise RunRecordError(
            f"{path} is damaged ({problem}); it holds the job ids of earlier submissions: "
            f"repair it, or move it away to submit as if for the first time"
        )
    log.warning("%s is damaged (%s); the jobs of earlier submissions are not shown", path, problem)
    return {}


def is_metric_record(record: Any) -> bool:
    """A metrics.jsonl line: an object with an integer ``step`` and a string ``split``."""
    return (
        isinstance(record, dict)
        and isinstance(record.get("step"), int)
        and not isinstance(record["step"], bool)
        and isinstance(record.get("split"), str)
    )


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl ([] without one). A line that is not JSON (a kill cut it
    short) or not a record is skipped with a warning."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records, skipped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if is_metric_record(record):
            records.append(record)
        else:
            skipped += 1
    if skipped:
        log.warning(
            "%s: skipped %d line(s) that are not metric records (cut short by a kill, or damaged)", path, skipped
        )
    return records


def last_records(run_dir: Path) -> tuple[int | None, dict[str, Any] | None]:
    """(the last step logged, the last training record) of metrics.jsonl, read from the end (a
    long log is not parsed whole); lines that are not records (one a kill cut short) are passed over."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return None, None
    with open(path, "rb") as fh:
        fh.seek(max(path.stat().st_size - (1 << 16), 0))
        lines = fh.read().decode(errors="replace").splitlines()
    step, fit = None, None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not is_metric_record(record):
            continue
        step = record["step"] if step is None else step
        if record["split"] == "fit":
            fit = record
            break
    return step, fit


def last_step(run_dir: Path) -> int | None:
    """The last step logged in metrics.jsonl."""
    return last_records(run_dir)[0]


def read_progress(run_dir: Path) -> tuple[int | None, int | None]:
    """(total steps, batch per rank) from progress.json; (None, None) where absent or damaged."""
    path = Path(run_dir) / PROGRESS
    try:
        record = _load(path) if path.is_file() else {}
    except ValueError:
        record = {}
    record = record if isinstance(record, dict) else {}
    total, batch = record.get("total_steps"), record.get("batch_per_rank")
    valid = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0  # noqa: E731
    return (total if valid(total) else None), (batch if valid(batch) else None)


def has_progress(run_dir: Path) -> bool:
    """Whether the run has anything worth keeping: a step checkpoint or a summary."""
    return (Path(run_dir) / SUMMARY).is_file() or bool(step_checkpoints(run_dir))


def _interpolations(tree: Any, prefix: str = "") -> list[str]:
    """Dotted keys of string values holding an OmegaConf interpolation (``${...}``)."""
    if isinstance(tree, dict):
        return [k for key, value in tree.items() for k in _interpolations(value, f"{prefix}{key}.")]
    if isinstance(tree, list):
        return [k for i, value in enumerate(tree) for k in _interpolations(value, f"{prefix}{i}.")]
    return [prefix[:-1]] if isinstance(tree, str) and "${" in tree else []


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run folder was started with, as plain data (None for a new folder).

    Runs write their config resolved, so it is read with YAML's safe loader and never
    resolved: a value holding ``${...}`` (which OmegaConf would resolve, e.g. reading an
    environment variable) makes the file damaged, as does anything that is not a mapping.
    It is the record of what the results are, so a damaged one is refused, never overwritten.
    """
    import yaml

    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return None
    what = "move the run folder away, or pass force=true to start it over"
    try:
        with open(path) as fh:
            cfg = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except Exception as exc:  # YAML errors of several kinds, unreadable or undecodable file
        raise RunRecordError(f"{path} is damaged ({type(exc).__name__}); {what}") from None
    if not isinstance(cfg, dict):
        raise RunRecordError(f"{path} is damaged (not a mapping); {what}")
    found = _interpolations(cfg)
    if found:
        raise RunRecordError(
            f"{path} is damaged: key '{found[0]}' holds an interpolation (${{...}}), which is never "
            f"resolved from a run folder (runs write resolved configs); {what}"
        )
    return cfg


def read_weights(
    path: Path | str, device: str = "cpu", fix: str = "train its run again (force=true)"
) -> dict[str, Any]:
    """A safetensors weights file of a run (its best weights, or another run's used as a
    starting point) as tensors; a truncated or foreign file is one line naming it and ``fix``."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # safetensors' own error for a file cut short, OSError, ...
        text = str(exc).strip().splitlines()
        raise RunRecordError(
            f"{path} is not a readable weights file ({type(exc).__name__}: {text[0] if text else 'unreadable'}); {fix}"
        ) from None
