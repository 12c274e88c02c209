"""The batch shell of a SLURM job: what it sets up before its tasks start, written once for both
ways in. The launcher puts :func:`job_lines` into submitit's sbatch script, and the sbatch
scripts of ``slurm/`` evaluate what ``python -m hpclab.launch.batch`` prints (:func:`main`), so a
change is made here only.

Every job: no HDF5 file locks (Lustre/GPFS/NFS), unbuffered Python, srun steps that keep
--cpus-per-task (SLURM >= 22.05 no longer passes it on), gloo on the CPU when no GPU is
allocated, a warning when GPUs would sit idle, the rendezvous of
multi-task jobs (the first node at the address SLURM reaches it, a port from the job id) and
where SLURM writes the job's log. The sbatch scripts also get their folders, the container
command with its checks (``HPCLAB_IMAGE`` ...) and the Python that runs each task.

Threads are not set here: each run sets ``cluster.threads`` itself, as it does outside SLURM
(not SLURM's CPUs per task, which would make a run's numbers depend on where it ran).

Imports only the standard library and hpclab's standard-library modules: where the suite lives
only in its image, the cluster's own python3 renders this.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

from hpclab.errors import ConfigError
from hpclab.launch import container
from hpclab.launch.slurm import MASTER_PORT_BASE

TASK_MODULE = "hpclab.launch.run_one"  # what each srun task of the sbatch scripts runs


def job_lines() -> list[str]:
    """Shell lines for the batch shell of every job (they read SLURM's variables at run time)."""
    return [
        "export HDF5_USE_FILE_LOCKING=FALSE",
        "export PYTHONUNBUFFERED=1",
        "export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}",
        'if [ "${SLURM_GPUS_ON_NODE:-0}" = 0 ] && [ "${SLURM_NTASKS:-1}" -gt 1 ]; then '
        "export ACCELERATE_USE_CPU=true; fi",
        "hpclab_tasks_per_node=$(( ${SLURM_NTASKS:-1} / ${SLURM_NNODES:-1} ))",
        'if [ "${SLURM_GPUS_ON_NODE:-0}" -gt "$hpclab_tasks_per_node" ]; then',
        '  echo "hpclab: warning: $SLURM_GPUS_ON_NODE GPUs per node but $hpclab_tasks_per_node task(s) per node;"'
        ' "submit with --ntasks-per-node=$SLURM_GPUS_ON_NODE to use them all"',
        "fi",
        # rank 0's node at its NodeAddr: the node name on most clusters, an IP where names do not
        # resolve by DNS (the emulated nodes of scripts/local_slurm.sh); slurm.first_node() agrees
        'export MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname)}" 2>/dev/null | head -n 1)',
        "export MASTER_ADDR=${MASTER_ADDR:-$(hostname)}",
        'if [ -n "${SLURM_JOB_NODELIST:-}" ]; then',
        "  hpclab_addr=$(scontrol show node -o \"$MASTER_ADDR\" 2>/dev/null | tr ' ' '\\n'"
        " | sed -n 's/^NodeAddr=\\(..*\\)/\\1/p' | head -n 1) || true",
        '  if [ -n "$hpclab_addr" ]; then export MASTER_ADDR=$hpclab_addr; fi',
        "fi",
        # array tasks have distinct job ids, so concurrent tasks never share a port
        f"export MASTER_PORT=$(({MASTER_PORT_BASE} + ${{SLURM_JOB_ID:-0}} % {MASTER_PORT_BASE}))",
        # the job's log, recorded in results/<group>/<run>/slurm.json (an array's first task
        # shares its id with the whole array: name the task)
        'if [ -n "${SLURM_JOB_ID:-}" ]; then',
        "  hpclab_job=$SLURM_JOB_ID",
        '  if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then hpclab_job=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}; fi',
        "  HPCLAB_SLURM_LOG=$(scontrol show job -o \"$hpclab_job\" 2>/dev/null | tr ' ' '\\n'"
        " | sed -n 's/^StdOut=//p' | head -n 1) || true",
        "  export HPCLAB_SLURM_LOG",
        "fi",
    ]


def script_lines(env: Mapping[str, str]) -> list[str]:
    """Shell lines for the sbatch scripts from their variables (``env``): absolute data, results
    and cache folders, and ``HPCLAB_PY``, the command that runs a task: inside the image
    (``HPCLAB_IMAGE``, checked first) or with ``HPCLAB_PYTHON``. Raises ConfigError (one line)."""
    data = Path(env.get("HPCLAB_DATA") or "data").absolute()
    paths = {
        "data": data,
        "results": Path(env.get("HPCLAB_RESULTS") or "results").absolute(),
        "cache": Path(env.get("HPCLAB_CACHE") or data / "cache").absolute(),
    }
    lines = [f"export HPCLAB_{key.upper()}={shlex.quote(str(path))}" for key, path in paths.items()]
    cluster = {
        "image": env.get(container.IMAGE_ENV),
        "container": env.get(container.ENGINE_ENV),
        "binds": [b for b in (env.get("HPCLAB_BINDS") or "").split(",") if b],
        "gpus_per_node": int(env.get("SLURM_GPUS_ON_NODE") or 0),
    }
    if not cluster["image"]:
        python = env.get("HPCLAB_PYTHON") or "python3"
        return lines + [f"HPCLAB_PY=({shlex.quote(python)} -m {TASK_MODULE})"]
    print_only = env.get("HPCLAB_PRINT_ONLY") == "1"  # printing the commands needs no engine
    for path in paths.values():  # a missing data folder then fails in the suite's own check (inside
        path.mkdir(parents=True, exist_ok=True)  # the image), naming the dataset, not a mount error
    container.check_image(cluster, container.SCRIPT_SETTINGS, engine_here=not print_only)
    task = container.shell_prefix([*container.exec_prefix(cluster, paths), "python", "-m", TASK_MODULE])
    setup = container.slurm_setup(cluster, paths, paths["results"], task, remove_leftovers=not print_only)
    return lines + setup + [f"HPCLAB_PY=({task})"]


def main() -> int:
    """Print the sbatch scripts' setup for ``eval``; a bad setting becomes ``error: ...``, exit 2."""
    try:
        lines = job_lines() + script_lines(os.environ)
    except ConfigError as exc:
        lines = [f"echo {shlex.quote(f'error: {exc}')}", "exit 2"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
