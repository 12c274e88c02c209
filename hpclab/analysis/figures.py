"""Generic figures: image grids of what the task shows (inputs, outputs, targets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from hpclab.analysis import ANALYSES  # noqa: E402
from hpclab.analysis.inputs import available_split, first_batch  # noqa: E402
from hpclab.engine.evaluation import TrainedRun  # noqa: E402
from hpclab.utils import atomic_path  # noqa: E402


def save_figure(fig: "plt.Figure", path: Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def image_rows(rows: dict[str, torch.Tensor], path: Path, title: str = "") -> Path:
    """One row per named batch (N x C x H x W in [0, 1]), one column per image."""
    names = list(rows)
    n = min(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(names), n, figsize=(1.3 * n, 1.4 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c in range(n):
            img = rows[name][c].detach().float().clamp(0, 1).cpu()
            ax = axes[r][c]
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


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
