"""Run ONE run of an experiment or sweep in this process (what each SLURM task of slurm/*.sh runs).

usage: python jobs/run.py [task_index=N] [--check] [key=value ...]
       (the same: python -m hpclab.launch.run_one ..., as the container's tasks call it)

  python jobs/run.py experiment=ae_latent preset=smoke           # the experiment's single run
  python jobs/run.py sweep=ae_latent preset=smoke task_index=1   # run 1 (0-based) of the sweep
  python jobs/run.py sweep=ae_latent --check                     # validate, print the run, exit

In a job array task_index defaults to $SLURM_ARRAY_TASK_ID, so array task i runs run i of the
sweep in the order ``jobs/launch.py ... dry_run=true`` lists them, into the same
``results/<group>/<run>/`` folders as ``jobs/launch.py ... cluster=slurm``. Ranks come from
RANK/LOCAL_RANK/WORLD_SIZE (exported per task by slurm/common.sh) or from SLURM's variables.
Under SLURM a pre-timeout SIGUSR2 checkpoints and requeues the job; a requeued job resumes
from its checkpoint.
"""

from __future__ import annotations

import os
import re

from omegaconf import DictConfig, OmegaConf

from hpclab.config import ConfigError

USAGE = __doc__


def parse_args(argv: list[str]) -> tuple[list[str], int | None, bool]:
    """Split off ``task_index=N`` and ``--check`` from the Hydra overrides."""
    overrides, index, check = [], None, False
    for arg in argv:
        if arg == "--check":
            check = True
        elif arg.startswith("task_index="):
            value = arg.split("=", 1)[1]
            if not re.fullmatch(r"\d+", value):
                raise ConfigError(f"task_index: {value!r} is not a non-negative integer")
            index = int(value)
        else:
            overrides.append(arg)
    return overrides, index, check


def choose_index(n_runs: int, index: int | None, group: str) -> int:
    """The run this task runs: task_index=N, else the array task id, else the only run."""
    if index is None and os.environ.get("SLURM_ARRAY_TASK_ID"):
        index = int(os.environ["SLURM_ARRAY_TASK_ID"])
    if index is None:
        if n_runs == 1:
            return 0
        raise ConfigError(
            f"'{group}' has {n_runs} runs: pick one with task_index=0..{n_runs - 1} "
            f"(or submit them all: python jobs/launch.py ... cluster=slurm)"
        )
    return index


def coverage_warning(n_runs: int) -> str | None:
    """In an array smaller than the sweep, say which runs no task covers and how to submit them."""
    top = os.environ.get("SLURM_ARRAY_TASK_MAX")
    if top is None or int(top) >= n_runs - 1:
        return None
    first, last = int(top) + 1, n_runs - 1
    return (
        f"this array covers runs 0..{top} but the sweep has {n_runs}: submit the rest with "
        f"sbatch --array={first}-{last} <the same script and overrides>"
    )


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    overrides, index, check = parse_args(argv)

    from hpclab.launch.job import check_run, results_line, run_dir_of, run_in_slurm_task
    from hpclab.launch.sweep import plan as make_plan

    plan = make_plan(overrides)
    n = len(plan)
    index = choose_index(n, index, plan.group)
    warning = coverage_warning(n)
    if index >= n:
        print(f"task index {index}: '{plan.group}' has only {n} run(s); nothing to do")
        return 0
    cfg = plan.run(index)  # this task's run alone
    tasks = int(os.environ.get("SLURM_NTASKS") or 1)
    if check or tasks == 1:  # the batch shell's check, once per job (not in each of several ranks)
        stage_offline(cfg)
    check_run(cfg, tasks)  # fail before anything is written
    if check:
        print(f"run {index + 1}/{n} of '{plan.group}': {cfg.run_name} -> {run_dir_of(cfg)}")
        if warning:
            print(f"warning: {warning}")
        return 0
    run_in_slurm_task(cfg)  # a stop signal ends in main_guard: "stopped: ...", exit 3
    if int(os.environ.get("RANK") or 0) == 0:
        print(results_line(cfg), flush=True)
    return 0


def stage_offline(cfg: DictConfig) -> None:
    """Stage the run's dataset from files on this machine when it is not prepared yet, as the
    launcher stages it (scikit-learn's digits; Fashion-MNIST from Debian's package or
    data.mirrors), but never downloading: compute nodes are usually offline. Anything else
    fails here with the line naming python jobs/prepare_data.py."""
    from hpclab.data.prepare import stage
    from hpclab.errors import DataMissing

    try:
        stage(OmegaConf.merge(cfg, {"data": {"download": False}}))
    except DataMissing:
        pass  # check_splits names the dataset and the command that stages it


if __name__ == "__main__":
    from hpclab.launch.cli import main_guard

    main_guard(main)
