"""Image grids: named rows of images, captioned grids, strips, labelled mosaics and
full-resolution PNGs, and the generic ``examples`` analysis drawn with them.

Images are N x C x H x W tensors in [0, 1]: one channel is drawn grey, three as RGB, both on
the fixed [0, 1] scale so that figures of different runs compare.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hpclab.analysis import ANALYSES
from hpclab.analysis.figures import plt, save_figure
from hpclab.analysis.inputs import available_split, first_batch
from hpclab.engine.evaluation import TrainedRun
from hpclab.utils import atomic_path


def show_image(ax: Any, image: torch.Tensor) -> None:
    """One C x H x W image in [0, 1] on ``ax``, grey or RGB, without ticks."""
    img = image.detach().float().clamp(0, 1).cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0))
    ax.set_xticks([])
    ax.set_yticks([])


def image_rows(
    rows: Mapping[str, torch.Tensor],
    path: Path,
    title: str = "",
    column_titles: Sequence[str] | None = None,
    inches: float = 1.3,
) -> Path:
    """One row per named batch, one column per image (as many as the shortest batch has), the
    name at the left; ``column_titles`` over the top row (a class name, a score). ``inches``:
    the width of one image in the figure."""
    names = list(rows)
    n = min(len(v) for v in rows.values())
    extra = 0.4 if column_titles else 0.0
    fig, axes = plt.subplots(len(names), n, figsize=(inches * n, (inches + 0.1) * len(names) + extra), squeeze=False)
    for r, name in enumerate(names):
        for c in range(n):
            ax = axes[r][c]
            show_image(ax, rows[name][c])
            if r == 0 and column_titles:
                ax.set_title(str(column_titles[c]), fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    if title and column_titles:
        fig.suptitle(title, y=1.0 + 0.12 / len(names))  # above the column titles
    elif title:
        fig.suptitle(title)
    return save_figure(fig, path)


def captioned_grid(
    images: torch.Tensor, captions: Sequence[str], path: Path, ncol: int = 8, title: str = "", inches: float = 1.6
) -> Path:
    """The images ``ncol`` per row, each with its caption above it (category and count, index
    and score, interpolation weight)."""
    n = len(images)
    ncol = min(ncol, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(inches * ncol, (inches + 0.2) * nrow), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            show_image(ax, images[i])
            ax.set_title(captions[i], fontsize=7)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def mosaic(images: torch.Tensor, ncol: int, gap: int = 2) -> torch.Tensor:
    """Equal-sized images tiled ``ncol`` per row with ``gap`` white pixels between them (none
    around): an H x W x 3 tensor that one ``imshow`` draws, fast for hundreds of images."""
    x = images.detach().float().clamp(0, 1).cpu()
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
    n, _, h, w = x.shape
    nrow = math.ceil(n / ncol)
    out = torch.ones(nrow * (h + gap) - gap, ncol * (w + gap) - gap, 3)
    for i in range(n):
        r, c = divmod(i, ncol)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = x[i].permute(1, 2, 0)
    return out


def image_strips(
    rows: Mapping[str, torch.Tensor], path: Path, title: str = "", width: float = 12.0, gap: int = 2
) -> Path:
    """One strip per named batch (its images side by side), the name at the left; batches may
    differ in image size (one picture at several resolutions) and a strip may be one large image
    (a whole logged grid)."""
    strips = [mosaic(images, len(images), gap) for images in rows.values()]
    aspects = [s.shape[0] / s.shape[1] for s in strips]
    fig, axes = plt.subplots(
        len(strips),
        1,
        figsize=(width, width * sum(aspects) + 0.6),
        squeeze=False,
        gridspec_kw={"height_ratios": aspects},
        layout="constrained",
    )
    for ax, name, strip in zip(axes[:, 0], rows, strips):
        ax.imshow(strip.numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def labelled_grid(
    images: torch.Tensor,
    ncol: int,
    path: Path,
    title: str,
    column_labels: Sequence[str],
    row_labels: Sequence[str] = (),
    xlabel: str = "",
    ylabel: str = "",
    gap: int = 2,
    dpi: int = 120,
) -> Path:
    """Equal-sized images as one mosaic of ``ncol`` columns with a label under every column and
    beside every row (the latent values that decoded them, the channel a map comes from)."""
    grid = mosaic(images, ncol, gap)
    h, w = images.shape[-2:]
    height, width = grid.shape[:2]
    fig, ax = plt.subplots(figsize=(min(max(width / 40, 4), 24), max(height / 40, 1.5) + 0.6))
    ax.imshow(grid.numpy(), interpolation="nearest")
    ax.set_xticks([c * (w + gap) + w / 2 - 0.5 for c in range(len(column_labels))], column_labels, fontsize=7)
    ax.set_yticks([r * (h + gap) + h / 2 - 0.5 for r in range(len(row_labels))], row_labels, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path, dpi=dpi)


def full_resolution_grid(images: torch.Tensor, path: Path, per_row: int = 8) -> Path:
    """The images ``per_row`` per row as a PNG with one pixel per image pixel, to look at
    samples closely (no matplotlib resampling)."""
    import torchvision

    with atomic_path(path) as tmp:
        torchvision.utils.save_image(images.float().clamp(0, 1), tmp, nrow=per_row, padding=2, format="png")
    return path


@ANALYSES.register("examples")
def examples(run: TrainedRun, out_dir: Path, split: str = "test", count: int = 10) -> dict[str, Any]:
    """Rows of the task's images (e.g. noisy / output / target) for the first test images."""
    split = available_split(run, split)
    batch = first_batch(run, split, count)
    with run.evaluating():
        rows = run.task.images(run.models, batch, run.eval_generator())
    if not rows:
        return {}
    path = image_rows(rows, out_dir / f"examples_{split}.png", title=run.cfg.run_name)
    return {"figure": str(path)}
