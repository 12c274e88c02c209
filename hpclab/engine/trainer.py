"""The training loop: fit one run's models, evaluating, logging and checkpointing as it goes.

Restarting is the same code path as starting: :meth:`Trainer.fit` first resumes from the
newest good checkpoint of the run (:mod:`hpclab.engine.checkpoints`), so a resumed CPU run ends
with exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from hpclab.data.loader import rank_batch_size
from hpclab.engine.build import build_run
from hpclab.engine.checkpoints import Checkpointer, RunState
from hpclab.engine.evaluation import TrainedRun, mean_of_sums
from hpclab.engine.runlog import RunLog, format_values
from hpclab.engine.signals import StopSignals
from hpclab.engine.steps import Stepper
from hpclab.errors import NonFiniteLoss, RankLost
from hpclab.rundir import step_checkpoints
from hpclab.utils import one_line

log = logging.getLogger("hpclab")


class Trainer:
    """Fit one run's models on one run's data, writing everything under ``run_dir``."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.parts = p = build_run(cfg)
        t = cfg.train
        self.state = RunState()
        self.log = RunLog(self.run_dir, p.is_main, p.steps_per_epoch, p.total_steps, rank_batch_size(cfg, p.world))
        self.run = TrainedRun(p, self.run_dir, self.state, self.log)
        self.stepper = Stepper(
            p.accelerator, p.models, p.optimizers, p.schedulers, t.mixed_precision, t.grad_clip, t.channels_last
        )
        self.checkpoints = Checkpointer(self.run_dir, p, self.state, t.keep_checkpoints)
        starts_over = bool(cfg.force) or t.resume == "never"
        self.signals = StopSignals(
            "run the same command without force=true (and without train.resume=never) to resume from there"
            if starts_over
            else "the same command resumes from there"
        )
        self.eval_every = t.eval_every or p.steps_per_epoch
        self.ckpt_every = t.checkpoint_every or self.eval_every
        self.image_every = t.image_every or self.eval_every
        batch = rank_batch_size(cfg, p.world)
        log.info(
            "accelerate: %d process(es), device %s, mixed precision %s; %d steps (%d per epoch), batch %d per "
            "rank (global %d)",
            p.world,
            p.device,
            t.mixed_precision,
            p.total_steps,
            p.steps_per_epoch,
            batch,
            batch * p.world,
        )

    def fit(self) -> dict[str, Any]:
        """Train to the end (or early stop), resuming first; return the final metrics. A rank
        that loses its data-parallel peers stops with :class:`RankLost` (one line)."""
        try:
            return self._fit()
        except RuntimeError as exc:  # gloo/NCCL report a dead or silent peer as RuntimeError
            if self.parts.world == 1 or isinstance(exc, RankLost) or not lost_peer(exc):
                raise
            kept = step_checkpoints(self.run_dir)
            raise RankLost(
                f"rank {self.parts.accelerator.process_index} of {self.parts.world} lost the other ranks at "
                f"step {self.state.step} ({one_line(exc)[:200]}): a rank died, or hung for more than "
                f"cluster.collective_timeout_s={self.cfg.cluster.collective_timeout_s} s; "
                + (
                    f"resubmit the job to resume from {kept[0].name}"
                    if kept
                    else "no checkpoint yet: resubmit the job to start it again"
                )
            ) from None

    def _fit(self) -> dict[str, Any]:
        t = self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if t.resume != "never":
            self.checkpoints.resume()
        self.log.start(self.state.step)
        self.signals.install()
        bar = self.log.progress_bar(t.progress, self.parts.total_steps, self.state.step, self.cfg.run_name)
        try:
            self._train(bar)
        except BaseException:  # e.g. a lost rank while srun's SIGTERM is pending: RankLost, not a stop
            self.signals.restore(hand_over=False)
            raise
        finally:
            self.signals.restore()
            if bar is not None:
                bar.close()
        return self.finish()

    def _train(self, bar: Any) -> None:
        """The loop: one task step per batch, then whatever this step is due for."""
        state, task, total = self.state, self.parts.task, self.parts.total_steps
        batches = self.parts.data.batches("train", train=True)
        started, images = time.perf_counter(), 0
        epoch, skip = divmod(state.step, self.parts.steps_per_epoch)
        while state.step < total and not state.stopped:
            for batch in batches.epoch(epoch, skip):
                for k, v in task.train_step(self.stepper, batch).items():  # sums stay on the device
                    state.running[k] = state.running[k] + v if k in state.running else v.detach().clone()
                state.step += 1
                images += len(next(iter(batch.values())))
                if bar is not None:
                    bar.update(1)
                if state.step % self.cfg.train.log_every == 0 or state.step >= total:
                    self._log_training(images / max(time.perf_counter() - started, 1e-9), bar)
                if self._after_step():
                    return
            epoch, skip = epoch + 1, 0

    def _after_step(self) -> bool:
        """Evaluate, draw, checkpoint and stop as this step is due; True when training is over."""
        step, last = self.state.step, self.state.step >= self.parts.total_steps
        if step % self.eval_every == 0 or last:
            self.run_evaluation()
        if step % self.image_every == 0 or last:
            self._log_images()
        stop_signal = self.signals.pending(self.parts.accelerator, step)
        if step % self.ckpt_every == 0 or last or self.state.stopped or stop_signal:
            finite_means(self.state.running, step, self.run_dir)  # never checkpoint a diverged run
            self.checkpoints.save()
        if stop_signal:
            self.signals.hand_over(step)  # raises Preempted
        return last or bool(self.state.stopped)

    def _log_training(self, images_per_s: float, bar: Any) -> None:
        values = finite_means(self.state.running, self.state.step, self.run_dir)
        self.state.running.clear()
        values["images_per_s"] = images_per_s
        values["lr"] = self.stepper.learning_rate()
        self.log.metrics(self.state.step, "fit", values)
        if bar is not None:
            bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4g}")
        else:
            log.info(
                "step %d/%d %s %s",
                self.state.step,
                self.parts.total_steps,
                format_values(values),
                self.log.timing(self.state.step),
            )

    def _log_images(self) -> None:
        split = "val" if self.parts.data.has("val") else "test"
        if self.parts.is_main and self.parts.data.has(split):
            self.log.images(self.state.step, self.run.image_grids(split))

    def run_evaluation(self) -> dict[str, float]:
        """Evaluate ``train.eval_splits``, log them, keep the best weights by ``train.monitor``
        and note an early stop when ``train.stop`` is crossed."""
        t, state = self.cfg.train, self.state
        values: dict[str, float] = {}
        for split in t.eval_splits:
            if self.parts.data.has(split):
                result = self.run.evaluate(split, sharded=True)
                self.log.metrics(state.step, split, result)
                values.update({f"{split}/{k}": v for k, v in result.items()})
        if values:
            log.info("step %d eval: %s", state.step, format_values(values))
        check_finite(values, f"evaluation at step {state.step}", self.run_dir)
        current = values.get(t.monitor)
        if current is not None and (
            state.best["value"] is None
            or (current < state.best["value"] if t.monitor_mode == "min" else current > state.best["value"])
        ):
            state.best = {"value": current, "step": state.step}
            self.checkpoints.save_best()
        crossed = values.get(t.stop.metric) if t.stop.metric and t.stop.threshold is not None else None
        if crossed is not None and (
            (crossed < t.stop.threshold) if t.stop.mode == "min" else (crossed > t.stop.threshold)
        ):
            state.stopped = f"{t.stop.metric}={crossed:.5g} crossed {t.stop.threshold} at step {state.step}"
            log.info("early stop: %s", state.stopped)
        return values

    def finish(self) -> dict[str, Any]:
        """Evaluate the best (or last) weights on the final splits."""
        used_best = self.checkpoints.load_best()
        final: dict[str, Any] = {}
        for split in self.cfg.train.final_splits:
            if self.parts.data.has(split):
                result = self.run.evaluate(split, sharded=True)
                self.log.metrics(self.state.step, f"final_{split}", result)
                final.update({f"{split}/{k}": v for k, v in result.items()})
        check_finite(final, f"final evaluation ({'best' if used_best else 'last'} weights)", self.run_dir)
        self.log.hparams(self.cfg, final)
        log.info("final (%s weights): %s", "best" if used_best else "last", format_values(final))
        return {
            "metrics": final,
            "steps": self.state.step,
            "epochs": round(self.state.step / self.parts.steps_per_epoch, 3),
            "best": self.state.best,
            "stopped_early": self.state.stopped,
            "weights": "best" if used_best else "last",
        }

    def close(self) -> None:
        self.log.close()
        self.parts.accelerator.end_training()


