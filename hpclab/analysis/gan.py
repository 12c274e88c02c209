"""End-of-run studies of a GAN run (task ``gan``): training curves, one real image per category,
batch vs one-by-one generation (BatchNorm), favourites with their latent vectors, and a latent
interpolation strip (the fixed-latent grid of every epoch is ``gan_epoch_grids``, in
``samples``). Each writes PNGs (and .npy latents) under the run's ``figures/`` and returns the
numbers that go into ``summary.json``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpclab.analysis import ANALYSES
from hpclab.analysis.curves import series
from hpclab.analysis.figures import Line, Panel, plot_panels
from hpclab.analysis.grids import captioned_grid, full_resolution_grid, image_rows
from hpclab.analysis.inputs import first_of_each_class
from hpclab.analysis.samples import generate
from hpclab.data.transforms import to_float
from hpclab.engine.evaluation import TrainedRun
from hpclab.rundir import read_metrics
from hpclab.tasks.gan import to_unit
from hpclab.utils import atomic_path, atomic_write_text, write_json

# --------------------------------------------------------------------------- helpers


def gan_task(run: TrainedRun):
    from hpclab.tasks.gan import GAN

    if not isinstance(run.task, GAN):
        raise ValueError(f"this analysis needs task=gan, the run uses {run.cfg.task.name!r}")
    return run.task


def save_npy(array: np.ndarray, path: Path) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    return path


# --------------------------------------------------------------------------- curves


@ANALYSES.register("gan_curves")
def gan_curves(run: TrainedRun, out_dir: Path) -> dict[str, Any]:
    """G and D losses, and D's mean output on real and on generated images, per logged step
    (``train.log_every``; 1 = every step), with the per-epoch values on the val images."""
    records = read_metrics(run.run_dir)
    fit = [r for r in records if r["split"] == "fit" and "d_loss" in r]
    if not fit:
        return {}

    def train(name: str, label: str) -> Line:
        return Line(*series(records, "fit", name, x="step"), label, width=0.8)

    def val(name: str, label: str, style: str) -> Line:
        return Line(*series(records, "val", name, x="step"), label, style, marker_size=3)

    losses = [train("g_loss", "generator loss"), train("d_loss", "discriminator loss")]
    outputs = [
        train("d_real", "D(x), real (train)"),
        train("d_fake", "D(G(z)), generated (train)"),
        val("d_real", "D(x), val images (eval mode)", "o-"),
        val("d_fake", "D(G(z)) (eval mode)", "s-"),
    ]
    panels = [
        Panel(losses, "step", "BCE", "losses"),
        Panel([line for line in outputs if line.x], "step", title="discriminator's mean output", ylim=(0, 1)),
    ]
    path = plot_panels(panels, Path(out_dir) / "gan_curves.png", panel_size=(6, 4))
    last = fit[-1]
    return {"figure": str(path), "last": {k: last[k] for k in ("g_loss", "d_loss", "d_real", "d_fake")}}


# --------------------------------------------------------------------------- categories


@ANALYSES.register("gan_categories")
def gan_categories(run: TrainedRun, out_dir: Path, split: str = "train", ncol: int = 10) -> dict[str, Any]:
    """One real image of every category in the run's data (all 102, or the chosen subset)."""
    names = run.data.info.class_names
    found, counts = first_of_each_class(run, split)
    order = sorted(found)
    if not order:
        return {}
    images = torch.cat([to_float(found[k]["images"]).cpu() for k in order])
    path = captioned_grid(
        images,
        [f"{names[k]} ({counts[k]})" for k in order],
        Path(out_dir) / "categories.png",
        ncol=ncol,
        title=f"one {split} image per category (count)",
    )
    return {
        "figure": str(path),
        "categories": len(order),
        "images": int(counts.sum()),
        "per_category": {names[k]: int(counts[k]) for k in order},
    }


# --------------------------------------------------------------------------- BatchNorm study

EXPLANATION = """\
# Batch vs one-by-one generation

The same {n} latent vectors (the training batch size, seed {seed}; saved as
batch_vs_single_z.npy) were fed to the generator all at once and one at a time, with the model
in training mode and in evaluation mode (figure: batch_vs_single.png). Mean absolute pixel
difference (images in [0, 1]):

| generator mode | batch vs one-by-one |
|---|---|
| train (`model.train()`) | {train:.4f} |
| eval (`model.eval()`) | {eval:.2e} |

Train-mode batch vs eval-mode batch: {modes:.4f}.

Why: BatchNorm in training mode normalises every layer with the mean and variance of the
current batch, so an image depends on the other latent vectors it is generated with; fed
alone, each image is normalised with its own statistics (the spatial positions of one image),
which shifts colours and contrast and removes detail. In evaluation mode BatchNorm uses the
running mean and variance accumulated during training, so each image is a fixed function of its
own z: batch and one-by-one agree up to float rounding.

The correct way to generate: `generator.eval()` under `torch.no_grad()`, in any batch size.
If eval-mode images look worse than train-mode batches (running averages lag behind a generator
that changed quickly), re-estimate the BatchNorm statistics with forward passes of many latent
batches in train mode (momentum=None for a plain average) and then switch to eval; do not
generate in train mode.
"""


