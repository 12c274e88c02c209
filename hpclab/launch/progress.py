"""Where a run stands in its training, for ``launch.py status``: step of total steps and the
run's rate, read from its own records (``metrics.jsonl``, ``progress.json``), no torch, no
config composed. Damaged records give less, never an error."""

from __future__ import annotations

from pathlib import Path

from hpclab.rundir import last_records, read_progress


def rate_text(steps_per_s: float) -> str:
    """``6.1 step/s``, or ``12 s/step`` for slow runs."""
    return f"{steps_per_s:.3g} step/s" if steps_per_s >= 1 else f"{1 / steps_per_s:.3g} s/step"


def progress_cells(run_dir: Path) -> tuple[str, str]:
    """(``120/200``, ``6.1 step/s``) of a run; ``-`` where nothing is known yet."""
    step, fit = last_records(run_dir)
    total, batch = read_progress(run_dir)
    if step is None:
        return "-", "-"
    where = f"{step}/{total}" if total else str(step)
    images_per_s = fit.get("images_per_s") if fit else None
    if not batch or not isinstance(images_per_s, (int, float)) or images_per_s <= 0:
        return where, "-"
    return where, rate_text(images_per_s / batch)
