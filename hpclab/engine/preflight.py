"""Checks of a run that need its data, task and models, made before its folder is written.

A run that would fail at step 0, or after hours at its first evaluation, fails here in one
line instead: the model is built on the run's data and fed one batch of two real images (a
shape mismatch is found now, not as a traceback), the splits the run evaluates exist, the
metric ``train.monitor`` and ``train.stop.metric`` name is one the task reports, and a task
that learns from labels gets labels within its classes. Everything runs on the CPU, in
evaluation mode, with its own generator: the run's own random streams are not touched.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from hpclab.data.loader import RunData
from hpclab.errors import ConfigError
from hpclab.registry import kwargs_of
from hpclab.tasks import TASKS
from hpclab.utils import one_line

SHAPE_ERRORS = (RuntimeError, ValueError, IndexError)  # what torch raises on a model/data mismatch


def preflight(cfg: DictConfig) -> set[str]:
    """Check ``cfg`` against its data, task and models (see the module doc); return the splits
    the run's data has, for the checks of its analyses."""
    data = RunData(cfg, torch.device("cpu"))
    available = {name for name in data.indices if data.has(name)}
    _check_splits_exist(cfg, available, data)
    task = TASKS.build(cfg.task.name, kwargs_of(cfg.task))
    if getattr(task, "uses_labels", False):
        for split in sorted({"train", *cfg.train.eval_splits, *cfg.train.final_splits} & available):
            _check_labels(data, split)
    models = task.build_models(OmegaConf.to_container(cfg.model, resolve=True), data.info)
    split = next(s for s in (*cfg.train.eval_splits, "train") if s in available)
    batch = data.sample(split)
    try:
        for model in models.values():
            model.eval()
        with torch.no_grad():
            metrics = task.eval_step(models, batch, torch.Generator().manual_seed(0))
    except SHAPE_ERRORS as exc:
        shape = "x".join(str(d) for d in batch["images"].shape[1:])
        raise ConfigError(
            f"model '{cfg.model.name}' cannot run task '{cfg.task.name}' on {data.path.name} "
            f"({shape} images): {one_line(exc)}; check the model's sizes against the data "
            f"(data.image_size=... resizes it at staging)"
        ) from None
    names = sorted(k for k in metrics if k != "count")
    _check_metric("train.monitor", cfg.train.monitor, names, cfg.train.eval_splits, allow_none=True)
    if cfg.train.stop.metric:
        _check_metric("train.stop.metric", cfg.train.stop.metric, names, cfg.train.eval_splits)
    return available


def _check_splits_exist(cfg: DictConfig, available: set[str], data: RunData) -> None:
    """Every final split exists (it is what the run reports), and so does the split of the
    monitored and the early-stop metric; other evaluation splits the data lacks are skipped."""
    missing = [s for s in cfg.train.final_splits if s not in available]
    if missing:
        raise ConfigError(
            f"config key 'train.final_splits': {data.path.name} has no '{missing[0]}' split after the "
            f"data options (it has {', '.join(sorted(available))}); name splits it has"
        )
    for key, value in (("train.monitor", cfg.train.monitor), ("train.stop.metric", cfg.train.stop.metric)):
        split = str(value).split("/", 1)[0]
        if value and value != "none" and split not in available:
            hint = "data.val_fraction > 0 holds one out of train, or " if split == "val" else ""
            raise ConfigError(
                f"config key '{key}': {data.path.name} has no '{split}' split after the data options "
                f"(it has {', '.join(sorted(available))}); {hint}name a split it has"
                f"{' or none (keep the last weights)' if key == 'train.monitor' else ''}"
            )


def _check_labels(data: RunData, split: str) -> None:
    """Labels of a split a classifier learns from or is scored on: present and within the classes."""
    labels = data.labels(split)
    classes = data.info.num_classes
    if labels is None:
        raise ConfigError(f"{data.path.name}: split '{split}' has no labels, and task classify learns from labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        bad = int(labels[(labels < 0) | (labels >= classes)][0])
        raise ConfigError(
            f"{data.path.name}: split '{split}' has label {bad}, outside the {classes} class(es) "
            f"{'(-1 marks an unlabelled image) ' if bad == -1 else ''}a classifier can learn; "
            f"re-stage the data or choose data.classes=[...]"
        )


def _check_metric(key: str, value: Any, names: list[str], splits: Any, allow_none: bool = False) -> None:
    if allow_none and value == "none":
        return
    split, _, metric = str(value).partition("/")
    if split in splits and metric in names:
        return
    known = [f"{s}/{n}" for s in splits for n in names]
    close = difflib.get_close_matches(str(value), known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ConfigError(
        f"config key '{key}': {value!r} is not a metric this run evaluates; {hint}"
        f"known: {', '.join(known)}{', none' if allow_none else ''}"
    )
