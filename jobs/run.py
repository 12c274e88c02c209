#!/usr/bin/env python
"""Run ONE run of an experiment or sweep in this process (what each SLURM task of slurm/*.sh runs).

usage: python jobs/run.py [task_index=N] [--check] [key=value ...]

  python jobs/run.py experiment=ae_latent preset=smoke           # the experiment's single run
  python jobs/run.py sweep=ae_latent preset=smoke task_index=1   # run 1 (0-based) of the sweep
  python jobs/run.py sweep=ae_latent --check                     # validate, print the run, exit

Inside a SLURM job array task_index defaults to $SLURM_ARRAY_TASK_ID. Results land where
jobs/launch.py puts them: results/<sweep or experiment>/<run>/. Under SLURM a pre-timeout
SIGUSR2 checkpoints and requeues the job; a requeued job resumes from its checkpoint.
"""

from __future__ import annotations

from hpclab.launch.cli import main_guard
from hpclab.launch.task import main

if __name__ == "__main__":
    main_guard(main)
