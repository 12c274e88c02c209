"""The one training engine: accelerate-based fit / evaluate / checkpoint / resume / log.

Restarting is the same code path as starting: ``fit`` always looks for the newest good
checkpoint of the run first. Checkpoints are single files written atomically and loaded with
``weights_only=True``; they hold models, optimizers, schedulers, the grad scaler, RNG states and
the step, so a resumed CPU run ends with exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import signal
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType, InitProcessGroupKwargs, set_seed
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hpclab.checkpointing import (capture_rng_ranks, checkpoints, rank_rng, restore_rng, set_aside, state_problems,
                                  step_path)
from hpclab.data.loader import Data, eval_shard, rank_batch_size
from hpclab.errors import CheckpointWriteError, ConfigError, NonFiniteLoss, Preempted, RankLost
from hpclab.registry import kwargs_of
from hpclab.tasks import TASKS
from hpclab.utils import atomic_path, atomic_write_text, can_set_signal_handlers, flatten, read_jsonl, under_slurm

log = logging.getLogger("hpclab")

Batch = dict[str, torch.Tensor]  # one batch of a split: images (and labels, masks) on the device

EVAL_SEED = 1234  # evaluation noise: batch i of a split is corrupted with seed EVAL_SEED + i

# --------------------------------------------------------------------------- preemption signals

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

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.previous: dict[int, Any] = {}
        self.handed_over = False

    def install(self) -> "StopSignals":
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
        raise Preempted(f"{signal.Signals(signum).name}: checkpointed at step {step}; "
                        f"the same command resumes from there")

    @staticmethod
    def _deliver(signum: int, previous: Any) -> None:
        if callable(previous):
            previous(signum, None)  # submitit, JobSignals or requeue_on_usr2: requeue and/or exit


# --------------------------------------------------------------------------- optimisation

def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse instead of returning large blocks to
    the OS at once. By default every CPU training step gives its activation buffers back and
    page-faults them in again (about 20,000 minor faults a step for the ae_latent conv AE):
    measured 8-14% of the step time on the CIFAR-size CNN. Process-wide; True when applied."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # blocks up to 32 MiB (glibc's maximum) from the heap, and the heap top trimmed only past 1 GiB
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def build_optimizer(params: Iterator[nn.Parameter], o: DictConfig, fused: bool) -> torch.optim.Optimizer:
    """Adam / AdamW (fused kernels on CUDA) or Nesterov SGD from ``train.optimizer``."""
    extra = {"fused": True} if fused else {}
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **extra)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **extra)
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.momentum > 0)
    # train.optimizer.name is checked with the config; a task's own optimizer configs are not
    raise ConfigError(f"config key 'optimizer.name': {o.name!r} is not one of adam, adamw, sgd")


def build_scheduler(opt: torch.optim.Optimizer, s: DictConfig, lr: float, total_steps: int):
    """A per-step LR schedule from ``train.scheduler`` (optionally after a linear warm-up)."""
    if s.name == "onecycle":
        # torch divides by the warm-up length in steps, which is 0 when pct_start * total is 1:
        # very short runs (smoke tests) warm up over at least 2 steps
        total = max(total_steps, 4)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=max(s.pct_start, 2 / total))
    if s.name == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps - s.warmup_steps, 1))
    elif s.name == "step":
        main = torch.optim.lr_scheduler.StepLR(opt, step_size=s.step_size, gamma=s.gamma)
    else:
        main = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    if s.warmup_steps > 0:
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-3, total_iters=s.warmup_steps)
        return torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], milestones=[s.warmup_steps])
    return main


# --------------------------------------------------------------------------- the trainer

class Trainer:
    """Fit one run's models on one run's data, writing everything under ``run_dir``."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        t = cfg.train
        # accelerate keeps one AcceleratorState per process and refuses a second Accelerator with
        # another precision; each Trainer is one run, so runs of a local sweep (or a benchmark) in
        # one process start from a fresh state. The process group (PartialState) is kept.
        AcceleratorState._reset_state()
        GradientState._reset_state()
        # cpu=True when there is no GPU: otherwise accelerate ignores WORLD_SIZE on a CPU-only
        # machine and every process trains alone
        # The collective timeout: a rank whose peers died or hang stops with RankLost instead of
        # waiting until the job's time limit (it applies when the process group is created).
        timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.cluster.collective_timeout_s))
        self.accelerator = Accelerator(mixed_precision=t.mixed_precision, step_scheduler_with_optimizer=False,
                                       cpu=not torch.cuda.is_available(), kwargs_handlers=[timeout])
        self.device = self.accelerator.device
        if self.device.type == "cpu":
            keep_freed_memory()
        self.is_main = self.accelerator.is_main_process
        set_seed(cfg.seed, device_specific=True)
        self.data = Data(cfg, self.device, self.accelerator.process_index, self.accelerator.num_processes)
        self.task = TASKS.build(cfg.task.name, kwargs_of(cfg.task))
        models = self.task.build_models(OmegaConf.to_container(cfg.model, resolve=True), self.data.info)
        self.train_batches = self.data.batches("train", train=True)
        self.steps_per_epoch = len(self.train_batches)
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        self.eval_every = t.eval_every or self.steps_per_epoch
        self.ckpt_every = t.checkpoint_every or self.eval_every
        self.image_every = t.image_every or self.eval_every
        fused = self.device.type == "cuda"
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        opt_cfgs = self.task.optimizer_configs(t.optimizer, list(models))
        for name, model in models.items():
            if t.channels_last:
                model = model.to(memory_format=torch.channels_last)
            model = model.to(self.device)
            if name in opt_cfgs:
                opt = build_optimizer((p for p in model.parameters() if p.requires_grad), opt_cfgs[name], fused)
                sched = build_scheduler(opt, t.scheduler, opt_cfgs[name].lr, self.total_steps)
                model, opt, sched = self.accelerator.prepare(model, opt, sched)
                self.optimizers[name], self.schedulers[name] = opt, sched
            else:
                model = self.accelerator.prepare(model)
            if t.compile:
                model = torch.compile(model)
            self.models[name] = model
        # accelerate's optimizer wrapper and backward cost ~0.3 ms on every step (the wrapper
        # probes for the lomo_optim package twice per step; backward divides the loss by the
        # accumulation steps). They are needed only for a loss scaler (fp16), DeepSpeed/Megatron
        # or gradient accumulation; without those the step calls torch directly (DDP's gradient
        # hooks run either way).
        acc = self.accelerator
        self.direct_steps = (acc.scaler is None and acc.gradient_accumulation_steps == 1 and acc.distributed_type in
                             (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU))
        self.step_count = 0
        self.best: dict[str, Any] = {"value": None, "step": None}
        self.stopped: Optional[str] = None
        self.running: dict[str, torch.Tensor] = {}
        self.signals = StopSignals()
        self._writer = None
        self._tb_purge_step: Optional[int] = None
        self._metrics_file = self.run_dir / "metrics.jsonl"
        world = self.accelerator.num_processes
        log.info("accelerate: %d process(es), device %s, mixed precision %s; %d steps (%d per epoch), batch %d per "
                 "rank (global %d)", world, self.device, t.mixed_precision, self.total_steps, self.steps_per_epoch,
                 rank_batch_size(cfg, world), rank_batch_size(cfg, world) * world)

    # ---- helpers used by tasks
    def autocast(self):
        return self.accelerator.autocast()

    def step(self, loss: torch.Tensor, name: str, retain_graph: bool = False) -> None:
        """Backward, clip, optimizer and scheduler step for model ``name``."""
        opt = self.optimizers[name]
        if self.direct_steps:
            opt = opt.optimizer  # the torch optimizer inside accelerate's wrapper
        opt.zero_grad(set_to_none=True)
        if self.direct_steps:
            loss.backward(retain_graph=retain_graph)
        else:
            self.accelerator.backward(loss, retain_graph=retain_graph)
        if self.cfg.train.grad_clip:
            self.accelerator.clip_grad_norm_(self.models[name].parameters(), self.cfg.train.grad_clip)
        opt.step()
        self.schedulers[name].step()

    def unwrap(self, name: str = "model") -> nn.Module:
        return self.accelerator.unwrap_model(self.models[name])

    # ---- logging
    @property
    def writer(self):
        if self._writer is None and self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self._tb_purge_step)
        return self._writer

    def log_metrics(self, split: str, values: dict[str, float]) -> None:
        if not self.is_main:
            return
        record = {"step": self.step_count, "epoch": round(self.step_count / self.steps_per_epoch, 4), "split": split, **values}
        with open(self._metrics_file, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        for key, value in values.items():
            self.writer.add_scalar(f"{split}/{key}", value, self.step_count)

    def log_images(self, split: str = "val") -> None:
        if not self.is_main or not self.data.has(split):
            return
        import torchvision

        batch = next(self.data.batches(split, train=False).epoch(0))
        batch = {k: v[:16] for k, v in batch.items()}
        with self.evaluating():
            grids = self.task.images(self.models, batch, self.eval_generator())
        for name, images in grids.items():
            grid = torchvision.utils.make_grid(images.float().clamp(0, 1).cpu(), nrow=8)
            self.writer.add_image(f"images/{name}", grid, self.step_count)

    # ---- evaluation
    def eval_generator(self) -> torch.Generator:
        """A freshly seeded generator on the device: evaluation noise and masks are the same at
        every evaluation and in every analysis, so numbers compare across epochs and runs."""
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

    def eval_batches(self, split: str, first: int = 0,
                     stop: Optional[int] = None) -> Iterator[tuple[dict[str, torch.Tensor], torch.Generator]]:
        """The evaluation batches ``[first, stop)`` of ``split`` in order, each with the generator
        seeded for that batch (``EVAL_SEED + i``): batch i gets the same noise and masks in every
        evaluation, on whichever rank, and in every analysis."""
        gen = self.eval_generator()
        for index, batch in enumerate(self.data.batches(split, train=False).epoch(0, first, stop), first):
            gen.manual_seed(EVAL_SEED + index)
            yield batch, gen

    @torch.no_grad()
    def evaluate(self, split: str, sharded: bool = False, transform: Optional[Callable[[Batch], Batch]] = None,
                 max_images: Optional[int] = None) -> dict[str, float]:
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
        world = self.accelerator.num_processes if sharded else 1
        first, stop = eval_shard(len(batches), self.accelerator.process_index, world)
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
            totals = self._sum_over_ranks(totals)
        return _reduce(totals)

    def _sum_over_ranks(self, totals: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every rank's metric sums added up (one all-reduce, in float64: counts stay exact)."""
        keys = sorted(totals)
        stacked = torch.stack([totals[k].detach().to(torch.float64) for k in keys])
        torch.distributed.all_reduce(stacked, op=torch.distributed.ReduceOp.SUM)
        return dict(zip(keys, stacked.unbind()))

    # ---- checkpoints
    def _state(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "models": {n: self.accelerator.unwrap_model(m).state_dict() for n, m in self.models.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler else None,
            "rng": rngs[0],
            "rng_ranks": rngs,  # each rank resumes its own stream (GAN latents, noise, dropout)
            "best": dict(self.best),
            "stopped": self.stopped,
            # a stop between two log lines must not lose the sums the next line averages
            "running": {k: v.detach().cpu() for k, v in self.running.items()},
        }

    def save_checkpoint(self) -> None:
        self.accelerator.wait_for_everyone()
        rngs = capture_rng_ranks()  # a collective: every rank, before rank 0 writes
        if self.is_main:
            path = step_path(self.ckpt_dir, self.step_count)
            try:
                with atomic_path(path) as tmp:
                    torch.save(self._state(rngs), tmp)
            except (OSError, RuntimeError) as exc:  # torch reports a full disk as a RuntimeError
                kept = checkpoints(self.ckpt_dir)
                raise CheckpointWriteError(
                    f"could not write {path} ({_one_line(exc)}); disk full or not writable? "
                    f"{'the newest good checkpoint ' + kept[0].name + ' is kept' if kept else 'no checkpoint was kept'}"
                    f": free space and run the same command to resume") from None
            for old in checkpoints(self.ckpt_dir)[self.cfg.train.keep_checkpoints :]:
                old.unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()

    def save_best(self) -> None:
        if self.is_main:
            from safetensors.torch import save_file

            for name in self.models:
                state = {k: v.contiguous() for k, v in self.unwrap(name).state_dict().items()}
                with atomic_path(self.ckpt_dir / f"best_{name}.safetensors") as tmp:
                    save_file(state, str(tmp), metadata={"step": str(self.step_count)})

    def load_best(self) -> bool:
        from safetensors.torch import load_file

        files = {n: self.ckpt_dir / f"best_{n}.safetensors" for n in self.models}
        if not all(f.is_file() for f in files.values()):
            return False
        for name, f in files.items():
            device = "cpu" if self.device.type == "cpu" else str(self.device)  # safetensors rejects "cpu:0"
            self.unwrap(name).load_state_dict(load_file(str(f), device=device))
        return True

    def _live(self) -> dict[str, Any]:
        """The objects a checkpoint restores, by section."""
        return {"models": {n: self.accelerator.unwrap_model(m) for n, m in self.models.items()},
                "optimizers": self.optimizers, "schedulers": self.schedulers}

    def _load_live(self, state: dict[str, Any]) -> None:
        for section, objects in self._live().items():
            for name, obj in objects.items():
                obj.load_state_dict(state[section][name])
        if state["scaler"] is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])

    def resume(self) -> bool:
        """Load the newest usable checkpoint whole; False when there is none.

        Each candidate is read with ``weights_only=True`` and checked completely against the
        live models, optimizers and schedulers before anything is loaded (and, should loading
        still fail, the state before it is put back), so the run continues either from one
        checkpoint exactly or from its fresh initialisation, never from a mix. A file that fails
        is renamed ``*.unusable-<time>`` and the next older one is tried. (``fit`` calls this
        unless ``train.resume=never``; analyses of a finished run call it always.)
        """
        live = self._live()
        fresh = None  # the state before any load, to go back to when a load fails half-way
        tried = False
        for path in checkpoints(self.ckpt_dir):
            tried = True
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                problems = state_problems(state, live["models"], live["optimizers"], live["schedulers"],
                                          self.accelerator.scaler)
            except Exception as exc:  # truncated zip, bad pickle opcode, refused global
                problems = [_one_line(exc)]
            if self._everyone(not problems):  # all ranks resume from the same state, or none does
                if fresh is None:
                    fresh = copy.deepcopy({section: {n: o.state_dict() for n, o in objects.items()}
                                           for section, objects in live.items()})
                try:
                    self._load_live(state)
                except Exception as exc:
                    problems = [f"loading failed: {_one_line(exc)}"]
                if self._everyone(not problems):
                    restore_rng(rank_rng(state, self.accelerator.process_index))
                    self.step_count = int(state["step"])
                    self.best = dict(state["best"])
                    self.stopped = state["stopped"]
                    self.running = {k: v.to(self.device) for k, v in state.get("running", {}).items()}
                    log.info("resumed from %s at step %d", path, self.step_count)
                    return True
                self._load_live({**fresh, "scaler": None})
            aside = set_aside(path) if self.is_main and path.exists() else path
            log.error("checkpoint %s is unusable (%s); set aside as %s, trying an older one",
                      path, "; ".join(problems[:3]) or "unusable on another rank", aside.name)
            self.accelerator.wait_for_everyone()
        if tried:
            log.warning("no usable checkpoint in %s: starting from a fresh initialisation", self.ckpt_dir)
        return False

    def _everyone(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (data parallel: one all-reduce)."""
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return bool(value.item())

    def _truncate_metrics(self) -> None:
        """Keep only what the state we start from had logged: training and evaluation lines up
        to ``step_count`` (0 on a fresh start), no final evaluations. Lines written after that
        (by a run killed before its next checkpoint) are about to be written again."""
        if not self.is_main or not self._metrics_file.is_file():
            return
        kept = [r for r in read_jsonl(self._metrics_file)
                if r.get("step", 0) <= self.step_count and not str(r.get("split", "")).startswith("final_")]
        atomic_write_text(self._metrics_file, "".join(json.dumps(r) + "\n" for r in kept))

    # ---- the loop
    def _progress(self):
        mode = self.cfg.train.progress
        interactive = sys.stderr.isatty() and not under_slurm()
        if self.is_main and (mode == "bar" or (mode == "auto" and interactive)):
            from tqdm.auto import tqdm

            return tqdm(total=self.total_steps, initial=self.step_count, desc=self.cfg.run_name, dynamic_ncols=True)
        return None

    def _after_eval(self, values: dict[str, float]) -> None:
        t = self.cfg.train
        current = values.get(t.monitor)
        if current is not None:
            better = self.best["value"] is None or (
                current < self.best["value"] if t.monitor_mode == "min" else current > self.best["value"])
            if better:
                self.best = {"value": current, "step": self.step_count}
                self.save_best()
        if t.stop.metric and t.stop.metric in values and t.stop.threshold is not None:
            v = values[t.stop.metric]
            if (v < t.stop.threshold) if t.stop.mode == "min" else (v > t.stop.threshold):
                self.stopped = f"{t.stop.metric}={v:.5g} crossed {t.stop.threshold} at step {self.step_count}"
                log.info("early stop: %s", self.stopped)

    def run_evaluation(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for split in self.cfg.train.eval_splits:
            if self.data.has(split):
                result = self.evaluate(split, sharded=True)
                self.log_metrics(split, result)
                values.update({f"{split}/{k}": v for k, v in result.items()})
        if values:
            log.info("step %d eval: %s", self.step_count, _fmt(values))
        self._after_eval(values)
        return values

    def fit(self) -> dict[str, Any]:
        """Train to the end (or early stop), resuming first; return the final metrics. A rank
        that loses its data-parallel peers stops with :class:`RankLost` (one line)."""
        try:
            return self._fit()
        except RuntimeError as exc:  # gloo/NCCL report a dead or silent peer as RuntimeError
            if self.accelerator.num_processes == 1 or isinstance(exc, RankLost) or not _lost_peer(exc):
                raise
            kept = checkpoints(self.ckpt_dir)
            raise RankLost(
                f"rank {self.accelerator.process_index} of {self.accelerator.num_processes} lost the other ranks at "
                f"step {self.step_count} ({_one_line(exc)[:200]}): a rank died, or hung for more than "
                f"cluster.collective_timeout_s={self.cfg.cluster.collective_timeout_s} s; "
                + (f"resubmit the job to resume from {kept[0].name}" if kept else
                   "no checkpoint yet: resubmit the job to start it again")) from None

    def _fit(self) -> dict[str, Any]:
        t = self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if t.resume != "never":
            self.resume()
        self._truncate_metrics()
        self._tb_purge_step = self.step_count  # TensorBoard drops events past it, as the log does
        self.signals.install()
        bar = self._progress()
        running = self.running  # metric sums since the last log line (kept in checkpoints)
        started, images_seen = time.perf_counter(), 0
        try:
            epoch, skip = divmod(self.step_count, self.steps_per_epoch)
            while self.step_count < self.total_steps and not self.stopped:
                for batch in self.train_batches.epoch(epoch, skip):
                    metrics = self.task.train_step(self, batch)
                    for k, v in metrics.items():
                        running[k] = running[k] + v if k in running else v.detach().clone()
                    self.step_count += 1
                    images_seen += len(next(iter(batch.values())))
                    if bar is not None:
                        bar.update(1)
                    last = self.step_count >= self.total_steps
                    if self.step_count % t.log_every == 0 or last:
                        values = _check_finite(running, self.step_count, self.ckpt_dir)
                        running.clear()
                        elapsed = time.perf_counter() - started
                        values["images_per_s"] = images_seen / max(elapsed, 1e-9)
                        values["lr"] = next(iter(self.optimizers.values())).param_groups[0]["lr"]
                        self.log_metrics("fit", values)
                        if bar is not None:
                            bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4g}")
                        else:
                            log.info("step %d/%d %s", self.step_count, self.total_steps, _fmt(values))
                    if self.step_count % self.eval_every == 0 or last:
                        self.run_evaluation()
                    if self.step_count % self.image_every == 0 or last:
                        self.log_images("val" if self.data.has("val") else "test")
                    stop_signal = self.signals.pending(self.accelerator, self.step_count)
                    if self.step_count % self.ckpt_every == 0 or last or self.stopped or stop_signal:
                        _check_finite(running, self.step_count, self.ckpt_dir)
                        self.save_checkpoint()
                    if stop_signal:
                        self.signals.hand_over(self.step_count)
                    if last or self.stopped:
                        break
                epoch, skip = epoch + 1, 0
        except BaseException:  # e.g. a lost rank, while srun's SIGTERM to the job is pending: RankLost, not exit 3
            self.signals.restore(hand_over=False)
            raise
        finally:
            self.signals.restore()
            if bar is not None:
                bar.close()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Evaluate the best (or last) weights on the final splits."""
        used_best = self.load_best()
        final: dict[str, Any] = {}
        for split in self.cfg.train.final_splits:
            if self.data.has(split):
                result = self.evaluate(split, sharded=True)
                self.log_metrics(f"final_{split}", result)
                final.update({f"{split}/{k}": v for k, v in result.items()})
        if self._writer is not None:
            hparams = {k: v for k, v in flatten(OmegaConf.to_container(self.cfg, resolve=True)).items()
                       if isinstance(v, (int, float, str, bool))}
            self._writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in final.items()}, run_name="hparams")
            self._writer.flush()
        log.info("final (%s weights): %s", "best" if used_best else "last", _fmt(final))
        return {
            "metrics": final,
            "steps": self.step_count,
            "epochs": round(self.step_count / self.steps_per_epoch, 3),
            "best": self.best,
            "stopped_early": self.stopped,
            "weights": "best" if used_best else "last",
        }

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.accelerator.end_training()


