"""Executors: run a plan locally, or submit it as SLURM job arrays through submitit."""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import io
import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from hpclab.config import ConfigError
from hpclab.launch import container
from hpclab.launch.batch import job_lines
from hpclab.launch.fit import check_fit
from hpclab.launch.progress import progress_cells
from hpclab.launch.job import (
    TrainJob,
    check_run,
    completed_with,
    run_dir_of,
    train_local_processes,
    train_run,
)
from hpclab.launch.slurm import _scontrol, max_array_tasks, requeue_on_usr2
from hpclab.launch.sweep import SweepPlan
from hpclab.rundir import SUBMISSIONS, checkpoint_dir, completed_summary, read_slurm_record, read_submissions
from hpclab.utils import write_json

log = logging.getLogger("hpclab")


def group_dir(plan: SweepPlan) -> Path:
    return Path(plan.base.paths.results) / plan.group


def describe_plan(plan: SweepPlan) -> str:
    lines = [f"{len(plan)} run(s) -> {group_dir(plan)}/"]
    for cfg in plan.runs:
        state = "complete" if completed_with(run_dir_of(cfg), cfg) else "to run"
        lines.append(f"  {cfg.run_name:<32} {state:<9} model={cfg.model.name} data={cfg.data.name} "
                     f"task={cfg.task.name} steps={cfg.train.max_steps or str(cfg.train.epochs) + ' epochs'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- local

def run_local(plan: SweepPlan) -> list[dict[str, Any]]:
    """Run every run of the plan in turn in this process (or N processes each), then report."""
    from hpclab.analysis.report import write_report
    stage_datasets(plan.runs)
    for cfg in plan.runs:  # and every run still to do is checked, before the first run starts
        if cfg.force or cfg.train.resume == "never" or not completed_with(run_dir_of(cfg), cfg):
            check_run(cfg, cfg.cluster.processes)
    summaries = []
    with requeue_on_usr2():
        for i, cfg in enumerate(plan.runs, 1):
            log.info("[%d/%d] %s", i, len(plan), run_dir_of(cfg))
            processes = cfg.cluster.processes
            summaries.append(train_local_processes(cfg, processes) if processes > 1 else train_run(cfg))
    if plan.base.sweep.name:
        write_report(group_dir(plan), plan.base.sweep.report)
    return summaries


def stage_datasets(runs: list[DictConfig]) -> None:
    """Stage each dataset of these runs (a no-op when prepared; local mirrors, then the
    downloader), so a missing dataset fails before the first run starts or is queued."""
    from hpclab.data.prepare import hdf5_path, stage

    for cfg in {hdf5_path(c): c for c in runs}.values():
        stage(cfg)


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


def submitit_folder(plan: SweepPlan) -> Path:
    """Where submitit keeps pickles and logs: on shared storage, next to the results."""
    folder = plan.base.cluster.folder
    return Path(folder) if folder else group_dir(plan) / ".submitit"


def submission_tag(plan: SweepPlan) -> str:
    """The comment the launcher's jobs carry: which results folder they write to (a digest of
    the group folder, so a sweep submitted from two results folders is never confused)."""
    return "hpclab:" + hashlib.sha256(str(group_dir(plan).resolve()).encode()).hexdigest()[:16]


TAG = re.compile(r"hpclab:[0-9a-f]{16}")


def _extra_parameters(plan: SweepPlan) -> dict[str, Any]:
    """The sbatch options beyond submitit's own (requeue, cluster.extra, the results-folder
    tag in the comment) of this plan's arrays."""
    extra = dict(slurm_parameters(plan.base.cluster, f"hpclab-{plan.group}")["slurm_additional_parameters"])
    extra["comment"] = ";".join(str(c) for c in (extra.get("comment"), submission_tag(plan)) if c)
    return extra


def make_executor(plan: SweepPlan):
    """A submitit AutoExecutor for SLURM configured from the plan's cluster section."""
    import submitit

    cluster, paths, folder = plan.base.cluster, plan.base.paths, submitit_folder(plan)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=cluster.max_requeues,
                                     slurm_python=container.container_python(cluster, paths, folder))
    params = slurm_parameters(cluster, f"hpclab-{plan.group}")
    params["slurm_setup"] += container.slurm_setup(cluster, paths, folder)  # binds, requeue relay
    executor.update_parameters(**params)
    return executor


