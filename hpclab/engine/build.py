"""Build a run's parts from its config: the accelerator, the data, the task, the models on the
device and, for training, their optimizers and learning-rate schedules.

Training and analysis build through the same function (:func:`build_run`); an analysis of a
finished run asks for no optimizers. The benchmarks build models and optimizers for a step
without data through :func:`prepare_models`, the code the training run uses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import InitProcessGroupKwargs, set_seed
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hpclab.data.loader import RunData
from hpclab.optim import OPTIMIZERS, SCHEDULERS, choose
from hpclab.registry import kwargs_of
from hpclab.tasks import TASKS
from hpclab.tasks.base import Task

log = logging.getLogger("hpclab")


@dataclass
class RunParts:
    """A run's config, data, task and models on its accelerator (optimizers when training)."""

    cfg: DictConfig
    accelerator: Accelerator
    data: RunData
    task: Task
    models: dict[str, nn.Module]  # as prepared by accelerate (DDP-wrapped when data parallel)
    optimizers: dict[str, torch.optim.Optimizer]  # accelerate's wrappers; empty for analyses
    schedulers: dict[str, Any]
    steps_per_epoch: int
    total_steps: int

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def unwrap(self, name: str = "model") -> nn.Module:
        """The model itself, without the DDP or compile wrapper (its state_dict has plain keys)."""
        return self.accelerator.unwrap_model(self.models[name])


def make_accelerator(precision: str, collective_timeout_s: int, cpu: bool | None = None) -> Accelerator:
    """A fresh ``Accelerator`` for one run, in mixed ``precision`` (no | fp16 | bf16).

    accelerate keeps one state per process and refuses a second Accelerator with another
    precision; each run starts from a fresh state, so the runs of a local sweep (or a
    benchmark) can share a process. The process group itself is kept. ``cpu=True`` without a
    GPU (by default), else accelerate ignores WORLD_SIZE on a CPU-only machine and every process
    trains alone. The collective timeout makes a rank whose peers died stop with an error instead of
    waiting until the job's time limit.
    """
    AcceleratorState._reset_state()
    GradientState._reset_state()
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=collective_timeout_s))
    accelerator = Accelerator(
        mixed_precision=precision,
        step_scheduler_with_optimizer=False,
        cpu=not torch.cuda.is_available() if cpu is None else cpu,
        kwargs_handlers=[timeout],
    )
    if accelerator.device.type == "cpu":
        keep_freed_memory()
    return accelerator


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse instead of returning large blocks to
    the OS at once. By default every CPU training step gives its activation buffers back and
    page-faults them in again (about 20,000 minor faults a step for the ae_latent conv AE):
    measured 8-14% of the step time on the CIFAR-size CNN. Process-wide; True when applied."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # blocks up to 32 MiB (glibc's maximum) from the heap, and the heap top trimmed only past 1 GiB
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def build_optimizer(params: Iterator[nn.Parameter], o: DictConfig, fused: bool) -> torch.optim.Optimizer:
    """The optimizer ``o.name`` of :data:`hpclab.optim.OPTIMIZERS` (fused kernels on CUDA where it has them)."""
    # train.optimizer.name is checked with the config; a task's own optimizer configs are checked here
    return choose(OPTIMIZERS, "optimizer.name", o.name)(params, o, fused)


def build_scheduler(opt: torch.optim.Optimizer, s: DictConfig, lr: float, total_steps: int) -> Any:
    """The per-step LR schedule ``s.name`` of :data:`hpclab.optim.SCHEDULERS` (with its warm-up)."""
    return choose(SCHEDULERS, "scheduler.name", s.name)(opt, s, lr, total_steps)


def prepare_models(
    accelerator: Accelerator,
    task: Task,
    models: dict[str, nn.Module],
    train: DictConfig,
    total_steps: int,
    optimize: bool = True,
) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer], dict[str, Any]]:
    """Move the task's models to the device (channels_last, torch.compile as configured) and,
    with ``optimize``, give each model the task trains its optimizer and schedule; all through
    ``accelerator.prepare`` (DDP when data parallel)."""
    opt_cfgs = task.optimizer_configs(train.optimizer, list(models)) if optimize else {}
    fused = accelerator.device.type == "cuda"
    prepared: dict[str, nn.Module] = {}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    schedulers: dict[str, Any] = {}
    for name, model in models.items():
        if train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model = model.to(accelerator.device)
        if name in opt_cfgs:
            opt = build_optimizer((p for p in model.parameters() if p.requires_grad), opt_cfgs[name], fused)
            sched = build_scheduler(opt, train.scheduler, opt_cfgs[name].lr, total_steps)
            model, opt, sched = accelerator.prepare(model, opt, sched)
            optimizers[name], schedulers[name] = opt, sched
        else:
            model = accelerator.prepare(model)
        if train.compile:
            model = torch.compile(model)
        prepared[name] = model
    return prepared, optimizers, schedulers


def build_run(cfg: DictConfig, optimize: bool = True) -> RunParts:
    """Everything a run needs, seeded from ``cfg.seed`` (per rank), in a fixed order so the same
    config builds the same initial weights. ``optimize=False``: no optimizers or schedules
    (evaluating or analysing a finished run)."""
    accelerator = make_accelerator(cfg.train.mixed_precision, cfg.cluster.collective_timeout_s)
    set_seed(cfg.seed, device_specific=True)
    data = RunData(cfg, accelerator.device, accelerator.process_index, accelerator.num_processes)
    task = TASKS.build(cfg.task.name, kwargs_of(cfg.task))
    raw = task.build_models(OmegaConf.to_container(cfg.model, resolve=True), data.info)
    steps_per_epoch = len(data.batches("train", train=True))
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    models, optimizers, schedulers = prepare_models(accelerator, task, raw, cfg.train, total_steps, optimize)
    return RunParts(cfg, accelerator, data, task, models, optimizers, schedulers, steps_per_epoch, total_steps)
