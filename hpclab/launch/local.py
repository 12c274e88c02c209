"""The local runner: every run of a plan in turn in this process (or in N data-parallel
processes each), then the sweep's summary. Also :func:`stage_datasets`, which a SLURM
submission calls too, on the submitting node."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from hpclab.launch.job import check_run, fully_done, run_dir_of, train_local_processes, train_run
from hpclab.launch.slurm import requeue_on_usr2
from hpclab.launch.sweep import SweepPlan

log = logging.getLogger("hpclab")


def run_local(plan: SweepPlan) -> list[dict[str, Any]]:
    """Run every run of the plan in turn in this process (or N processes each), then report."""
    from hpclab.analysis.report import write_report

    stage_datasets(plan.runs)
    for cfg in plan.runs:  # and every run still to do is checked, before the first run starts
        if cfg.force or cfg.train.resume == "never" or not fully_done(run_dir_of(cfg), cfg):
            check_run(cfg, cfg.cluster.processes)
    summaries = []
    with requeue_on_usr2():
        for i, cfg in enumerate(plan.runs, 1):
            log.info("[%d/%d] %s", i, len(plan), run_dir_of(cfg))
            processes = cfg.cluster.processes
            summaries.append(train_local_processes(cfg, processes) if processes > 1 else train_run(cfg))
    if plan.base.sweep.name:
        write_report(plan.group_dir, plan.base.sweep.report)
    return summaries


def stage_datasets(runs: list[DictConfig]) -> None:
    """Stage each dataset of these runs (a no-op when prepared; local mirrors, then the
    downloader), so a missing dataset fails before the first run starts or is queued."""
    from hpclab.data.prepare import hdf5_path, stage

    for cfg in {hdf5_path(c): c for c in runs}.values():
        stage(cfg)
