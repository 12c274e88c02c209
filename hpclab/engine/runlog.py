"""Where a run's numbers and pictures go (rank 0 only): ``metrics.jsonl`` (the record that
reports, status and analyses read), ``progress.json`` (the run's total steps, for status),
TensorBoard scalars, image grids and hparams, and a progress bar in interactive runs or plain
log lines (with elapsed time and ETA) under SLURM or when piped."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from hpclab.rundir import METRICS, PROGRESS, TENSORBOARD, read_metrics
from hpclab.utils import atomic_write_text, flatten, under_slurm, write_json

log = logging.getLogger("hpclab")


def format_values(values: dict[str, Any]) -> str:
    """``key=value`` pairs for a log line, floats to 5 significant digits."""
    return " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def clock_time(seconds: float) -> str:
    """``h:mm:ss`` of a duration."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


# The order of TensorBoard's HParams columns after the swept keys: what the run is, then how it
# trained; where and how it ran (paths, cluster, sweep) last.
HPARAM_SECTIONS = ("experiment", "seed", "model", "task", "data", "train")


def hparam_rank(key: str, swept: list[str]) -> tuple[int, int]:
    """Sort key of a config key among the HParams columns: the sweep's keys first, in its order."""
    if key in swept:
        return (0, swept.index(key))
    section = key.split(".", 1)[0]
    return (1, HPARAM_SECTIONS.index(section)) if section in HPARAM_SECTIONS else (2, 0)


class RunLog:
    """One run's metric record and TensorBoard events; every method is a no-op off rank 0."""

    def __init__(
        self,
        run_dir: Path,
        is_main: bool,
        steps_per_epoch: int,
        total_steps: int | None = None,
        batch_per_rank: int | None = None,
    ) -> None:
        self.run_dir, self.is_main, self.steps_per_epoch = run_dir, is_main, steps_per_epoch
        self.total_steps, self.batch_per_rank = total_steps, batch_per_rank
        self.metrics_file = run_dir / METRICS
        self._writer: Any = None
        self._purge_step: int | None = None
        self._started = (time.monotonic(), 0)  # (clock, step) of this start: elapsed and ETA

    def start(self, step: int) -> None:
        """Start (or resume) logging at ``step``: keep only the lines the state we start from
        had logged (training and evaluation up to ``step``, no final evaluations); lines a run
        killed before its next checkpoint wrote are about to be written again. TensorBoard drops
        its events past ``step`` the same way."""
        self._purge_step = step
        self._started = (time.monotonic(), step)
        if self.is_main and self.total_steps:
            write_json(
                self.run_dir / PROGRESS,
                {
                    "total_steps": self.total_steps,
                    "batch_per_rank": self.batch_per_rank,
                    "steps_per_epoch": self.steps_per_epoch,
                },
            )
        if not self.is_main or not self.metrics_file.is_file():
            return
        kept = [r for r in read_metrics(self.run_dir) if r["step"] <= step and not r["split"].startswith("final_")]
        atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))

    def timing(self, step: int) -> str:
        """``elapsed=0:01:05 eta=0:02:10`` for a log line: time since this start, and the time
        left at this start's rate so far (evaluations included)."""
        clock, first = self._started
        elapsed = time.monotonic() - clock
        text = f"elapsed={clock_time(elapsed)}"
        if self.total_steps and step > first:
            text += f" eta={clock_time(elapsed / (step - first) * max(self.total_steps - step, 0))}"
        return text

    @property
    def writer(self) -> Any:
        """The run's TensorBoard ``SummaryWriter`` (created on first use; None off rank 0)."""
        if self._writer is None and self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir / TENSORBOARD), purge_step=self._purge_step)
        return self._writer

    def metrics(self, step: int, split: str, values: dict[str, float]) -> None:
        """One line of ``metrics.jsonl`` and the TensorBoard scalars ``split/key``."""
        if not self.is_main:
            return
        record = {"step": step, "epoch": round(step / self.steps_per_epoch, 4), "split": split, **values}
        with open(self.metrics_file, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        for key, value in values.items():
            self.writer.add_scalar(f"{split}/{key}", value, step)

    def images(self, step: int, grids: dict[str, torch.Tensor]) -> None:
        """Named image batches in [0, 1] as TensorBoard grids ``images/<name>``."""
        if not self.is_main:
            return
        import torchvision

        for name, images in grids.items():
            grid = torchvision.utils.make_grid(images.float().clamp(0, 1).cpu(), nrow=8)
            self.writer.add_image(f"images/{name}", grid, step)

    def hparams(self, cfg: DictConfig, final: dict[str, float]) -> None:
        """The run's scalar config values beside its final metrics (TensorBoard's HParams tab)."""
        if self._writer is None:
            return
        values = {
            k: v
            for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()
            if isinstance(v, (int, float, str, bool))
        }
        hparams = dict(sorted(values.items(), key=lambda item: hparam_rank(item[0], list(cfg.sweep.grid))))
        self._writer.add_hparams(hparams, {f"hparam/{k}": v for k, v in final.items()}, run_name="hparams")
        self._writer.flush()

    def progress_bar(self, mode: str, total: int, initial: int, name: str) -> Any:
        """A tqdm bar for ``train.progress=bar``, or ``auto`` on a terminal outside SLURM; None
        means plain log lines."""
        interactive = sys.stderr.isatty() and not under_slurm()
        if self.is_main and (mode == "bar" or (mode == "auto" and interactive)):
            from tqdm.auto import tqdm

            return tqdm(total=total, initial=initial, desc=name, dynamic_ncols=True)
        return None

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
