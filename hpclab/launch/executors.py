"""Executors: run a plan locally, or submit it as one SLURM job array through submitit."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpclab.launch.job import TrainJob, is_complete, run_dir_of, train_local_processes, train_run
from hpclab.launch.sweep import Plan
from hpclab.utils import read_json, write_json

log = logging.getLogger("hpclab")


def group_dir(plan: Plan) -> Path:
    return Path(plan.base.paths.results) / plan.group


def describe_plan(plan: Plan) -> str:
    lines = [f"{len(plan.runs)} run(s) -> {group_dir(plan)}/"]
    for cfg in plan.runs:
        state = "complete" if is_complete(run_dir_of(cfg)) else "to run"
        lines.append(f"  {cfg.run_name:<32} {state:<9} model={cfg.model.name} data={cfg.data.name} "
                     f"task={cfg.task.name} steps={cfg.train.max_steps or str(cfg.train.epochs) + ' epochs'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- local

def run_local(plan: Plan) -> list[dict[str, Any]]:
    """Run every run of the plan in turn in this process (or N processes each), then report."""
    from hpclab.analysis.report import write_report

    from hpclab.data.prepare import require_prepared

    for cfg in plan.runs:  # fail before the first run starts, not in the middle of a sweep
        require_prepared(cfg)
    summaries = []
    for i, cfg in enumerate(plan.runs, 1):
        log.info("[%d/%d] %s", i, len(plan.runs), run_dir_of(cfg))
        processes = cfg.cluster.processes
        summaries.append(train_local_processes(cfg, processes) if processes > 1 else train_run(cfg))
    if plan.base.sweep.name:
        write_report(group_dir(plan), plan.base.sweep.report)
    return summaries


# --------------------------------------------------------------------------- SLURM

def image_of(cluster: DictConfig) -> str | None:
    return cluster.image or os.environ.get("HPCLAB_IMAGE") or None


def container_python(cluster: DictConfig, paths: DictConfig) -> str:
    """The python command of array tasks: plain, or inside the Apptainer image with binds."""
    image = image_of(cluster)
    if not image:
        return "python"
    binds = [str(Path(p).resolve()) for p in (paths.data, paths.results, paths.cache)] + list(cluster.binds)
    bind_args = " ".join(f"--bind {shlex.quote(b)}" for b in dict.fromkeys(binds))
    nv = " --nv" if cluster.gpus_per_node > 0 else ""
    return f"apptainer exec{nv} {bind_args} {shlex.quote(str(image))} python"


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
        "slurm_setup": ["export HDF5_USE_FILE_LOCKING=FALSE", *cluster.setup],
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

    cluster = plan.base.cluster
    executor = submitit.AutoExecutor(folder=submitit_folder(plan), cluster="slurm",
                                     slurm_max_num_timeout=cluster.max_requeues,
                                     slurm_python=container_python(cluster, plan.base.paths))
    executor.update_parameters(**slurm_parameters(cluster, f"hpclab-{plan.group}"))
    return executor


def render_sbatch(plan: Plan) -> str:
    """The sbatch script submitit would submit for this plan's array (for dry runs)."""
    from submitit.slurm.slurm import _make_sbatch_string

    inner = make_executor(plan)._executor
    count = min(len(plan.runs), plan.base.cluster.max_array_size)
    return _make_sbatch_string(command=inner._submitit_command_str, folder=inner.folder, map_count=count,
                               **inner.parameters)


def submit_slurm(plan: Plan) -> list[str]:
    """Submit the runs still to do as one job array (split at MaxArraySize); return job ids."""
    from hpclab.data.prepare import require_prepared

    pending = [cfg for cfg in plan.runs if cfg.force or not is_complete(run_dir_of(cfg))]
    if not pending:
        log.info("all %d runs are complete; nothing to submit (force=true re-runs them)", len(plan.runs))
        return []
    for cfg in pending:  # fail before anything is queued
        require_prepared(cfg)
    executor = make_executor(plan)
    size = plan.base.cluster.max_array_size
    record = _load_submissions(plan)
    ids = []
    for start in range(0, len(pending), size):
        chunk = pending[start : start + size]
        with executor.batch():  # one array; each task's callable keeps its checkpoint() method
            jobs = [executor.submit(TrainJob(OmegaConf.to_yaml(cfg))) for cfg in chunk]
        ids.append(jobs[0].job_id.split("_")[0])
        for job, cfg in zip(jobs, chunk):
            record[cfg.run_name] = {"job_id": job.job_id, "log": str(job.paths.stdout), "run_dir": str(run_dir_of(cfg))}
    write_json(group_dir(plan) / "submissions.json", record)
    return ids


def _load_submissions(plan: Plan) -> dict[str, Any]:
    path = group_dir(plan) / "submissions.json"
    return read_json(path) if path.is_file() else {}


# --------------------------------------------------------------------------- status

def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """Array task id -> state from squeue (works without SLURM accounting)."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(sorted(set(job_ids)))],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def status_lines(plan: Plan) -> list[str]:
    """One line per run: state (from results and squeue) and where its log is."""
    record = _load_submissions(plan)
    states = squeue_states([r["job_id"].split("_")[0] for r in record.values()])
    lines = [f"{'run':<32} {'state':<12} {'job':<14} log"]
    for cfg in plan.runs:
        run_dir = run_dir_of(cfg)
        sub = record.get(cfg.run_name, {})
        job = sub.get("job_id", "-")
        if is_complete(run_dir):
            state = "COMPLETED"
        elif job in states:
            state = states[job]
        elif sub:
            state = "FAILED" if _failed(sub) else "STOPPED"
        else:
            state = "NOT-SUBMITTED" if not (run_dir / "checkpoints").is_dir() else "PARTIAL"
        lines.append(f"{cfg.run_name:<32} {state:<12} {job:<14} {sub.get('log', run_dir / 'run.log')}")
    return lines


def _failed(sub: dict[str, Any]) -> bool:
    result = Path(sub["log"]).with_name(Path(sub["log"]).name.replace("_log.out", "_result.pkl"))
    if not result.is_file():
        return False
    try:
        import pickle

        with open(result, "rb") as fh:  # written by submitit itself in our own folder
            outcome, _ = pickle.load(fh)
        return outcome == "error"
    except Exception:
        return False
