"""Preemption: SLURM's stop signals turned into a checkpoint at the next step boundary."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

import torch

from hpclab.errors import Preempted
from hpclab.utils import can_set_signal_handlers

log = logging.getLogger("hpclab")


class StopSignals:
    """Turn SIGUSR2 (SLURM's pre-timeout signal, ``scancel -s USR2``) and SIGTERM (preemption,
    ``scontrol requeue``, ``scancel``) into a flag the hot loop checks between steps, so the
    checkpoint is written at a step boundary and no finished step is lost.

    After the checkpoint, :meth:`hand_over` passes the signal to the handler installed before
    ours: submitit's (USR2: ``TrainJob.checkpoint()`` and requeue; SIGTERM: ignored) or the
    sbatch tasks' ``JobSignals`` (USR2: requeue; both: exit) or, for ``jobs/launch.py`` run by
    hand inside a job, the launch layer's ``requeue_on_usr2``. With no handler before ours,
    training stops with :class:`Preempted`.
    Data-parallel ranks agree on the stop step through :meth:`pending` (SLURM signals every
    task, but not at the same step).
    """

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
    SYNC_EVERY = 10  # steps between the cross-rank checks of data-parallel runs (one all-reduce)

    def __init__(self, resume_hint: str = "the same command resumes from there") -> None:
        self.resume_hint = resume_hint  # what the user types to resume (force=true would start over)
        self.received: int | None = None
        self.previous: dict[int, Any] = {}
        self.handed_over = False

    def install(self) -> StopSignals:
        if not can_set_signal_handlers():
            return self
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.warning("received %s: checkpointing at the next step boundary", signal.Signals(signum).name)
        if self.received is None or signum == signal.SIGTERM:  # TERM (kill coming) outranks USR2
            self.received = signum

    def pending(self, accelerator: Any = None, step: int = 0) -> bool:
        """Stop at this step boundary? Single process: whether a signal arrived. Data parallel:
        every ``SYNC_EVERY`` steps all ranks share what they received (max of the signal
        numbers), so they checkpoint and stop at the same step."""
        if accelerator is None or accelerator.num_processes == 1:
            return self.received is not None
        if step % self.SYNC_EVERY:
            return False
        flag = torch.tensor([self.received or 0], dtype=torch.int64, device=accelerator.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        signum = int(flag.item())
        if signum and self.received is None:
            self.received = signum  # another rank got it
        return bool(signum)

    def restore(self, hand_over: bool = True) -> None:
        """Put the previous handlers back. A signal that arrived too late for the loop to see it
        (during the last checkpoint) is handed over now rather than lost, unless training raised
        (``hand_over=False``): then the error is the outcome, not the stop."""
        previous = dict(self.previous)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        self.previous.clear()
        if hand_over and self.received is not None and not self.handed_over and previous:
            self.handed_over = True
            self._deliver(self.received, previous.get(self.received))

    def hand_over(self, step: int) -> None:
        """After the checkpoint: pass the signal on (see the class doc), then stop training."""
        signum = self.received
        assert signum is not None
        previous = self.previous.get(signum)
        self.handed_over = True
        self.restore()
        self._deliver(signum, previous)
        raise Preempted(f"{signal.Signals(signum).name}: checkpointed at step {step}; {self.resume_hint}")

    @staticmethod
    def _deliver(signum: int, previous: Any) -> None:
        if callable(previous):
            previous(signum, None)  # submitit, JobSignals or requeue_on_usr2: requeue and/or exit


@contextlib.contextmanager
def stop_at_once(what: str) -> Iterator[None]:
    """While in the block (work after training, such as the analyses, that has no step
    boundary to wait for): SIGTERM or SIGUSR2 first goes to the handler installed before (a
    SLURM job's requeue), then stops the block with :class:`Preempted` and ``what`` as the
    message, so the command ends with one line and its exit code instead of being killed
    mid-way with the run locked. Elsewhere than the main thread nothing changes."""
    if not can_set_signal_handlers():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS}

    def stop(signum: int, frame: Any) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        StopSignals._deliver(signum, previous.get(signum))
        raise Preempted(f"{signal.Signals(signum).name} {what}")

    for sig in StopSignals.SIGNALS:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
