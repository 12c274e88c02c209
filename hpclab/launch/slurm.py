"""What a training process needs to know about the SLURM job it runs in.

Used inside jobs (``jobs/run.py`` under the sbatch scripts, ``TrainJob`` under submitit) and by
the engine's ``StopSignals``: ranks from SLURM's variables, requeueing the job itself, the
job-level signal handlers of plain sbatch jobs, and a per-run record of the tasks that ran it
(``slurm.json``, read by ``jobs/launch.py status``). Kept free of torch so it imports fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpclab.rundir import SLURM_RECORD, read_slurm_record
from hpclab.utils import can_set_signal_handlers, job_ref, under_slurm, write_json

log = logging.getLogger("hpclab")


def rank() -> int:
    """This process's global rank (RANK, else SLURM_PROCID, else 0)."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def restart_count() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def export_rank_env() -> None:
    """Map SLURM's per-task variables to torch's (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*).

    The sbatch scripts already export them per task; this covers the launcher's submitit tasks
    and a bare ``srun python ...``. Variables already set win (MASTER_ADDR from the batch shell,
    where ``scontrol`` exists even when the task runs in a container). Nothing happens for a
    single task.
    """
    ntasks = int(os.environ.get("SLURM_NTASKS") or 1)
    if ntasks <= 1 or "SLURM_PROCID" not in os.environ:
        return
    os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
    os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    os.environ.setdefault("WORLD_SIZE", str(ntasks))
    if not os.environ.get("MASTER_ADDR"):
        os.environ["MASTER_ADDR"] = first_node()
    os.environ.setdefault("MASTER_PORT", str(master_port()))
    if os.environ.get("SLURM_GPUS_ON_NODE", "0") == "0":
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")  # gloo on the CPU, as accelerate launch --cpu


def _scontrol(*args: str) -> str | None:
    try:
        return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def controller_setting(name: str) -> int | None:
    """An integer setting of the controller (``scontrol show config``); None when scontrol does
    not answer or does not list it."""
    for line in (_scontrol("show", "config") or "").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == name and value.strip().isdigit():
            return int(value.strip())
    return None


def max_array_tasks() -> int | None:
    """The most tasks one job array may have here: the controller's MaxArraySize - 1 (array
    indices run from 0 to MaxArraySize - 1). None when scontrol does not answer."""
    size = controller_setting("MaxArraySize")
    return None if size is None else size - 1


def max_job_count() -> int | None:
    """The controller's MaxJobCount (every array task counts as one job); None when unknown."""
    return controller_setting("MaxJobCount")


def first_node() -> str:
    """Where rank 0 listens: the first node of SLURM_JOB_NODELIST (``gpu[03-04]`` -> gpu03) at the
    address SLURM itself reaches it, its ``NodeAddr`` (``scontrol show node``). That is the node
    name on most clusters, and an IP where names do not resolve by DNS (the emulated nodes of
    scripts/local_slurm.sh --nodes N: n1 -> 127.0.0.1). The batch shell does the same (batch.job_lines)."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or socket.gethostname()
    names = (_scontrol("show", "hostnames", nodelist) or "").split()
    name = names[0] if names else nodelist.split(",")[0].split("[")[0]
    if os.environ.get("SLURM_JOB_NODELIST"):
        for field in (_scontrol("show", "node", "-o", name) or "").split():
            if field.startswith("NodeAddr=") and len(field) > len("NodeAddr="):
                return field.split("=", 1)[1]
    return name


MASTER_PORT_BASE = 20000  # rendezvous ports 20000..39999, from the job id


def master_port() -> int:
    """A rendezvous port from the job id (array tasks have distinct ids, so they never collide);
    the batch shell exports the same (:func:`hpclab.launch.batch.job_lines`)."""
    return MASTER_PORT_BASE + int(os.environ.get("SLURM_JOB_ID") or 0) % MASTER_PORT_BASE


def requeue_job() -> bool:
    """``scontrol requeue`` this job (rank 0 only); inside the Apptainer image the image's
    ``scontrol`` relays the request to the batch script. True when the request was accepted."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or rank() != 0:
        return False
    try:
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.error("could not requeue SLURM job %s (%s); resubmit it to resume from the checkpoint", job, exc)
        return False
    if proc.returncode != 0:
        log.error(
            "scontrol requeue %s failed: %s; resubmit it to resume from the checkpoint",
            job,
            (proc.stderr or proc.stdout).strip().splitlines()[0]
            if (proc.stderr or proc.stdout).strip()
            else proc.returncode,
        )
        return False
    log.warning("requeued SLURM job %s: it resumes from the checkpoint when it restarts", job_ref())
    return True


