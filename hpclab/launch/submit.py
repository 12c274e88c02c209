"""SLURM submission: the runs still to do as job arrays through submitit (laid out by
:mod:`hpclab.launch.arrays`), the sbatch options from the cluster config, the checks made before
anything is queued, and sbatch's refusals in one line with the setting to change."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpclab.config import ConfigError
from hpclab.launch import container
from hpclab.launch.arrays import ArraySpec, describe_layout, plan_arrays
from hpclab.launch.batch import job_lines
from hpclab.launch.fit import check_fit
from hpclab.launch.job import TrainJob, check_run, fully_done, run_dir_of
from hpclab.launch.local import stage_datasets
from hpclab.launch.slurm import max_job_count
from hpclab.launch.status import active_jobs, squeue_jobs, submission_tag
from hpclab.launch.sweep import SweepPlan
from hpclab.rundir import SUBMISSIONS, read_submissions
from hpclab.utils import write_json

log = logging.getLogger("hpclab")


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


def _extra_parameters(plan: SweepPlan) -> dict[str, Any]:
    """The sbatch options beyond submitit's own (requeue, cluster.extra, the results-folder
    tag in the comment) of this plan's arrays."""
    extra = dict(slurm_parameters(plan.base.cluster, f"hpclab-{plan.group}")["slurm_additional_parameters"])
    extra["comment"] = ";".join(str(c) for c in (extra.get("comment"), submission_tag(plan)) if c)
    return extra


def make_executor(plan: SweepPlan):
    """A submitit AutoExecutor for SLURM configured from the plan's cluster section."""
    import submitit

    cluster, paths, folder = plan.base.cluster, plan.base.paths, plan.submitit_folder
    try:
        executor = submitit.AutoExecutor(
            folder=folder,
            cluster="slurm",
            slurm_max_num_timeout=cluster.max_requeues,
            slurm_python=container.container_python(cluster, paths, folder),
        )
    except RuntimeError as exc:  # submitit looks for srun: not on a machine without a SLURM client
        if "srun" not in str(exc):
            raise
        raise ConfigError(
            "no SLURM client on this machine (srun not found): submit from a login node of the "
            "cluster, or run here with cluster=local"
        ) from None
    params = slurm_parameters(cluster, f"hpclab-{plan.group}")
    params["slurm_setup"] += container.slurm_setup(cluster, paths, folder)  # binds, requeue relay
    executor.update_parameters(**params)
    return executor


def check_capacity(plan: SweepPlan, tasks: int) -> None:
    """Refuse, before anything is queued, a submission the controller cannot hold: past
    MaxJobCount sbatch neither queues nor refuses, it retries for two minutes and then fails
    in the middle of a split sweep."""
    limit = max_job_count()
    jobs = squeue_jobs(everyone=True)
    if limit is None or jobs is None:
        return
    if len(jobs) + tasks >= limit:
        raise ConfigError(
            f"the controller holds at most MaxJobCount={limit} jobs (each array task counts) and "
            f"has {len(jobs)} now: {tasks} more do not fit; submit the sweep in parts (e.g. a narrower "
            f"grid or seed range per submission: they all go to {plan.group_dir}/) or when the "
            f"queue has emptied"
        )


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
        raise ConfigError(
            f"{what} differs between the runs ({', '.join(seen)}), but one submission has one "
            f"cluster setting: give {what} one value, not a sweep axis"
        )


def to_submit(plan: SweepPlan) -> tuple[list[DictConfig], dict[str, str]]:
    """The runs a submission queues: not complete (or force=true), and not queued or running
    under an earlier submission (those run already: queueing them again would run them twice,
    and past cluster.array_parallelism). Also the skipped runs: name -> job."""
    active = active_jobs(plan)
    pending = [
        cfg for cfg in plan.runs if (cfg.force or not fully_done(run_dir_of(cfg), cfg)) and cfg.run_name not in active
    ]
    return pending, active


def render_sbatch(plan: SweepPlan) -> str:
    """The arrays submitit would submit for this plan (for dry runs): their layout, then the
    sbatch script of the first one."""
    from submitit.slurm.slurm import _make_sbatch_string

    pending, active = to_submit(plan)
    check_one_cluster_setting(plan, pending)
    cluster = plan.base.cluster
    layout = plan_arrays(cluster, len(pending))
    if not layout:
        return "# nothing to submit: every run is complete" + (f" or queued ({len(active)})" if active else "")
    executor = make_executor(plan)
    _configure_array(executor, layout[0], _extra_parameters(plan), None)
    inner = executor._executor
    head = f"# {describe_layout(layout, cluster.array_parallelism)}\n"
    if active:
        head += f"# {len(active)} run(s) still queued or running under earlier submissions are left out\n"
    return head + _make_sbatch_string(
        command=inner._submitit_command_str, folder=inner.folder, map_count=layout[0].tasks, **inner.parameters
    )


def _configure_array(executor: Any, spec: ArraySpec, extra: dict[str, Any], after: str | None) -> None:
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
        log.info(
            "%d run(s) are still queued or running under earlier submissions (launch.py status): not submitted again",
            len(active),
        )
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
    layout = plan_arrays(cluster, len(pending))
    check_capacity(plan, len(pending))
    if len(layout) > 1:
        log.info("%s", describe_layout(layout, cluster.array_parallelism))
    executor = make_executor(plan)
    record = read_submissions(plan.group_dir)
    folder = plan.submitit_folder
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
                write_json(plan.group_dir / SUBMISSIONS, record)  # keep what was queued
            raise ConfigError(sbatch_refusal(str(exc), cluster, ids)) from None
        _pass_on(held.getvalue())
        ids.append(jobs[0].job_id.split("_")[0])
        for job, cfg in zip(jobs, chunk):
            record[cfg.run_name] = {"job_id": job.job_id, "log": str(job.paths.stdout), "run_dir": str(run_dir_of(cfg))}
    write_json(plan.group_dir / SUBMISSIONS, record)
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
    (
        "More processors requested than permitted",
        "the job asks for more nodes or CPUs than the partition has (sinfo -o '%P %D %c' lists them): lower "
        "cluster.nodes or cluster.cpus_per_task",
    ),
    (
        "Requested node configuration is not available",
        "no node has what the job asks for: lower cluster.gpus_per_node (0 without GPUs), cluster.cpus_per_task, "
        "cluster.mem_gb or cluster.nodes",
    ),
    ("Invalid partition", "name a partition that exists (sinfo lists them): cluster.partition=..."),
    (
        "Invalid feature specification",
        "no node has that feature: fix cluster.extra.constraint (sinfo -o '%P %f' lists the features)",
    ),
    ("Invalid account", "name an account you may use (sacctmgr show assoc user=$USER): cluster.account=..."),
    ("Invalid qos", "name a QOS your account may use: cluster.qos=..."),
    ("time limit", "ask for less time: cluster.time_min=..."),
    ("No such file or directory: 'sbatch'", "no SLURM client here: submit from a login node, or use cluster=local"),
    (
        "Resource temporarily unavailable",
        "the controller's queue is full (MaxJobCount, every array task counts): submit the rest when it has emptied; "
        "the same command skips what is queued or complete",
    ),
    (
        "job submit limit",
        "your account or QOS may not queue that many jobs (MaxSubmitJobs, every array task counts): "
        "submit the sweep in parts, e.g. a narrower grid or seed range per submission",
    ),
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
