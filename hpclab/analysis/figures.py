"""Matplotlib without a display, the one way figures are written (PNG, atomically), and panels
of lines drawn one way (curves, sweep summaries, GAN and FD figures)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hpclab.utils import atomic_path  # noqa: E402


def save_figure(fig: plt.Figure, path: Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


@dataclass
class Line:
    """One curve; ``style`` is a matplotlib format string (``"--"``, ``"o-"``, ``".-"``)."""

    x: Sequence[float]
    y: Sequence[float]
    label: str
    style: str = "-"
    width: float | None = None
    marker_size: float | None = None
    spread: Sequence[Sequence[float]] | None = None  # [below, above] each point: an error bar


@dataclass
class Level:
    """A horizontal reference line across a panel (a floor, a baseline)."""

    y: float
    label: str
    style: str = "--"
    colour: str | None = None


@dataclass
class Panel:
    """One plot: its curves, reference levels and axes."""

    lines: list[Line]
    xlabel: str
    ylabel: str = ""
    title: str = ""
    levels: list[Level] = field(default_factory=list)
    ylim: tuple[float, float] | None = None
    log_y: bool = False
    log_x_base: int | None = None  # a logarithmic x axis of this base


def plot_panels(
    panels: Sequence[Panel], path: Path, title: str = "", panel_size: tuple[float, float] = (4.4, 3.4)
) -> Path:
    """The panels side by side, each with a grid and a legend, saved as one PNG."""
    width, height = panel_size
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for line in panel.lines:
            if line.spread is not None:
                ax.errorbar(
                    line.x,
                    line.y,
                    yerr=line.spread,
                    fmt=line.style,
                    label=line.label,
                    linewidth=line.width,
                    markersize=line.marker_size,
                    capsize=3,
                )
            else:
                ax.plot(line.x, line.y, line.style, label=line.label, linewidth=line.width, markersize=line.marker_size)
        for level in panel.levels:
            ax.axhline(level.y, color=level.colour, linestyle=level.style, label=level.label)
        if panel.log_y:
            ax.set_yscale("log")
        if panel.log_x_base:
            ax.set_xscale("log", base=panel.log_x_base)
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