@contextlib.contextmanager
def requeue_on_usr2() -> Iterator[None]:
    """While in the block, inside a SLURM job: SIGUSR2 (the time limit is near) requeues the job.
    For ``jobs/launch.py`` run by hand in an allocation; the engine's ``StopSignals`` first
    checkpoints, then hands the signal to this handler. Elsewhere (no job, not the main
    thread) nothing changes."""
    if not under_slurm() or not can_set_signal_handlers():
        yield
        return
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: requeue_job())
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR2, previous)


class JobSignals:
    """Job-level handlers of a plain sbatch task, or of ``jobs/launch.py`` run by hand inside an
    allocation (submitit installs its own in its tasks).

    SIGUSR2 (``--signal=USR2@T`` before the time limit, or ``scancel -s USR2``): requeue the job,
    then exit. SIGTERM (``scontrol requeue``, preemption, ``scancel``): exit; SLURM decides
    whether the job comes back. The engine's ``StopSignals`` takes over while training (it
    checkpoints at the next step boundary first) and hands the signal back to these handlers.
    """

    def install(self) -> JobSignals:
        if not can_set_signal_handlers():
            return self
        signal.signal(signal.SIGUSR2, self._on_usr2)
        signal.signal(signal.SIGTERM, self._on_term)
        return self

    @staticmethod
    def exit() -> None:
        """Exit 3 ("stopped, to be resumed") on rank 0 and 0 on the others: under ``srun
        --kill-on-bad-exit`` a non-zero exit would kill rank 0 before its ``scontrol requeue``.
        The SIGTERM that a requeue itself sends is ignored from here on (we are leaving)."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(3 if rank() == 0 else 0)

    @staticmethod
    def leave() -> None:
        """The task is done, or its run failed, and it exits with its own code: SIGTERM and SIGUSR2
        are ignored from here (SLURM's SIGKILL still ends a task that hangs). Under ``srun
        --kill-on-bad-exit`` the other ranks get SIGTERM as soon as one rank exits non-zero, while
        they are failing or leaving themselves (RankLost: one line, exit 4); handled, it turned
        that into "stopped" (exit 3, no RankLost line) or added a SystemExit traceback from
        Python's atexit callbacks."""
        if can_set_signal_handlers():
            for sig in (signal.SIGUSR2, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)

    def _on_usr2(self, signum: int, frame: Any) -> None:
        log.warning("SIGUSR2: requeueing this job; it resumes from its newest checkpoint")
        requeue_job()
        self.exit()

    def _on_term(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM: stopping; if SLURM requeues the job it resumes from its newest checkpoint")
        self.exit()


def slurm_log_path() -> str | None:
    """The job's stdout file: $HPCLAB_SLURM_LOG (set by slurm/common.sh), else scontrol's StdOut."""
    if os.environ.get("HPCLAB_SLURM_LOG"):
        return os.environ["HPCLAB_SLURM_LOG"]
    job = job_ref()  # not SLURM_JOB_ID: an array's first task shares it with the whole array
    if not job:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return scontrol_field(out, "StdOut")


def scontrol_field(line: str, key: str) -> str | None:
    """The value of ``key`` in one ``scontrol show ... -o`` line; values may hold spaces (a path
    under "My results/"), so a value runs up to the next `` Key=``, not the next space."""
    match = re.search(rf"(?:^|\s){re.escape(key)}=(.*?)(?=\s+[A-Za-z][A-Za-z0-9:/_]*=|\s*$)", line)
    return match.group(1) if match and match.group(1) else None


def record_task(run_dir: Path) -> None:
    """Append this SLURM task to ``<run>/slurm.json`` (rank 0; a no-op outside SLURM)."""
    if not under_slurm() or rank() != 0:
        return
    record = read_slurm_record(run_dir)  # a damaged record is replaced, with a warning: it is a view of the past
    entry = {
        "job": job_ref(),
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "restart": restart_count(),
        "host": socket.gethostname(),
        "node": os.environ.get("SLURMD_NODENAME"),  # SLURM's name (emulated nodes share one host)
        "nodes": os.environ.get("SLURM_JOB_NODELIST"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "log": slurm_log_path(),
        "submitit": bool(os.environ.get("SUBMITIT_EXECUTOR")),
    }
    record["starts"].append(entry)
    record.update({k: entry[k] for k in ("job", "job_id", "log")})
    write_json(run_dir / SLURM_RECORD, record)
