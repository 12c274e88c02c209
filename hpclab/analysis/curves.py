"""Curves of logged metrics: panels of lines drawn one way, the series of a metric in a run's
metrics.jsonl, and the generic ``curves`` analysis (also ``jobs/compare_runs.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from hpclab.analysis import ANALYSES
from hpclab.analysis.figures import plt, save_figure
from hpclab.analysis.report import read_metrics
from hpclab.engine.evaluation import TrainedRun


@dataclass
class Line:
    """One curve; ``style`` is a matplotlib format string (``"--"``, ``"o-"``, ``".-"``)."""

    x: Sequence[float]
    y: Sequence[float]
    label: str
    style: str = "-"
    width: Optional[float] = None
    marker_size: Optional[float] = None


@dataclass
class Level:
    """A horizontal reference line across a panel (a floor, a baseline)."""

    y: float
    label: str
    style: str = "--"
    colour: Optional[str] = None


@dataclass
class Panel:
    """One plot: its curves, reference levels and axes."""

    lines: list[Line]
    xlabel: str
    ylabel: str = ""
    title: str = ""
    levels: list[Level] = field(default_factory=list)
    ylim: Optional[tuple[float, float]] = None
    log_y: bool = False
    log_x: bool = False


def plot_panels(panels: Sequence[Panel], path: Path, title: str = "",
                panel_size: tuple[float, float] = (4.4, 3.4)) -> Path:
    """The panels side by side, each with a grid and a legend, saved as one PNG."""
    width, height = panel_size
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for line in panel.lines:
            ax.plot(line.x, line.y, line.style, label=line.label, linewidth=line.width, markersize=line.marker_size)
        for level in panel.levels:
            ax.axhline(level.y, color=level.colour, linestyle=level.style, label=level.label)
        if panel.log_y:
            ax.set_yscale("log")
        if panel.log_x:
            ax.set_xscale("log")
        if panel.ylim:
            ax.set_ylim(*panel.ylim)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        if panel.title:
            ax.set_title(panel.title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


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
    path = plot_curves({run.cfg.run_name: run.run_dir}, list(metrics), out_dir / "curves.png",
                       title=run.cfg.run_name)
    return {"figure": str(path)}