def _reduce(totals: dict[str, torch.Tensor]) -> dict[str, float]:
    """Divide metric sums by ``count`` (one host sync for all metrics)."""
    if not totals:
        return {}
    keys = list(totals)
    values = torch.stack([totals[k].float() for k in keys]).cpu().tolist()
    named = dict(zip(keys, values))
    count = named.pop("count", 1.0) or 1.0
    return {k: v / count for k, v in named.items()}


def _check_finite(running: dict[str, torch.Tensor], step: int, ckpt_dir: Path) -> dict[str, float]:
    """Reduce the running sums; stop with a clear error (before any checkpoint) if non-finite."""
    values = _reduce(running)
    if not all(math.isfinite(v) for v in values.values()):
        raise NonFiniteLoss(f"non-finite training metrics at step {step}: {values}; "
                            f"the last good checkpoint is kept in {ckpt_dir}")
    return values


# What torch.distributed's backends say when a peer is gone (gloo: the socket closed, a timeout;
# NCCL: a watchdog timeout or a remote error); DistError is their base class in torch >= 2.2.
_PEER_ERRORS = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "Broken pipe",
                "NCCL communicator was aborted", "remote process exited", "Socket Timeout")


def _lost_peer(exc: BaseException) -> bool:
    dist_error = getattr(torch.distributed, "DistError", ())
    return (bool(dist_error) and isinstance(exc, dist_error)) or any(text in str(exc) for text in _PEER_ERRORS)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