def finite_means(running: dict[str, torch.Tensor], step: int, run_dir: Path) -> dict[str, float]:
    """The running metric sums as means; a clear error (before any checkpoint) if non-finite."""
    values = mean_of_sums(running)
    check_finite(values, f"training metrics at step {step}", run_dir)
    return values


def check_finite(values: dict[str, float], what: str, run_dir: Path) -> None:
    """Stop with one line when a metric is NaN or infinite: a diverged run is never checkpointed,
    kept as best or reported as completed."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        kept = step_checkpoints(run_dir)
        raise NonFiniteLoss(
            f"non-finite {what}: {format_values(bad)}; "
            + (f"the last good checkpoint {kept[0].name} is kept" if kept else "no checkpoint was written")
            + " (lower train.optimizer.lr or set train.grad_clip, then run again with force=true)"
        )


# What torch.distributed's backends say when a peer is gone (gloo: the socket closed, a timeout;
# NCCL: a watchdog timeout or a remote error); DistError is their base class in torch >= 2.2.
_PEER_ERRORS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Connection refused",
    "Timed out",
    "timed out",
    "Broken pipe",
    "NCCL communicator was aborted",
    "remote process exited",
    "Socket Timeout",
    "pair closure",
    "Application timeout",
    "ProcessGroupGloo",
    "ProcessGroupNCCL",
    "gloo",
    "NCCL error",
)


def lost_peer(exc: BaseException) -> bool:
    """Whether a collective failed because another rank is gone or silent."""
    dist_error = getattr(torch.distributed, "DistError", ())
    return (bool(dist_error) and isinstance(exc, dist_error)) or any(text in str(exc) for text in _PEER_ERRORS)
