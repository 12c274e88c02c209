"""Where each run of a sweep stands: ``launch.py status`` (:func:`status_lines`), the dry run's
list (:func:`describe_plan`) and the runs a submission must leave out (:func:`active_jobs`).

A run's job comes from the launcher's record (``submissions.json``), the run's own
(``slurm.json``, written by every task that starts, also under ``slurm/*.sh``) or, for sbatch
tasks still queued, the job's name; its state from squeue while the controller remembers the
job, then from the results folder. No SLURM accounting and no run's config are needed.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hpclab.launch.job import completed_with, missing_analyses, run_dir_of
from hpclab.launch.progress import progress_cells
from hpclab.launch.sweep import SweepPlan
from hpclab.rundir import checkpoint_dir, completed_summary, read_slurm_record, read_submissions
from hpclab.rundir.lock import live_holder


def describe_plan(plan: SweepPlan) -> str:
    """The dry run's list: each run, whether it is complete with its config (``analyses``: trained,
    but analyses the config lists are still to run), and what it trains."""
    lines = [f"{len(plan)} run(s) -> {plan.group_dir}/"]
    for cfg in plan.runs:
        summary = completed_with(run_dir_of(cfg), cfg)
        state = "to run" if summary is None else "analyses" if missing_analyses(cfg, summary) else "complete"
        lines.append(
            f"  {cfg.run_name:<32} {state:<9} model={cfg.model.name} data={cfg.data.name} "
            f"task={cfg.task.name} steps={cfg.train.max_steps or str(cfg.train.epochs) + ' epochs'}"
        )
    return "\n".join(lines)


def submission_tag(plan: SweepPlan) -> str:
    """The comment the launcher's jobs carry: which results folder they write to (a digest of
    the group folder, so a sweep submitted from two results folders is never confused)."""
    return "hpclab:" + hashlib.sha256(str(plan.group_dir.resolve()).encode()).hexdigest()[:16]


TAG = re.compile(r"hpclab:[0-9a-f]{16}")  # any submission_tag: a job the launcher submitted


# squeue states of jobs that are not over yet (squeue -t all also lists recently ended ones).
ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
}


def squeue_jobs(everyone: bool = False) -> dict[str, dict[str, str]] | None:
    """This user's jobs (``everyone``: all users') the controller knows, array tasks one by one
    (queued, running, recently ended; no accounting needed): ``'123_4'`` / ``'125'`` -> state,
    reason, name. None when squeue does not answer."""
    import getpass

    who = ["-a"] if everyone else ["-u", getpass.getuser()]
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", *who, "-o", "%i|%T|%r|%k|%j"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    jobs = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|", 4)
        if len(parts) == 5:
            jobs[parts[0]] = {"state": parts[1], "reason": parts[2], "comment": parts[3], "name": parts[4]}
    return jobs


def _job_number(job: str | None) -> int:
    """Submission order of a job reference (array job id of ``123_4``)."""
    try:
        return int(str(job).split("_")[0])
    except ValueError:
        return -1


def _queued_by_sbatch(plan: SweepPlan, jobs: dict[str, dict[str, str]], submitit_jobs: set[int]) -> dict[int, str]:
    """Run index -> job, for tasks queued by slurm/*.sh that have not started (and so wrote
    nothing yet): jobs named ``hpclab-<group>`` that the launcher did not submit (its jobs carry
    a results-folder tag: those of this folder are in submissions.json, those of another folder
    are not this sweep's); array task i runs run i, a plain job the only run of a single-run plan."""
    found: dict[int, str] = {}
    for job, info in jobs.items():
        if (
            info["name"] != f"hpclab-{plan.group}"
            or _job_number(job) in submitit_jobs
            or TAG.search(info.get("comment", ""))
        ):
            continue
        index = int(job.split("_")[1]) if "_" in job else 0 if len(plan) == 1 else None
        if index is not None and index < len(plan) and _job_number(job) > _job_number(found.get(index)):
            found[index] = job
    return found


def run_state(
    run_dir: Path,
    cfg: DictConfig,
    job: str | None,
    squeued: dict[str, str] | None,
    starts: list[dict[str, Any]],
    submitit_log: str | None,
    submitit_dir: Path,
) -> str:
    """One run's state from squeue (if it still knows the job), the results folder and the
    task records: PENDING, REQUEUED (pending again after a requeue), RUNNING, COMPLETED (with
    this config), ANALYSES-TO-RUN (trained with this config; analyses it lists are not in the
    summary: launching it runs them), OTHER-CONFIG (the folder holds a finished run of another config), FAILED,
    CANCELLED, TIMEOUT, ..., INCOMPLETE (ended without results), NOT-SUBMITTED; RUNNING also
    when a live process holds the folder's lock (a local run)."""
    restarts = sum(1 for s in starts if s.get("job") == job) - 1 if job else -1
    if squeued and squeued["state"] in ACTIVE:
        state = squeued["state"]
        if state == "PENDING" and restarts >= 0:
            return "REQUEUED"
        return f"{state} (restart {restarts})" if state == "RUNNING" and restarts > 0 else state
    summary = completed_with(run_dir, cfg)
    if summary is not None:
        if not missing_analyses(cfg, summary):
            return "COMPLETED"
        return "RUNNING" if live_holder(run_dir) else "ANALYSES-TO-RUN"  # a local launch running them
    if completed_summary(run_dir):
        return "OTHER-CONFIG"
    if squeued:  # ended without a completed summary
        return "FAILED" if squeued["state"] == "COMPLETED" else squeued["state"]
    if submitit_log and _submitit_error(submitit_log, submitit_dir):
        return "FAILED"
    if live_holder(run_dir):  # a local run (or one squeue cannot be asked about) holds the folder
        return "RUNNING"
    if job:
        return "INCOMPLETE"
    return "PARTIAL" if checkpoint_dir(run_dir).is_dir() else "NOT-SUBMITTED"


@dataclass
class RunJob:
    """Where a run stands in SLURM's terms: its newest job, log and task records."""

    name: str
    run_dir: Path
    job: str | None
    log_path: str | None
    submitit_log: str | None  # the log of the job submitit submitted, when that is the newest
    starts: list[dict[str, Any]]


def run_jobs(plan: SweepPlan) -> tuple[list[RunJob], set[int]]:
    """Each run's newest job from launch.py's record (submissions.json) or the tasks' own
    (slurm.json, also under slurm/*.sh), and the array jobs launch.py submitted. No run's
    config is composed."""
    record = read_submissions(plan.group_dir, strict=False)
    runs = []
    for index, name in enumerate(plan.run_names):
        run_dir = plan.run_dir(index)
        sub, rec = record.get(name, {}), read_slurm_record(run_dir)
        # The newest submission wins: launch.py's record or the tasks' own record.
        job, log_path, submitit_log = sub.get("job_id"), sub.get("log"), sub.get("log")
        if rec.get("job") and _job_number(rec["job"]) >= _job_number(job):
            job, log_path = rec["job"], rec.get("log") or log_path
            submitit_log = log_path if rec["job"] == sub.get("job_id") else None
        runs.append(RunJob(name, run_dir, job, log_path, submitit_log, rec.get("starts", [])))
    return runs, {_job_number(r.get("job_id")) for r in record.values()}


def _add_queued_by_sbatch(
    plan: SweepPlan, runs: list[RunJob], submitit_jobs: set[int], jobs: dict[str, dict[str, str]]
) -> None:
    """Point runs at sbatch array tasks still queued for them (newer than what they record)."""
    for index, queued in _queued_by_sbatch(plan, jobs, submitit_jobs).items():
        run = runs[index]
        if _job_number(queued) > _job_number(run.job) and ("_" in queued or not run.job):
            run.job, run.log_path, run.submitit_log = queued, None, None


def active_jobs(plan: SweepPlan) -> dict[str, str]:
    """Run name -> job, for the runs whose newest job squeue shows queued or running."""
    runs, submitit_jobs = run_jobs(plan)
    jobs = squeue_jobs()
    if not jobs:
        return {}
    _add_queued_by_sbatch(plan, runs, submitit_jobs, jobs)
    return {run.name: run.job for run in runs if run.job and jobs.get(run.job, {}).get("state") in ACTIVE}


def status_lines(plan: SweepPlan) -> list[str]:
    """One line per run: its state, SLURM job, last logged step and log file.

    Works without SLURM accounting: the job of a run comes from submissions.json (written by
    ``launch.py ... cluster=slurm``), the run's slurm.json (written by every task that starts,
    also under slurm/*.sh) or, for sbatch tasks still queued, the job name; the state from
    squeue while the controller remembers the job, then from the results folder.
    """
    runs, submitit_jobs = run_jobs(plan)
    # squeue after the records: a task that starts meanwhile then shows as RUNNING; asked first,
    # squeue would call it pending while its start is on record, which reads as REQUEUED.
    jobs = squeue_jobs()
    if jobs:
        _add_queued_by_sbatch(plan, runs, submitit_jobs, jobs)
    lines = [f"{'run':<32} {'state':<20} {'job':<14} {'step':>13} {'rate':>12}  log"]
    for run, cfg in zip(runs, plan.runs):
        squeued = jobs.get(run.job) if jobs and run.job else None
        state = run_state(run.run_dir, cfg, run.job, squeued, run.starts, run.submitit_log, plan.submitit_folder)
        step, rate = progress_cells(run.run_dir)
        lines.append(f"{run.name:<32} {state:<20} {run.job or '-':<14} {step:>13} {rate:>12}  {run.log_path or '-'}")
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
