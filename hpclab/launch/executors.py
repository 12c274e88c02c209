"""Executors: run a plan locally, or submit it as one SLURM job array through submitit."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from hpclab.config import ConfigError
from hpclab.launch import container
from hpclab.launch.batch import job_lines
from hpclab.launch.job import (
    TrainJob,
    is_complete,
    run_dir_of,
    train_local_processes,
    train_run,
)
from hpclab.launch.slurm import max_array_tasks, read_record, requeue_on_usr2
from hpclab.launch.sweep import Plan
from hpclab.utils import read_json, write_json

log = logging.getLogger("hpclab")


def group_dir(plan: Plan) -> Path:
    return Path(plan.base.paths.results) / plan.group


def describe_plan(plan: Plan) -> str:
    lines = [f"{len(plan)} run(s) -> {group_dir(plan)}/"]
    for cfg in plan.runs:
        state = "complete" if is_complete(run_dir_of(cfg)) else "to run"
        lines.append(f"  {cfg.run_name:<32} {state:<9} model={cfg.model.name} data={cfg.data.name} "
                     f"task={cfg.task.name} steps={cfg.train.max_steps or str(cfg.train.epochs) + ' epochs'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- local

def run_local(plan: Plan) -> list[dict[str, Any]]:
    """Run every run of the plan in turn in this process (or N processes each), then report."""
    from hpclab.analysis.report import write_report
    from hpclab.data.loader import check_splits
    from hpclab.data.prepare import hdf5_path, stage

    # Stage each dataset first (a no-op when prepared; local mirrors, then the downloader), so
    # a missing dataset fails before the first run starts, not in the middle of a sweep.
    for cfg in {hdf5_path(c): c for c in plan.runs}.values():
        stage(cfg)
    for cfg in plan.runs:  # and every run's splits hold data, before the first run starts
        check_splits(cfg, cfg.cluster.processes)
    summaries = []
    with requeue_on_usr2():
        for i, cfg in enumerate(plan.runs, 1):
            log.info("[%d/%d] %s", i, len(plan), run_dir_of(cfg))
            processes = cfg.cluster.processes
            summaries.append(train_local_processes(cfg, processes) if processes > 1 else train_run(cfg))
    if plan.base.sweep.name:
        write_report(group_dir(plan), plan.base.sweep.report)
    return summaries


# --------------------------------------------------------------------------- SLURM

def slurm_parameters(cluster: DictConfig, name: str) -> dict[str, Any]:
    """submitit AutoExecutor ``update_parameters`` arguments from the cluster config."""
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": cluster.time_min,
        "nodes": cluster.nodes,
        "tasks_per_node": max(cluster.gpus_per_node, 1),  # one task per GPU
        "cpus_per_task": cluster.cpus_per_task,
        "slurm_array_parallelism": cluster.array_parallelism,
        "slurm_signal_delay_s": cluster.signal_delay_s,
        "slurm_setup": [*job_lines(), *cluster.setup],
        # a task that dies takes the others with it at once (they would wait for it in a collective)
        "slurm_srun_args": ["--kill-on-bad-exit=1"],
        "slurm_additional_parameters": {"requeue": True, **OmegaConf.to_container(cluster.extra)},
    }
    if cluster.gpus_per_node:
        params["gpus_per_node"] = cluster.gpus_per_node
    if cluster.mem_gb:
        params["mem_gb"] = cluster.mem_gb
    for key in ("partition", "account", "qos"):
        if cluster[key]:
            params[f"slurm_{key}"] = cluster[key]
    return params


def submitit_folder(plan: Plan) -> Path:
    """Where submitit keeps pickles and logs: on shared storage, next to the results."""
    folder = plan.base.cluster.folder
    return Path(folder) if folder else group_dir(plan) / ".submitit"


def make_executor(plan: Plan):
    """A submitit AutoExecutor for SLURM configured from the plan's cluster section."""
    import submitit

    cluster, paths, folder = plan.base.cluster, plan.base.paths, submitit_folder(plan)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=cluster.max_requeues,
                                     slurm_python=container.container_python(cluster, paths, folder))
    params = slurm_parameters(cluster, f"hpclab-{plan.group}")
    params["slurm_setup"] += container.slurm_setup(cluster, paths, folder)  # binds, requeue relay
    executor.update_parameters(**params)
    return executor


