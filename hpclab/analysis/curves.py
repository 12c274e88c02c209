"""Curves of logged metrics: panels of lines drawn one way, the series of a metric in a run's
metrics.jsonl, and the generic ``curves`` analysis (also ``jobs/compare_runs.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpclab.analysis import ANALYSES
from hpclab.analysis.figures import Line, Panel, plot_panels
from hpclab.engine.evaluation import TrainedRun
from hpclab.rundir import read_metrics


def series(records: Sequence[Mapping[str, Any]], split: str, name: str, x: str = "epoch") -> tuple[list, list]:
    """``(x values, metric values)`` of ``name`` in the metrics.jsonl records of ``split``."""
    points = [(r[x], r[name]) for r in records if r["split"] == split and name in r]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(runs: Mapping[str, Path], metrics: Sequence[str], path: Path, title: str = "") -> Path:
    """One panel per metric; per run the training (``fit``, dashed) and evaluation splits
    (solid) against epochs. A metric is ``name`` (all splits) or ``split/name``."""
    records = {label: read_metrics(run_dir) for label, run_dir in runs.items()}
    panels = []
    for metric in metrics:
        want_split, _, name = metric.rpartition("/")
        lines = []
        for label, logged in records.items():
            splits = sorted({r["split"] for r in logged if name in r and not r["split"].startswith("final")})
            for split in splits:
                if want_split and split != want_split:
                    continue
                xs, ys = series(logged, split, name)
                marker = "." if len(xs) < 30 else ""
                dashes = "--" if split == "fit" else "-"
                lines.append(Line(xs, ys, f"{label} {'train' if split == 'fit' else split}", marker + dashes))
        panels.append(Panel(lines, "epoch", metric))
    return plot_panels(panels, path, title)


@ANALYSES.register("curves")
def curves(run: TrainedRun, out_dir: Path, metrics: Sequence[str] = ("loss",)) -> dict[str, Any]:
    """Training/validation curves of this run."""
    path = plot_curves({run.cfg.run_name: run.run_dir}, list(metrics), out_dir / "curves.png", title=run.cfg.run_name)
    return {"figure": str(path)}
