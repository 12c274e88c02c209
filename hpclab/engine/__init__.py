"""The one training engine, on HuggingFace accelerate. Its parts, in reading order:

- :mod:`~hpclab.engine.build`: the accelerator, data, task, models and optimizers of a run;
- :mod:`~hpclab.engine.steps`: the optimizer step a task's ``train_step`` drives;
- :mod:`~hpclab.engine.checkpoints`: save, rotate, validate and resume; the best weights;
- :mod:`~hpclab.engine.runlog`: metrics.jsonl, TensorBoard, progress;
- :mod:`~hpclab.engine.evaluation`: the (sharded) evaluation and :class:`TrainedRun`, the
  handle analyses receive;
- :mod:`~hpclab.engine.signals`: SLURM's stop signals as a checkpoint at a step boundary;
- :mod:`~hpclab.engine.trainer`: the loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from hpclab.engine.build import RunParts, build_run
from hpclab.engine.checkpoints import Checkpointer, RunState
from hpclab.engine.evaluation import TrainedRun
from hpclab.engine.runlog import RunLog
from hpclab.engine.trainer import Trainer
from hpclab.errors import ConfigError

__all__ = ["Trainer", "TrainedRun", "RunParts", "build_run", "load_trained"]


@contextmanager
def load_trained(cfg: DictConfig, run_dir: Path | str) -> Iterator[TrainedRun]:
    """A finished (or interrupted) run with its weights as after training: the newest readable
    checkpoint (step, best-so-far, RNG), then the best weights when the run kept any. Builds no
    optimizers; reads but does not write the run folder (bar setting aside an unusable file)."""
    run_dir = Path(run_dir)
    parts = build_run(cfg, optimize=False)
    state = RunState()
    log = RunLog(run_dir, parts.is_main, parts.steps_per_epoch)
    checkpointer = Checkpointer(run_dir, parts, state, keep=cfg.train.keep_checkpoints)
    try:
        resumed = checkpointer.resume(training=False)
        if not checkpointer.load_best() and not resumed:
            raise ConfigError(f"{run_dir} has no trained weights (no readable checkpoint); train it first")
        yield TrainedRun(parts, run_dir, state, log)
    finally:
        log.close()
        parts.accelerator.end_training()
