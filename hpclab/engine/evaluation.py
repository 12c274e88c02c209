"""Evaluating a run's models, and :class:`TrainedRun`, the handle analyses receive.

Evaluation noise and masks are seeded per batch (batch i of a split with ``EVAL_SEED + i``),
so every evaluation, on whichever rank, and every analysis sees the same corrupted inputs and
numbers compare across epochs and runs. Metric sums are added up on the device and divided
once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from hpclab.data.loader import RunData, eval_shard
from hpclab.engine.build import RunParts
from hpclab.engine.checkpoints import RunState
from hpclab.engine.runlog import RunLog
from hpclab.engine.steps import autocast
from hpclab.tasks.base import Task

Batch = dict[str, torch.Tensor]  # one batch of a split: images (and labels, masks) on the device

EVAL_SEED = 1234


def mean_of_sums(totals: dict[str, torch.Tensor]) -> dict[str, float]:
    """Divide metric sums by their ``count`` (one host sync for all metrics)."""
    if not totals:
        return {}
    keys = list(totals)
    values = torch.stack([totals[k].float() for k in keys]).cpu().tolist()
    named = dict(zip(keys, values))
    count = named.pop("count", 1.0) or 1.0
    return {k: v / count for k, v in named.items()}


class TrainedRun:
    """A run's config, data, task and models with its evaluation: what the training loop
    evaluates with and what every analysis receives (during training, or from
    :func:`hpclab.engine.load_trained` afterwards)."""

    def __init__(self, parts: RunParts, run_dir: Path, state: RunState, log: RunLog) -> None:
        self.parts, self.run_dir, self.state, self.log = parts, Path(run_dir), state, log
        self.cfg: DictConfig = parts.cfg
        self.data: RunData = parts.data
        self.task: Task = parts.task
        self.models: dict[str, nn.Module] = parts.models
        self.device: torch.device = parts.device
        self.steps_per_epoch: int = parts.steps_per_epoch

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def best(self) -> dict[str, Any]:
        return self.state.best

    @property
    def writer(self) -> Any:
        """The run's TensorBoard writer (None off rank 0)."""
        return self.log.writer

    def unwrap(self, name: str = "model") -> nn.Module:
        return self.parts.unwrap(name)

    def autocast(self) -> AbstractContextManager:
        return autocast(self.device, self.cfg.train.mixed_precision)

    # ---- evaluation
    def eval_generator(self) -> torch.Generator:
        """A freshly seeded generator on the device (the first evaluation batch's)."""
        return torch.Generator(device=self.device).manual_seed(EVAL_SEED)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """All models in evaluation mode (dropout off, batch-norm running statistics) inside
        the block, and back in the mode each had after it, also when the block raises (blocks
        nest: an analysis may call ``evaluate`` inside its own)."""
        modes = {name: model.training for name, model in self.models.items()}
        for model in self.models.values():
            model.eval()
        try:
            yield
        finally:
            for name, model in self.models.items():
                model.train(modes[name])

    def eval_batches(
        self, split: str, first: int = 0, stop: int | None = None
    ) -> Iterator[tuple[Batch, torch.Generator]]:
        """The evaluation batches ``[first, stop)`` of ``split`` in order, each with the generator
        seeded for that batch (``EVAL_SEED + i``)."""
        gen = self.eval_generator()
        for index, batch in enumerate(self.data.batches(split, train=False).epoch(0, first, stop), first):
            gen.manual_seed(EVAL_SEED + index)
            yield batch, gen

    @torch.no_grad()
    def evaluate(
        self,
        split: str,
        sharded: bool = False,
        transform: Callable[[Batch], Batch] | None = None,
        max_images: int | None = None,
    ) -> dict[str, float]:
        """Metrics of ``split`` with the parameters fixed: sums over all batches, divided once.

        ``sharded`` (every rank calls it: the engine's evaluations): data-parallel ranks each
        evaluate a run of whole batches and add their sums up (one all-reduce), so N ranks take
        1/N of the time. Batch i is the same batch with the same noise whichever rank evaluates
        it, so the totals are a single process's up to the order of the float additions; counts
        are exact. Analyses may ``transform`` each batch (e.g. resize it) and stop after
        ``max_images``.
        """
        if sharded and max_images is not None:
            raise ValueError("evaluate: max_images is for one process, not with sharded=True")
        batches = self.data.batches(split, train=False)
        world = self.parts.world if sharded else 1
        first, stop = eval_shard(len(batches), self.parts.accelerator.process_index, world)
        totals: dict[str, torch.Tensor] = {}
        seen = 0
        with self.evaluating(), self.autocast():
            for batch, gen in self.eval_batches(split, first, stop):
                if max_images is not None:
                    batch = {k: v[: max_images - seen] for k, v in batch.items()}
                    seen += len(batch["images"])
                for k, v in self.task.eval_step(self.models, transform(batch) if transform else batch, gen).items():
                    totals[k] = totals[k] + v if k in totals else v.clone()
                if max_images is not None and seen >= max_images:
                    break
        if world > 1 and stop - first < len(batches):
            totals = sum_over_ranks(totals)
        return mean_of_sums(totals)

    def image_grids(self, split: str) -> dict[str, torch.Tensor]:
        """The task's named images of the first 16 images of ``split`` (TensorBoard grids)."""
        batch = next(self.data.batches(split, train=False).epoch(0))
        batch = {k: v[:16] for k, v in batch.items()}
        with self.evaluating():
            return self.task.images(self.models, batch, self.eval_generator())


def sum_over_ranks(totals: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's metric sums added up (one all-reduce, in float64: counts stay exact)."""
    keys = sorted(totals)
    stacked = torch.stack([totals[k].detach().to(torch.float64) for k in keys])
    torch.distributed.all_reduce(stacked, op=torch.distributed.ReduceOp.SUM)
    return dict(zip(keys, stacked.unbind()))
