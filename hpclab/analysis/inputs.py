"""The images an analysis feeds a trained model: a split the run has, its first evaluation batch,
what the task makes of a batch for the network, and one example of every class."""

from __future__ import annotations

import logging

import numpy as np
import torch

from hpclab.data.transforms import to_float
from hpclab.engine.evaluation import TrainedRun

log = logging.getLogger("hpclab")


def available_split(run: TrainedRun, split: str) -> str:
    """``split`` when the run's data has it, else the first of val/test/train that it has,
    with a warning: a figure's split is never a silent substitute."""
    if run.data.has(split):
        return split
    for name in ("val", "test", "train"):
        if run.data.has(name):
            log.warning("split %r has no data in this run; the analysis uses %r", split, name)
            return name
    raise ValueError("the run's data has no split with images")


def first_batch(run: TrainedRun, split: str, count: int | None = None) -> dict[str, torch.Tensor]:
    """The first evaluation batch of ``split`` (see ``available_split``), cut to ``count``."""
    batch = next(run.data.batches(available_split(run, split), train=False).epoch(0))
    return {k: v[:count] for k, v in batch.items()} if count else batch


def network_input(run: TrainedRun, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the task feeds the network for ``batch`` (plain float images for generic tasks)."""
    fn = getattr(run.task, "model_input", None)
    return fn(batch, run.eval_generator()) if fn else to_float(batch["images"])


def first_of_each_class(
    run: TrainedRun, split: str, count: bool = True
) -> tuple[dict[int, dict[str, torch.Tensor]], np.ndarray | None]:
    """The first item of every class in ``split`` (a batch of one, by label) and, with ``count``,
    how many items each of the data's classes has there (else None, and reading stops as soon
    as every class is found)."""
    classes = len(run.data.info.class_names)
    first: dict[int, dict[str, torch.Tensor]] = {}
    counts = np.zeros(classes, dtype=np.int64)
    for batch in run.data.batches(split, train=False).epoch(0):
        labels = batch["labels"].cpu()
        counts += np.bincount(labels.numpy(), minlength=classes)[:classes]
        for i, label in enumerate(labels.tolist()):
            if label < classes and label not in first:
                first[label] = {k: v[i : i + 1] for k, v in batch.items()}
        if not count and len(first) == classes:
            break
    return first, counts if count else None
