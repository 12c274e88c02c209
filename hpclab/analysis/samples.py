"""Samples of a generative run (task ``gan`` or ``diffusion``), whichever model makes them: the
task's seeded inputs (latent vectors, initial noise) through its ``generate``, the sampling
models at every kept checkpoint, and the ``sample_grids`` analysis (also registered as
``gan_epoch_grids``): the fixed-input grid of every evaluation, as training logged it.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hpclab.analysis import ANALYSES
from hpclab.analysis.grids import full_resolution_grid, image_strips
from hpclab.engine.checkpoints import model_states
from hpclab.engine.evaluation import TrainedRun
from hpclab.rundir import TENSORBOARD
from hpclab.tasks.base import GenerativeTask
from hpclab.utils import atomic_path

log = logging.getLogger("hpclab")


def generative_task(run: TrainedRun) -> GenerativeTask:
    if not isinstance(run.task, GenerativeTask):
        raise ValueError(f"this analysis needs a generative task (gan, diffusion), the run uses {run.cfg.task.name!r}")
    return run.task


@torch.no_grad()
def generate(run: TrainedRun, inputs: torch.Tensor, batch_size: int = 256, **options: Any) -> torch.Tensor:
    """Images in [0, 1] (on the CPU) of ``inputs`` with the run's models in evaluation mode."""
    task = generative_task(run)
    with run.evaluating():
        return torch.cat(
            [
                task.generate(run.models, inputs[i : i + batch_size].to(run.device), **options).cpu()
                for i in range(0, len(inputs), batch_size)
            ]
        )


def models_over_training(
    run: TrainedRun, epochs: list[float] | None = None
) -> Iterator[tuple[str, int, float, dict[str, nn.Module]]]:
    """``(what, step, epoch, models)``: copies of the task's sampling models (eval mode) with the
    weights of every kept checkpoint in step order (``epochs`` picks some), then with the run's
    final weights (``what`` says which). One copy is reloaded for every checkpoint. A wanted
    epoch without a kept checkpoint is named in a warning (a shorter run than the config's)."""
    names = generative_task(run).sampling_models
    per_epoch, final_step = run.steps_per_epoch, run.step
    final_epoch = round(final_step / per_epoch, 6)
    wanted = None if epochs is None else {round(float(e), 6) for e in epochs}
    kept: set[float] = {final_epoch}
    copies = {n: copy.deepcopy(run.unwrap(n)).eval() for n in names}
    for step, states in model_states(run.run_dir, copies):
        epoch = round(step / per_epoch, 6)
        kept.add(epoch)
        if step == final_step or (wanted is not None and epoch not in wanted):
            continue  # the final weights come last
        for name, model in copies.items():
            model.load_state_dict(states[name])
        yield "generated", step, epoch, copies
    if wanted and wanted - kept:
        log.warning(
            "%s: no kept checkpoint at epoch %s (kept: %s); those rows are left out",
            run.run_dir,
            ", ".join(f"{e:g}" for e in sorted(wanted - kept)),
            ", ".join(f"{e:g}" for e in sorted(kept)),
        )
    final = {n: copy.deepcopy(run.unwrap(n)).eval() for n in names}
    yield "generated (final weights)", final_step, final_epoch, final


def tensorboard_images(tb_dir: Path, tag: str) -> list[tuple[int, bytes]]:
    """(step, PNG bytes) of every image summary ``tag`` in a run's TensorBoard folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(tb_dir).is_dir():
        return []
    acc = EventAccumulator(str(tb_dir), size_guidance={"images": 0})
    acc.Reload()
    if tag not in acc.Tags().get("images", []):
        return []
    latest = {e.step: e.encoded_image_string for e in acc.Images(tag)}  # a resumed run re-logs: keep the last
    return sorted(latest.items())


@ANALYSES.register("sample_grids")
def sample_grids(run: TrainedRun, out_dir: Path, rows: int = 8) -> dict[str, Any]:
    """The fixed-input grid the engine logged to TensorBoard at every evaluation (once per epoch
    by default) as ``epochs/epoch_NNN.png``, an overview of up to ``rows`` of them, and the grid
    regenerated from the final weights (``samples_final.png``, the same inputs)."""
    from PIL import Image

    task = generative_task(run)
    out_dir = Path(out_dir)
    run.log.flush()  # the grids logged during training, on disk before they are read back
    logged = tensorboard_images(run.run_dir / TENSORBOARD, "images/samples")
    files = []
    for step, png in logged:
        epoch = step / run.steps_per_epoch
        name = f"epoch_{round(epoch):03d}.png" if abs(epoch - round(epoch)) < 1e-9 else f"step_{step:07d}.png"
        with atomic_path(out_dir / "epochs" / name) as tmp:
            tmp.write_bytes(png)
        files.append((epoch, out_dir / "epochs" / name))
    final = full_resolution_grid(generate(run, task.fixed_inputs(run.device)), out_dir / "samples_final.png")
    result: dict[str, Any] = {"epochs": len(files), "final": str(final)}
    if files:
        count = min(rows, len(files))  # evenly spaced, the first and the last always among them
        picks = sorted({round(i * (len(files) - 1) / max(count - 1, 1)) for i in range(count)})
        grids = {}
        for i in picks:
            with Image.open(files[i][1]) as img:
                pixels = torch.from_numpy(np.asarray(img.convert("RGB")).copy())
            grids[f"epoch {files[i][0]:.3g}"] = pixels.permute(2, 0, 1)[None].float() / 255
        overview = image_strips(
            grids, out_dir / "samples_by_epoch.png", width=10, title=f"the same {task.inputs_name} through training"
        )
        result.update(overview=str(overview), shown=[round(files[i][0], 6) for i in picks])
    return result


ANALYSES.add("gan_epoch_grids", sample_grids)  # the DCGAN experiments' name for it