def render_sbatch(plan: Plan) -> str:
    """The sbatch script submitit would submit for this plan's array (for dry runs)."""
    from submitit.slurm.slurm import _make_sbatch_string

    inner = make_executor(plan)._executor
    count = min(len(plan), plan.base.cluster.max_array_size)
    return _make_sbatch_string(command=inner._submitit_command_str, folder=inner.folder, map_count=count,
                               **inner.parameters)


def submit_slurm(plan: Plan) -> list[str]:
    """Submit the runs still to do as one job array (split at MaxArraySize); return job ids."""
    from hpclab.data.loader import check_splits

    pending = [cfg for cfg in plan.runs if cfg.force or not is_complete(run_dir_of(cfg))]
    if not pending:
        log.info("all %d runs are complete; nothing to submit (force=true re-runs them)", len(plan))
        return []
    cluster = plan.base.cluster
    for cfg in pending:  # fail before anything is queued
        check_splits(cfg, cluster.nodes * max(cluster.gpus_per_node, 1))
    container.check_image(plan.base.cluster)
    executor = make_executor(plan)
    size = plan.base.cluster.max_array_size
    limit = max_array_tasks()
    if limit is not None and size > limit:  # sbatch would refuse the whole array
        if len(pending) > limit:
            log.info("cluster.max_array_size=%d is above this cluster's MaxArraySize - 1 = %d: arrays of %d tasks",
                     size, limit, limit)
        size = limit
    record = _load_submissions(plan)
    folder = submitit_folder(plan)
    ids = []
    for start in range(0, len(pending), size):
        chunk = pending[start : start + size]
        written = set(folder.rglob("*")) if folder.is_dir() else set()
        try:
            with executor.batch():  # one array; each task's callable keeps its checkpoint() method
                jobs = [executor.submit(TrainJob(OmegaConf.to_yaml(cfg))) for cfg in chunk]
        except Exception as exc:  # submitit's FailedJobError carries sbatch's stderr
            _remove_new_files(folder, written)  # the refused array's pickles and script
            if ids:
                write_json(group_dir(plan) / "submissions.json", record)  # keep what was queued
            raise ConfigError(sbatch_refusal(str(exc), plan.base.cluster, ids)) from None
        ids.append(jobs[0].job_id.split("_")[0])
        for job, cfg in zip(jobs, chunk):
            record[cfg.run_name] = {"job_id": job.job_id, "log": str(job.paths.stdout), "run_dir": str(run_dir_of(cfg))}
    write_json(group_dir(plan) / "submissions.json", record)
    return ids


def _remove_new_files(folder: Path, before: set[Path]) -> None:
    """Delete what appeared under ``folder`` since ``before``, then the folders left empty up to
    the sweep's results folder (a refused submission leaves nothing behind)."""
    if not folder.is_dir():
        return
    for path in sorted(set(folder.rglob("*")) - before, reverse=True):
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    for empty in (folder, folder.parent):
        if empty.is_dir() and not any(empty.iterdir()):
            empty.rmdir()