@dataclass(frozen=True)
class ArraySpec:
    """One job array of a submission: pending runs ``start:stop``, its own ``%`` limit, and the
    array of the same lane it waits for (``--dependency=afterany``), if any."""

    start: int
    stop: int
    parallelism: int
    after: Optional[int] = None  # index into the layout

    @property
    def tasks(self) -> int:
        return self.stop - self.start


def array_layout(tasks: int, size: int, parallelism: int) -> list[ArraySpec]:
    """Split ``tasks`` runs into arrays of at most ``size`` that together never run more than
    ``parallelism`` tasks at once (SLURM's ``%P`` limit holds per array, not per sweep).

    The arrays are dealt to lanes: arrays of one lane run one after the other (afterany: the
    next starts once the one before has ended, whatever its outcome), lanes run side by side
    and share the limit. Every split of the arrays into 1..min(parallelism, arrays) lanes is
    costed in rounds of equal tasks (sum over a lane's arrays of ceil(tasks / its share)) and
    the one that ends soonest is taken; on a tie, the one with more lanes, since a lane never
    waits for a slow or requeued task of another. So a few arrays under a large limit run side
    by side with shares in proportion to their sizes (2500 runs, arrays of 1000, limit 64:
    26 + 25 + 13), and a limit smaller than the arrays' count chains them (3000 runs, limit 2:
    three arrays of %2, one after the other, where two lanes of %1 would leave a slot idle for
    the last third).
    """
    sizes = [min(size, tasks - start) for start in range(0, tasks, size)]
    if not sizes:
        return []
    best: Optional[tuple[int, list[int], list[int]]] = None
    for lanes in range(1, min(parallelism, len(sizes)) + 1):
        lane_of, load = [], [0] * lanes
        for n in sizes:  # each array to the lane with the fewest tasks so far, in order
            lane = min(range(lanes), key=lambda i: (load[i], i))
            lane_of.append(lane)
            load[lane] += n
        members = [[n for n, l in zip(sizes, lane_of) if l == lane] for lane in range(lanes)]
        shares = _share_out(parallelism, members)
        finish = max(sum(-(-n // share) for n in arrays) for arrays, share in zip(members, shares))
        if best is None or finish <= best[0]:
            best = (finish, lane_of, shares)
    _, lane_of, shares = best
    layout, last = [], [None] * len(shares)
    start = 0
    for index, (n, lane) in enumerate(zip(sizes, lane_of)):
        layout.append(ArraySpec(start, start + n, shares[lane], last[lane]))
        last[lane] = index
        start += n
    return layout


def _share_out(parallelism: int, members: list[list[int]]) -> list[int]:
    """Slots per lane (lanes of chained arrays of these sizes): one each, then one at a time
    to the lane that would take the most rounds, never beyond its largest array."""
    shares = [1] * len(members)
    rounds = lambda lane: sum(-(-n // shares[lane]) for n in members[lane])  # noqa: E731
    heap = [(-rounds(i), i) for i in range(len(members)) if shares[i] < max(members[i])]
    heapq.heapify(heap)
    for _ in range(parallelism - len(members)):
        if not heap:
            break
        _, lane = heapq.heappop(heap)
        shares[lane] += 1
        if shares[lane] < max(members[lane]):
            heapq.heappush(heap, (-rounds(lane), lane))
    return shares


def describe_layout(layout: list[ArraySpec], parallelism: int) -> str:
    """One line: the arrays of a submission, their limits and chaining."""
    parts = [f"{spec.tasks}%{spec.parallelism}" + (f" after #{spec.after + 1}" if spec.after is not None else "")
             for spec in layout]
    return (f"{sum(s.tasks for s in layout)} task(s) in {len(layout)} array(s), at most {parallelism} at once: "
            + ", ".join(f"#{i + 1} {part}" for i, part in enumerate(parts)))


def array_size(cluster: DictConfig, tasks: int) -> int:
    """cluster.max_array_size, lowered to what this controller takes (MaxArraySize - 1)."""
    size = cluster.max_array_size
    limit = max_array_tasks()
    if limit is not None and size > limit:  # sbatch would refuse the whole array
        if tasks > limit:
            log.info("cluster.max_array_size=%d is above this cluster's MaxArraySize - 1 = %d: arrays of %d tasks",
                     size, limit, limit)
        size = limit
    return size


def max_job_count() -> Optional[int]:
    """The controller's MaxJobCount (every array task counts as one job); None when unknown."""
    for line in (_scontrol("show", "config") or "").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxJobCount" and value.strip().isdigit():
            return int(value.strip())
    return None


def check_capacity(plan: SweepPlan, tasks: int) -> None:
    """Refuse, before anything is queued, a submission the controller cannot hold: past
    MaxJobCount sbatch neither queues nor refuses, it retries for two minutes and then fails
    in the middle of a split sweep."""
    limit = max_job_count()
    jobs = squeue_jobs(everyone=True)
    if limit is None or jobs is None:
        return
    if len(jobs) + tasks >= limit:
        raise ConfigError(f"the controller holds at most MaxJobCount={limit} jobs (each array task counts) and "
                          f"has {len(jobs)} now: {tasks} more do not fit; submit the sweep in parts (e.g. a narrower "
                          f"grid or seed range per submission: they all go to {group_dir(plan)}/) or when the "
                          f"queue has emptied")


def check_one_cluster_setting(plan: SweepPlan, pending: list[DictConfig]) -> None:
    """Every run of a submission is submitted with the base config's cluster section, so runs
    whose own cluster sections differ (a sweep axis over cluster or cluster.*) are refused,
    not ignored."""
    base = OmegaConf.to_container(plan.base.cluster, resolve=True)
    sections = [OmegaConf.to_container(cfg.cluster, resolve=True) for cfg in pending]
    differ = sorted({key for own in sections for key in set(own) | set(base) if own.get(key) != base.get(key)})
    if differ:
        key = "name" if "name" in differ else differ[0]
        seen = list(dict.fromkeys(str(own.get(key)) for own in sections))
        what = "cluster" if key == "name" else f"cluster.{key}"
        raise ConfigError(f"{what} differs between the runs ({', '.join(seen)}), but one submission has one "
                          f"cluster setting: give {what} one value, not a sweep axis")


def to_submit(plan: SweepPlan) -> tuple[list[DictConfig], dict[str, str]]:
    """The runs a submission queues: not complete (or force=true), and not queued or running
    under an earlier submission (those run already: queueing them again would run them twice,
    and past cluster.array_parallelism). Also the skipped runs: name -> job."""
    active = active_jobs(plan)
    pending = [cfg for cfg in plan.runs
               if (cfg.force or not completed_with(run_dir_of(cfg), cfg)) and cfg.run_name not in active]
    return pending, active


def render_sbatch(plan: SweepPlan) -> str:
    """The arrays submitit would submit for this plan (for dry runs): their layout, then the
    sbatch script of the first one."""
    from submitit.slurm.slurm import _make_sbatch_string

    pending, active = to_submit(plan)
    check_one_cluster_setting(plan, pending)
    cluster = plan.base.cluster
    layout = array_layout(len(pending), array_size(cluster, len(pending)), cluster.array_parallelism)
    if not layout:
        return "# nothing to submit: every run is complete" + (f" or queued ({len(active)})" if active else "")
    executor = make_executor(plan)
    _configure_array(executor, layout[0], _extra_parameters(plan), None)
    inner = executor._executor
    head = f"# {describe_layout(layout, cluster.array_parallelism)}\n"
    if active:
        head += f"# {len(active)} run(s) still queued or running under earlier submissions are left out\n"
    return head + _make_sbatch_string(command=inner._submitit_command_str, folder=inner.folder,
                                      map_count=layout[0].tasks, **inner.parameters)


def _configure_array(executor: Any, spec: ArraySpec, extra: dict[str, Any], after: Optional[str]) -> None:
    """Set ``executor`` up for one array: its own ``%`` limit, and afterany on the array before
    it in its lane (``after``, already submitted), added to any dependency of cluster.extra."""
    extra = dict(extra)
    if after:
        extra["dependency"] = ",".join(d for d in (extra.get("dependency"), f"afterany:{after}") if d)
    executor.update_parameters(slurm_array_parallelism=spec.parallelism, slurm_additional_parameters=extra)


def submit_slurm(plan: SweepPlan) -> dict[str, int]:
    """Submit the runs still to do as job arrays (split at MaxArraySize, at most
    cluster.array_parallelism tasks at once over all of them); return each array's job id with
    its number of tasks (empty when nothing was left to submit)."""
    pending, active = to_submit(plan)
    if active:
        log.info("%d run(s) are still queued or running under earlier submissions (launch.py status): "
                 "not submitted again", len(active))
    if not pending:
        if not active:
            log.info("all %d runs are complete; nothing to submit (force=true re-runs them)", len(plan))
        return {}
    cluster = plan.base.cluster
    check_one_cluster_setting(plan, pending)
    container.check_image(cluster)
    check_fit(cluster)  # every setting the cluster cannot give, in one line
    stage_datasets(pending)  # here, on the submitting node, as a local launch does
    for cfg in pending:  # fail before anything is queued
        check_run(cfg, cluster.nodes * max(cluster.gpus_per_node, 1))
    layout = array_layout(len(pending), array_size(cluster, len(pending)), cluster.array_parallelism)
    check_capacity(plan, len(pending))
    if len(layout) > 1:
        log.info("%s", describe_layout(layout, cluster.array_parallelism))
    executor = make_executor(plan)
    record = _load_submissions(plan)
    folder = submitit_folder(plan)
    extra = _extra_parameters(plan)
    ids: list[str] = []
    for spec in layout:
        chunk = pending[spec.start : spec.stop]
        _configure_array(executor, spec, extra, ids[spec.after] if spec.after is not None else None)
        written = set(folder.rglob("*")) if folder.is_dir() else set()
        held = io.StringIO()
        try:
            # submitit prints sbatch's stderr itself when sbatch fails, in front of the one-line
            # refusal below (which carries it): hold what is printed while submitting.
            with contextlib.redirect_stderr(held), executor.batch():  # one array; tasks keep checkpoint()
                jobs = [executor.submit(TrainJob(OmegaConf.to_yaml(cfg))) for cfg in chunk]
        except Exception as exc:  # submitit's FailedJobError carries sbatch's stderr
            _pass_on(held.getvalue(), already_in=str(exc))
            _remove_new_files(folder, written)  # the refused array's pickles and script
            if ids:
                write_json(group_dir(plan) / SUBMISSIONS, record)  # keep what was queued
            raise ConfigError(sbatch_refusal(str(exc), cluster, ids)) from None
        _pass_on(held.getvalue())
        ids.append(jobs[0].job_id.split("_")[0])
        for job, cfg in zip(jobs, chunk):
            record[cfg.run_name] = {"job_id": job.job_id, "log": str(job.paths.stdout), "run_dir": str(run_dir_of(cfg))}
    write_json(group_dir(plan) / SUBMISSIONS, record)
    return {job: spec.tasks for job, spec in zip(ids, layout)}


def _pass_on(text: str, already_in: str = "") -> None:
    """Write the lines held from stderr during a submission, except those the error carries."""
    for line in text.splitlines():
        if line.strip() and line.strip() not in already_in:
            print(line, file=sys.stderr)


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
    ("Invalid feature specification",
     "no node has that feature: fix cluster.extra.constraint (sinfo -o '%P %f' lists the features)"),
    ("Invalid account", "name an account you may use (sacctmgr show assoc user=$USER): cluster.account=..."),
    ("Invalid qos", "name a QOS your account may use: cluster.qos=..."),
    ("time limit", "ask for less time: cluster.time_min=..."),
    ("No such file or directory: 'sbatch'", "no SLURM client here: submit from a login node, or use cluster=local"),
    ("Resource temporarily unavailable",
     "the controller's queue is full (MaxJobCount, every array task counts): submit the rest when it has emptied; "
     "the same command skips what is queued or complete"),
    ("job submit limit",
     "your account or QOS may not queue that many jobs (MaxSubmitJobs, every array task counts): submit the sweep in "
     "parts, e.g. a narrower grid or seed range per submission"),
)


def sbatch_refusal(error: str, cluster: DictConfig, queued: list[str]) -> str:
    """One line: why sbatch refused the array, the setting to change, what was queued before."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    # the last error line: sbatch says why it gave up after any "sleeping and retrying" lines
    errors = [line for line in lines if "error" in line.lower()]
    reason = errors[-1] if errors else lines[0] if lines else "no reason given"
    reason = reason.removeprefix("sbatch: error: ")
    hint = next((fix for needle, fix in _SBATCH_HINTS if needle.lower() in error.lower()), None)
    if hint is None and cluster.gpus_per_node:
        hint = "on a cluster without GPUs, submit with cluster.gpus_per_node=0"
    done = f" (arrays {', '.join(queued)} were queued before it)" if queued else ""
    return f"sbatch refused the job array: {reason}{'; ' + hint if hint else ''}{done}"


def _load_submissions(plan: SweepPlan, strict: bool = True) -> dict[str, Any]:
    """run name -> job id, log and run folder of earlier submissions of this sweep (see
    :func:`hpclab.rundir.read_submissions`: a damaged file is refused, or in views ignored)."""
    return read_submissions(group_dir(plan), strict)


# --------------------------------------------------------------------------- status

# squeue states of jobs that are not over yet (squeue -t all also lists recently ended ones).
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


def squeue_jobs(everyone: bool = False) -> Optional[dict[str, dict[str, str]]]:
    """This user's jobs (``everyone``: all users') the controller knows, array tasks one by one
    (queued, running, recently ended; no accounting needed): ``'123_4'`` / ``'125'`` -> state,
    reason, name. None when squeue does not answer."""
    import getpass

    who = ["-a"] if everyone else ["-u", getpass.getuser()]
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", *who, "-o", "%i|%T|%r|%k|%j"],
                             capture_output=True, text=True, timeout=30)
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


def _job_number(job: Optional[str]) -> int:
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
        if (info["name"] != f"hpclab-{plan.group}" or _job_number(job) in submitit_jobs
                or TAG.search(info.get("comment", ""))):
            continue
        index = int(job.split("_")[1]) if "_" in job else 0 if len(plan) == 1 else None
        if index is not None and index < len(plan) and _job_number(job) > _job_number(found.get(index)):
            found[index] = job
    return found


def run_state(run_dir: Path, cfg: DictConfig, job: Optional[str], squeued: Optional[dict[str, str]],
              starts: list[dict[str, Any]], submitit_log: Optional[str], submitit_dir: Path) -> str:
    """One run's state from squeue (if it still knows the job), the results folder and the
    task records: PENDING, REQUEUED (pending again after a requeue), RUNNING, COMPLETED (with
    this config), OTHER-CONFIG (the folder holds a finished run of another config), FAILED,
    CANCELLED, TIMEOUT, ..., INCOMPLETE (ended without results), NOT-SUBMITTED."""
    restarts = sum(1 for s in starts if s.get("job") == job) - 1 if job else -1
    if squeued and squeued["state"] in ACTIVE:
        state = squeued["state"]
        if state == "PENDING" and restarts >= 0:
            return "REQUEUED"
        return f"{state} (restart {restarts})" if state == "RUNNING" and restarts > 0 else state
    if completed_with(run_dir, cfg):
        return "COMPLETED"
    if completed_summary(run_dir):
        return "OTHER-CONFIG"
    if squeued:  # ended without a completed summary
        return "FAILED" if squeued["state"] == "COMPLETED" else squeued["state"]
    if submitit_log and _submitit_error(submitit_log, submitit_dir):
        return "FAILED"
    if job:
        return "INCOMPLETE"
    return "PARTIAL" if checkpoint_dir(run_dir).is_dir() else "NOT-SUBMITTED"


@dataclass
class RunJob:
    """Where a run stands in SLURM's terms: its newest job, log and task records."""

    name: str
    run_dir: Path
    job: Optional[str]
    log_path: Optional[str]
    submitit_log: Optional[str]  # the log of the job submitit submitted, when that is the newest
    starts: list[dict[str, Any]]


def run_jobs(plan: SweepPlan) -> tuple[list[RunJob], set[int]]:
    """Each run's newest job from launch.py's record (submissions.json) or the tasks' own
    (slurm.json, also under slurm/*.sh), and the array jobs launch.py submitted. No run's
    config is composed."""
    record = _load_submissions(plan, strict=False)
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


def _add_queued_by_sbatch(plan: SweepPlan, runs: list[RunJob], submitit_jobs: set[int],
                          jobs: dict[str, dict[str, str]]) -> None:
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
        state = run_state(run.run_dir, cfg, run.job, squeued, run.starts, run.submitit_log, submitit_folder(plan))
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
