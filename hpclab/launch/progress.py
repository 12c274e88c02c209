"""Where a run stands in its training, for ``launch.py status``: step of total steps and the
run's rate, read from its own records (``metrics.jsonl``, ``progress.json``), no torch, no
config composed. Damaged records give less, never an error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

PROGRESS_FILE = "progress.json"  # written by hpclab.engine.runlog.RunLog at each start


def last_records(run_dir: Path) -> tuple[Optional[int], Optional[dict[str, Any]]]:
    """(the last step logged, the last training row) of ``metrics.jsonl``; a last line cut
    short by a kill is passed over for the one before it."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None, None
    step, fit = None, None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        try:
            record = json.loads(line)
            row_step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            continue
        step = row_step if step is None else step
        if record.get("split") == "fit":
            fit = record
            break
    return step, fit


def _total_and_batch(run_dir: Path) -> tuple[Optional[int], Optional[int]]:
    try:
        record = json.loads((run_dir / PROGRESS_FILE).read_text())
        total, batch = record.get("total_steps"), record.get("batch_per_rank")
    except (OSError, ValueError, AttributeError):
        return None, None
    return (total if isinstance(total, int) else None), (batch if isinstance(batch, int) and batch > 0 else None)


def rate_text(steps_per_s: float) -> str:
    """``6.1 step/s``, or ``12 s/step`` for slow runs."""
    return f"{steps_per_s:.3g} step/s" if steps_per_s >= 1 else f"{1 / steps_per_s:.3g} s/step"


def progress_cells(run_dir: Path) -> tuple[str, str]:
    """(``120/200``, ``6.1 step/s``) of a run; ``-`` where nothing is known yet."""
    step, fit = last_records(run_dir)
    total, batch = _total_and_batch(run_dir)
    if step is None:
        return "-", "-"
    where = f"{step}/{total}" if total else str(step)
    images_per_s = fit.get("images_per_s") if fit else None
    if not batch or not isinstance(images_per_s, (int, float)) or images_per_s <= 0:
        return where, "-"
    return where, rate_text(images_per_s / batch)