@ANALYSES.register("gan_batch_vs_single")
def gan_batch_vs_single(
    run: TrainedRun, out_dir: Path, n: int | None = None, show: int = 8, seed: int = 777
) -> dict[str, Any]:
    """Generate ``n`` (default: the training batch size) latents as one batch and one by one,
    in train and in eval mode, on a copy of the generator (its BatchNorm buffers stay intact).
    The latent vectors are saved as ``batch_vs_single_z.npy`` (n x latent_dim, row i is image i
    of every row of the figure)."""
    task = gan_task(run)
    n = n or run.cfg.train.batch_size
    z = task.fixed_latents(run.device, n=n, seed=seed)
    z_file = save_npy(z.float().cpu().numpy(), Path(out_dir) / "batch_vs_single_z.npy")
    G = copy.deepcopy(run.unwrap("generator"))
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for mode in ("train", "eval"):
            G.train(mode == "train")
            out[f"{mode}: batch"] = to_unit(G(z)).cpu()
            out[f"{mode}: one by one"] = torch.cat([to_unit(G(z[i : i + 1])).cpu() for i in range(n)])
    diff = {
        mode: (out[f"{mode}: batch"] - out[f"{mode}: one by one"]).abs().mean().item() for mode in ("train", "eval")
    }
    modes = (out["train: batch"] - out["eval: batch"]).abs().mean().item()
    show = min(show, n)
    figure = image_rows(
        {k: v[:show] for k, v in out.items()},
        Path(out_dir) / "batch_vs_single.png",
        title="same latent vectors: as one batch vs one at a time",
    )
    text = EXPLANATION.format(n=n, seed=seed, train=diff["train"], eval=diff["eval"], modes=modes)
    atomic_write_text(Path(out_dir) / "batch_vs_single.md", text)
    return {
        "figure": str(figure),
        "report": str(Path(out_dir) / "batch_vs_single.md"),
        "latents": str(z_file),
        "seed": seed,
        "mean_abs_diff_train_mode": diff["train"],
        "mean_abs_diff_eval_mode": diff["eval"],
        "mean_abs_diff_train_vs_eval_batch": modes,
    }


# --------------------------------------------------------------------------- favourites


@ANALYSES.register("gan_favourites")
def gan_favourites(
    run: TrainedRun,
    out_dir: Path,
    candidates: int = 64,
    count: int = 8,
    indices: list[int] | None = None,
    pair: list[int] | None = None,
    seed: int = 4321,
    steps: int = 11,
) -> dict[str, Any]:
    """Favourites among ``candidates`` seeded samples (``candidates.png`` shows their indices):
    the ``indices`` you chose, else the ``count`` the discriminator rates most real. Saves them
    with their latent vectors (``favourites_z.npy``) and the strip z = a*z1 + (1-a)*z2 for
    a = 0, 0.1, ..., 1 between two of them (``pair``, positions in the favourites; default the
    first two), with its latents (``interpolation_z.npy``)."""
    task = gan_task(run)
    out_dir = Path(out_dir)
    z = task.fixed_latents(run.device, n=candidates, seed=seed)
    images = generate(run, z)
    D = run.unwrap("discriminator")
    with torch.no_grad(), run.evaluating():
        scores = D((images * 2 - 1).to(run.device)).float().cpu()
    if indices is None:
        picks = torch.argsort(scores, descending=True)[:count].tolist()
        how = "highest D(G(z))"
    else:
        bad = [i for i in indices if not 0 <= int(i) < candidates]
        if bad:
            raise ValueError(
                f"gan_favourites: indices {bad} are outside the {candidates} candidates (0..{candidates - 1})"
            )
        picks, how = [int(i) for i in indices], "chosen"
    a_pos, b_pos = pair if pair is not None else (0, 1)
    if len(picks) < 2 or not (0 <= a_pos < len(picks) and 0 <= b_pos < len(picks)):
        raise ValueError(
            f"gan_favourites: pair {[a_pos, b_pos]} must name two of the {len(picks)} favourites (positions 0..count-1)"
        )
    captioned_grid(
        images,
        [f"#{i} D={s:.2f}" for i, s in enumerate(scores.tolist())],
        out_dir / "candidates.png",
        title=f"candidates (seed {seed}); pick with indices=[...]",
    )
    fav_png = full_resolution_grid(images[picks], out_dir / "favourites.png", per_row=min(8, len(picks)))
    fav_z = z[picks].float().cpu().numpy()
    save_npy(fav_z, out_dir / "favourites_z.npy")

    z1, z2 = z[picks[a_pos]], z[picks[b_pos]]
    alphas = torch.linspace(0.0, 1.0, steps)
    z_line = torch.stack([a * z1 + (1 - a) * z2 for a in alphas.tolist()])
    strip = generate(run, z_line)
    captioned_grid(
        strip,
        [f"a={a:.1f}" for a in alphas.tolist()],
        out_dir / "interpolation.png",
        ncol=steps,
        title=f"z = a*z1 + (1-a)*z2, z1 = candidate #{picks[a_pos]}, z2 = candidate #{picks[b_pos]}",
    )
    save_npy(z_line.float().cpu().numpy(), out_dir / "interpolation_z.npy")
    record = {
        "seed": seed,
        "candidates": candidates,
        "selection": how,
        "indices": picks,
        "scores": [round(float(scores[i]), 4) for i in picks],
        "pair": [picks[a_pos], picks[b_pos]],
        "alphas": [round(a, 4) for a in alphas.tolist()],
        "files": {
            "favourites": fav_png.name,
            "favourites_z": "favourites_z.npy",
            "interpolation": "interpolation.png",
            "interpolation_z": "interpolation_z.npy",
        },
    }
    write_json(out_dir / "favourites.json", record)
    return record