# sbatch's reasons for refusing a job, and the setting that usually fixes each.
_SBATCH_HINTS = (
    ("Invalid generic resource", "this cluster has no GPUs there: cluster.gpus_per_node=0"),
    ("More processors requested than permitted",
     "the job asks for more nodes or CPUs than the partition has (sinfo -o '%P %D %c' lists them): lower "
     "cluster.nodes or cluster.cpus_per_task"),
    ("Requested node configuration is not available",
     "no node has what the job asks for: lower cluster.gpus_per_node (0 without GPUs), cluster.cpus_per_task, "
     "cluster.mem_gb or cluster.nodes"),
    ("Invalid partition", "name a partition that exists (sinfo lists them): cluster.partition=..."),
    ("Invalid account", "name an account you may use (sacctmgr show assoc user=$USER): cluster.account=..."),
    ("Invalid qos", "name a QOS your account may use: cluster.qos=..."),
    ("time limit", "ask for less time: cluster.time_min=..."),
    ("No such file or directory: 'sbatch'", "no SLURM client here: submit from a login node, or use cluster=local"),
)


def sbatch_refusal(error: str, cluster: DictConfig, queued: list[str]) -> str:
    """One line: why sbatch refused the array, the setting to change, what was queued before."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    reason = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "no reason given")
    hint = next((fix for needle, fix in _SBATCH_HINTS if needle.lower() in error.lower()), None)
    if hint is None and cluster.gpus_per_node:
        hint = "on a cluster without GPUs, submit with cluster.gpus_per_node=0"
    done = f" (arrays {', '.join(queued)} were queued before it)" if queued else ""
    return f"sbatch refused the job array: {reason}{'; ' + hint if hint else ''}{done}"


def _load_submissions(plan: Plan) -> dict[str, Any]:
    """run name -> job id, log and run folder of earlier submissions of this sweep. A damaged
    file stops with its name rather than being overwritten (it holds the only job ids)."""
    path = group_dir(plan) / "submissions.json"
    if not path.is_file():
        return {}
    try:
        record = read_json(path)
    except ValueError as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc}); repair it or move it away") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{path} should hold a JSON object of run name -> job; repair it or move it away")
    return record


# --------------------------------------------------------------------------- status

# squeue states of jobs that are not over yet (squeue -t all also lists recently ended ones).
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


def squeue_jobs() -> Optional[dict[str, dict[str, str]]]:
    """This user's jobs the controller knows (queued, running, recently ended; no accounting
    needed): ``'123_4'`` / ``'125'`` -> state, reason, name. None when squeue does not answer."""
    import getpass

    try:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T|%r|%j"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    jobs = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4:
            jobs[parts[0]] = {"state": parts[1], "reason": parts[2], "name": parts[3]}
    return jobs


def _job_number(job: Optional[str]) -> int:
    """Submission order of a job reference (array job id of ``123_4``)."""
    try:
        return int(str(job).split("_")[0])
    except ValueError:
        return -1


def _queued_by_sbatch(plan: Plan, jobs: dict[str, dict[str, str]], submitit_jobs: set[int]) -> dict[int, str]:
    """Run index -> job, for tasks queued by slurm/*.sh that have not started (and so wrote
    nothing yet): jobs named ``hpclab-<group>`` that submitit did not submit; array task i
    runs run i, a plain job the only run of a single-run plan."""
    found: dict[int, str] = {}
    for job, info in jobs.items():
        if info["name"] != f"hpclab-{plan.group}" or _job_number(job) in submitit_jobs:
            continue
        index = int(job.split("_")[1]) if "_" in job else 0 if len(plan) == 1 else None
        if index is not None and index < len(plan) and _job_number(job) > _job_number(found.get(index)):
            found[index] = job
    return found


def _last_step(run_dir: Path) -> Optional[int]:
    """The last step logged in metrics.jsonl (progress, and whether a resume kept it); a last
    line cut short by a kill is passed over for the one before it."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    import json

    for line in reversed(path.read_text().splitlines()):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def run_state(run_dir: Path, job: Optional[str], squeued: Optional[dict[str, str]], starts: list[dict[str, Any]],
              submitit_log: Optional[str], submitit_dir: Path) -> str:
    """One run's state from squeue (if it still knows the job), the results folder and the
    task records: PENDING, REQUEUED (pending again after a requeue), RUNNING, COMPLETED,
    FAILED, CANCELLED, TIMEOUT, ..., INCOMPLETE (ended without results), NOT-SUBMITTED."""
    restarts = sum(1 for s in starts if s.get("job") == job) - 1 if job else -1
    if squeued and squeued["state"] in ACTIVE:
        state = squeued["state"]
        if state == "PENDING" and restarts >= 0:
            return "REQUEUED"
        return f"{state} (restart {restarts})" if state == "RUNNING" and restarts > 0 else state
    if is_complete(run_dir):
        return "COMPLETED"
    if squeued:  # ended without a completed summary
        return "FAILED" if squeued["state"] == "COMPLETED" else squeued["state"]
    if submitit_log and _submitit_error(submitit_log, submitit_dir):
        return "FAILED"
    if job:
        return "INCOMPLETE"
    return "PARTIAL" if (run_dir / "checkpoints").is_dir() else "NOT-SUBMITTED"


def status_lines(plan: Plan) -> list[str]:
    """One line per run: its state, SLURM job, last logged step and log file.

    Works without SLURM accounting: the job of a run comes from submissions.json (written by
    ``launch.py ... cluster=slurm``), the run's slurm.json (written by every task that starts,
    also under slurm/*.sh) or, for sbatch tasks still queued, the job name; the state from
    squeue while the controller remembers the job, then from the results folder.
    """
    record = _load_submissions(plan)
    runs = []
    for index, name in enumerate(plan.run_names):  # no run's config is composed
        run_dir = plan.run_dir(index)
        sub, rec = record.get(name, {}), read_record(run_dir)
        # The newest submission wins: launch.py's record or the tasks' own record.
        job, log_path, submitit_log = sub.get("job_id"), sub.get("log"), sub.get("log")
        if rec.get("job") and _job_number(rec["job"]) >= _job_number(job):
            job, log_path = rec["job"], rec.get("log") or log_path
            submitit_log = log_path if rec["job"] == sub.get("job_id") else None
        runs.append((name, run_dir, job, log_path, submitit_log, rec.get("starts", [])))
    # squeue after the records: a task that starts meanwhile then shows as RUNNING; asked first,
    # squeue would call it pending while its start is on record, which reads as REQUEUED.
    jobs = squeue_jobs()
    submitit_jobs = {_job_number(r.get("job_id")) for r in record.values()}
    queued = _queued_by_sbatch(plan, jobs, submitit_jobs) if jobs else {}
    lines = [f"{'run':<32} {'state':<20} {'job':<14} {'step':>8}  log"]
    for index, (name, run_dir, job, log_path, submitit_log, starts) in enumerate(runs):
        if index in queued and _job_number(queued[index]) > _job_number(job) and ("_" in queued[index] or not job):
            job, log_path, submitit_log = queued[index], None, None
        squeued = jobs.get(job) if jobs and job else None
        state = run_state(run_dir, job, squeued, starts, submitit_log, submitit_folder(plan))
        step = _last_step(run_dir)
        lines.append(f"{name:<32} {state:<20} {job or '-':<14} {'-' if step is None else step:>8}  "
                     f"{log_path or '-'}")
    if jobs is None:
        lines.append("(squeue does not answer: states come from the results folder only)")
    return lines


def _submitit_error(log_path: str, folder: Path) -> bool:
    """Whether submitit's last start of the task whose log is ``log_path`` ended in an exception,
    from its stderr log. Nothing is unpickled (a results folder may be writable by others), and
    only logs inside the sweep's own submitit folder are read (submissions.json could name any path)."""
    err = Path(log_path).with_name(Path(log_path).name.replace("_log.out", "_log.err"))
    try:
        if not err.resolve().is_relative_to(folder.resolve()) or not err.is_file():
            return False
        with open(err, "rb") as fh:
            fh.seek(max(err.stat().st_size - (1 << 16), 0))
            tail = fh.read().decode(errors="replace")
    except OSError:
        return False
    return tail.rfind("Submitted job triggered an exception") > tail.rfind("Starting with")
