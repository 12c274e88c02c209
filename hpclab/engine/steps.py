"""What a task's ``train_step`` drives: the models, autocast, and one optimizer step per model."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Mixed precision for a block, as ``Accelerator.autocast`` gives it for ``precision``
    (no | fp16 | bf16); from the precision itself rather than accelerate's per-process state,
    so steps of several precisions can share a process (the benchmarks)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


class Stepper:
    """Backward, gradient clipping, optimizer and schedule step for named models.

    accelerate's optimizer wrapper and backward cost ~0.3 ms on every step (the wrapper probes
    for the lomo_optim package twice per step; backward divides the loss by the accumulation
    steps). They are needed only for a loss scaler (fp16), DeepSpeed/Megatron or gradient
    accumulation; without those the step calls torch directly (DDP's gradient hooks run
    either way).
    """

    def __init__(
        self,
        accelerator: Accelerator,
        models: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        schedulers: dict[str, Any],
        precision: str,
        grad_clip: float | None = None,
        channels_last: bool = False,
    ) -> None:
        self.accelerator = accelerator
        self.models, self.optimizers, self.schedulers = models, optimizers, schedulers
        self.precision, self.grad_clip, self.channels_last = precision, grad_clip, channels_last
        self.direct = (
            accelerator.scaler is None
            and accelerator.gradient_accumulation_steps == 1
            and accelerator.distributed_type
            in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
        )

    def autocast(self) -> AbstractContextManager:
        return autocast(self.accelerator.device, self.precision)

    def step(self, loss: torch.Tensor, name: str, retain_graph: bool = False) -> None:
        """Backward, clip, optimizer and scheduler step for model ``name``."""
        opt = self.optimizers[name]
        if self.direct:
            opt = opt.optimizer  # the torch optimizer inside accelerate's wrapper
        opt.zero_grad(set_to_none=True)
        if self.direct:
            loss.backward(retain_graph=retain_graph)
        else:
            self.accelerator.backward(loss, retain_graph=retain_graph)
        if self.grad_clip:
            self.accelerator.clip_grad_norm_(self.models[name].parameters(), self.grad_clip)
        opt.step()
        self.schedulers[name].step()

    def learning_rate(self) -> float:
        """The first optimizer's current learning rate (logged with the training metrics)."""
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]
