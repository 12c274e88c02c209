"""Optimizers and learning-rate schedules by name (``train.optimizer.name``,
``train.scheduler.name``): the one list of the names a config may use.

Config validation refuses a name neither registry has, and the engine builds through the same
entries, so a new optimizer or schedule is one registered function here. Each entry makes the
torch object from its config section (:class:`hpclab.config.OptimizerConfig`,
:class:`hpclab.config.SchedulerConfig`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from hpclab.errors import ConfigError
from hpclab.registry import Registry

LR = torch.optim.lr_scheduler

# name -> (params, optimizer config, fused) -> torch optimizer
OPTIMIZERS = Registry("optimizer")
# name -> (optimizer, scheduler config, peak lr, total steps) -> per-step torch LR scheduler
SCHEDULERS = Registry("scheduler")


def choose(registry: Registry, key: str, name: Any) -> Callable[..., Any]:
    """The entry ``name`` of ``registry``, or one line naming config ``key`` and every known name."""
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(f"config key '{key}': {name!r} is not one of {', '.join(registry)}")
    return registry[name]


@OPTIMIZERS.register("adam")
def adam(params: Iterable[nn.Parameter], o: Any, fused: bool) -> torch.optim.Optimizer:
    """Adam (fused kernels on CUDA)."""
    return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **_fused(fused))


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable[nn.Parameter], o: Any, fused: bool) -> torch.optim.Optimizer:
    """AdamW, decoupled weight decay (fused kernels on CUDA)."""
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **_fused(fused))


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable[nn.Parameter], o: Any, fused: bool) -> torch.optim.Optimizer:
    """SGD, Nesterov momentum when ``momentum`` > 0."""
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.momentum > 0)


def _fused(fused: bool) -> dict[str, bool]:
    return {"fused": True} if fused else {}


@SCHEDULERS.register("none")
def constant(opt: torch.optim.Optimizer, s: Any, lr: float, total_steps: int) -> Any:
    """The optimizer's rate throughout (after the warm-up, if any)."""
    return with_warmup(opt, s, LR.ConstantLR(opt, factor=1.0, total_iters=0))


@SCHEDULERS.register("cosine")
def cosine(opt: torch.optim.Optimizer, s: Any, lr: float, total_steps: int) -> Any:
    """Cosine decay to 0 over the steps after the warm-up."""
    return with_warmup(opt, s, LR.CosineAnnealingLR(opt, T_max=max(total_steps - s.warmup_steps, 1)))


@SCHEDULERS.register("onecycle")
def onecycle(opt: torch.optim.Optimizer, s: Any, lr: float, total_steps: int) -> Any:
    """One cycle up to ``lr`` over ``pct_start`` of the run and down again; its own warm-up
    (``warmup_steps`` is not added)."""
    # torch divides by the warm-up length in steps, which is 0 when pct_start * total is 1:
    # very short runs (smoke tests) warm up over at least 2 steps
    total = max(total_steps, 4)
    return LR.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=max(s.pct_start, 2 / total))


@SCHEDULERS.register("step")
def step(opt: torch.optim.Optimizer, s: Any, lr: float, total_steps: int) -> Any:
    """The rate times ``gamma`` every ``step_size`` steps."""
    return with_warmup(opt, s, LR.StepLR(opt, step_size=s.step_size, gamma=s.gamma))


def with_warmup(opt: torch.optim.Optimizer, s: Any, main: Any) -> Any:
    """``main`` after a linear warm-up from 1e-3 of the rate over ``s.warmup_steps`` (none when 0)."""
    if s.warmup_steps > 0:
        warm = LR.LinearLR(opt, start_factor=1e-3, total_iters=s.warmup_steps)
        return LR.SequentialLR(opt, [warm, main], milestones=[s.warmup_steps])
    return main
