"""One run as a job: results folder, config/environment records, training, analyses, summary.

``TrainJob`` is what executors run: locally it is called in-process (or in N spawned
processes for data parallelism), on SLURM submitit pickles it. Its ``checkpoint()`` returns the
same job to requeue; since training always resumes from the newest checkpoint, restarting is
the same code path as starting.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from hpclab.config import read_run_config, save_yaml
from hpclab.errors import Preempted, RunConflict, RunFolderError
from hpclab.launch.lock import LOCK_NAME, TOKEN_ENV, run_lock, unwritable
from hpclab.launch.slurm import JobSignals, export_rank_env, job_ref, record_task, restart_count
from hpclab.utils import environment_record, read_json, setup_logging, under_slurm, use_threads, write_json

log = logging.getLogger("hpclab")


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.results) / cfg.run_group / cfg.run_name


def is_complete(run_dir: Path) -> bool:
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return False
    try:
        return read_json(summary).get("status") == "completed"
    except ValueError:
        return False


def check_writable(*directories: Path) -> None:
    """Fail before training, not at the first checkpoint, when a folder cannot be written."""
    for directory in directories:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            probe = directory / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"probe")
            probe.unlink()
        except OSError as exc:
            raise RunFolderError(exc.errno, unwritable(directory, exc)) from None


def _starts_over(cfg: DictConfig) -> bool:
    """force=true or train.resume=never: the run starts from step 0, old results kept aside."""
    return bool(cfg.force) or cfg.train.resume == "never"


def train_run(cfg: DictConfig, folder_ready: bool = False) -> dict[str, Any]:
    """Train and analyse one run; return its summary. Skips finished runs unless ``force``.

    Rank 0 owns the run folder for the whole run (``run.lock``): a second process for the same
    run stops with a line naming the holder. ``folder_ready``: the caller (the parent of local
    data-parallel processes) already holds the lock and has moved old results aside.
    """
    from hpclab.data.loader import check_splits
    from hpclab.weights import use_cache

    run_dir = run_dir_of(cfg)
    rank = int(os.environ.get("RANK", "0"))
    use_threads(cfg.cluster.threads)  # the same count here, in each rank and in every SLURM task
    check_splits(cfg, int(os.environ.get("WORLD_SIZE", "1")))  # fail before anything is written
    use_cache(cfg.paths.cache)  # pretrained weights resolve from the staged cache, never the network
    if rank != 0:
        return _check_and_train(cfg, run_dir, rank, folder_ready=True)
    with run_lock(run_dir):
        return _check_and_train(cfg, run_dir, rank, folder_ready)


def _check_and_train(cfg: DictConfig, run_dir: Path, rank: int, folder_ready: bool) -> dict[str, Any]:
    from hpclab.engine.checkpoints import clean_temporaries
    from hpclab.launch.sweep import config_diff

    old = read_run_config(run_dir)
    if old is not None and not _starts_over(cfg):
        changed = config_diff(old, cfg)
        if changed:
            raise RunConflict(f"{run_dir} holds a run with another config ({'; '.join(changed[:3])}); "
                              f"choose another run_name=... or pass force=true to replace it")
    if is_complete(run_dir) and not _starts_over(cfg):
        log.info("run %s is complete; skipping (force=true re-runs it)", run_dir)
        return read_json(run_dir / "summary.json")
    if rank == 0:
        if not folder_ready and _starts_over(cfg):
            _clear_run(run_dir)
        check_writable(run_dir)
        for tmp in clean_temporaries(run_dir):
            log.info("removed %s, left by a write that a kill cut short", tmp)
    return _train(cfg, run_dir, rank)


def _train(cfg: DictConfig, run_dir: Path, rank: int) -> dict[str, Any]:
    from hpclab.analysis import ANALYSES
    from hpclab.engine import Trainer

    attempts = start_attempt(run_dir) if rank == 0 else []
    setup_logging(run_dir, rank)
    if rank == 0:
        save_yaml(cfg, run_dir / "config.yaml")
        write_json(run_dir / "environment.json", environment_record())
        record_task(run_dir)
    log.info("run %s on %s", run_dir, socket.gethostname())
    trainer = Trainer(cfg, run_dir)
    try:
        try:
            result = trainer.fit()
            analyses: dict[str, Any] = {}
            if trainer.parts.is_main:
                for item in cfg.analysis:  # "name" or {name: ..., **kwargs}
                    kwargs = {"name": item} if isinstance(item, str) else OmegaConf.to_container(item, resolve=True)
                    name = kwargs.pop("name")
                    log.info("analysis %s", name)
                    analyses[name] = ANALYSES[name](trainer.run, run_dir / "figures", **kwargs)
        except (Preempted, SystemExit):  # a stop signal: each rank says where it stopped (they agree)
            log.warning("rank %d of %d stopped at step %d", trainer.parts.accelerator.process_index,
                        trainer.parts.world, trainer.state.step)
            raise
        except BaseException:  # failed: srun's SIGTERM to the other ranks must not turn it into a stop (exit 3)
            if under_slurm():
                JobSignals.leave()
            raise
        finally:
            if rank == 0:  # also when stopped by a signal or an error: the time was spent
                attempts = end_attempt(run_dir, attempts, trainer.state.step)
        summary = {
            "status": "completed",
            "run": cfg.run_name,
            "group": cfg.run_group,
            "experiment": cfg.experiment,
            "parameters": {n: sum(p.numel() for p in trainer.parts.unwrap(n).parameters()) for n in trainer.parts.models},
            "wall_time_s": round(sum(a.get("wall_time_s", 0) for a in attempts), 2),
            "attempts": len(attempts),
            **result,
            "analyses": analyses,
        }
        if trainer.parts.is_main:
            write_json(run_dir / "summary.json", summary)
        return summary
    finally:
        trainer.close()
        setup_logging(None, rank)  # detach run.log: what follows belongs to the next run


ATTEMPTS = "attempts.json"  # per run: every start of its training, its wall time and last step


def start_attempt(run_dir: Path) -> list[dict[str, Any]]:
    """Record a new start in ``attempts.json``. An earlier start that never recorded its end
    (killed, preempted, requeued) is closed at the last write to its ``run.log``, so the run's
    wall time counts every attempt, not only the last."""
    path = run_dir / ATTEMPTS
    try:
        attempts = read_json(path) if path.is_file() else []
    except ValueError:
        log.warning("%s is damaged; earlier attempts are left out of the run's wall time", path)
        attempts = []
    attempts = [a for a in attempts if isinstance(a, dict)] if isinstance(attempts, list) else []
    run_log = run_dir / "run.log"
    for entry in attempts:
        if "wall_time_s" not in entry and "start_ts" in entry:
            last = run_log.stat().st_mtime if run_log.is_file() else entry["start_ts"]
            entry.update(wall_time_s=round(max(last - entry["start_ts"], 0.0), 2), ended="killed")
    attempts.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "start_ts": time.time(),
                     "host": socket.gethostname(), "job": job_ref()})
    write_json(path, attempts)
    return attempts


def end_attempt(run_dir: Path, attempts: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    entry = attempts[-1]
    entry.update(wall_time_s=round(time.time() - entry["start_ts"], 2), reached_step=step,
                 ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json(run_dir / ATTEMPTS, attempts)
    return attempts


def _clear_run(run_dir: Path) -> None:
    """``force=true`` / ``train.resume=never``: move the old results aside (never delete them
    silently). The folder itself stays, with its lock, so the owner keeps it throughout."""
    entries = [p for p in run_dir.iterdir() if p.name != LOCK_NAME] if run_dir.is_dir() else []
    if not entries:
        return
    backup = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    backup.mkdir()
    for entry in entries:
        entry.rename(backup / entry.name)
    log.info("moved previous results to %s", backup)


def _spawned(rank: int, cfg_yaml: str, world: int, port: int, token: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **{TOKEN_ENV: token})
    train_run(OmegaConf.create(cfg_yaml), folder_ready=True)


def train_local_processes(cfg: DictConfig, processes: int) -> dict[str, Any]:
    """Data-parallel training in ``processes`` local processes (gloo on CPU, nccl on GPUs).
    This process holds the run's lock for them and moves old results aside first."""
    import torch.multiprocessing as mp

    from hpclab.data.loader import check_splits

    check_splits(cfg, processes)  # here, not in each spawned process
    run_dir = run_dir_of(cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with run_lock(run_dir) as me:
        if _starts_over(cfg):
            _clear_run(run_dir)
        mp.start_processes(_spawned, args=(OmegaConf.to_yaml(cfg), processes, port, me["token"]), nprocs=processes,
                           start_method="spawn", join=True)
    return read_json(run_dir / "summary.json")


class TrainJob:
    """A picklable, requeue-safe job for one run (submitit's checkpoint protocol)."""

    def __init__(self, cfg_yaml: str) -> None:
        self.cfg_yaml = cfg_yaml  # plain text: no objects cross the pickle

    @property
    def cfg(self) -> DictConfig:
        return OmegaConf.create(self.cfg_yaml)

    def __call__(self) -> dict[str, Any]:
        # Ranks and the rendezvous from SLURM's variables, as in the sbatch scripts' tasks (not
        # submitit's TorchDistributedEnvironment: its MASTER_ADDR is the first node's *name*,
        # which need not resolve; first_node() uses the address SLURM reaches the node at).
        export_rank_env()
        summary = train_run(resumable(self.cfg))
        refresh_sweep_report(self.cfg)
        if int(os.environ.get("RANK", "0")) == 0:
            print(results_line(self.cfg), flush=True)  # the task log ends saying where they are
        return summary

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on the pre-timeout signal: the engine has already written its
        checkpoint at the step boundary, so requeue the same job, which resumes from it."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)  # the restart resumes: see resumable()


def results_line(cfg: DictConfig) -> str:
    """The last line of a SLURM task's log: where its run's results (and its sweep's summary) are."""
    line = f"results: {run_dir_of(cfg)}/"
    if cfg.sweep.name:
        line += f" (sweep summary: {run_dir_of(cfg).parent}/summary.md)"
    return line


def resumable(cfg: DictConfig) -> DictConfig:
    """A requeued SLURM task resumes: ``force=true`` and ``train.resume=never`` apply to the
    first start only (else every requeue would start the run over)."""
    if restart_count() > 0 and _starts_over(cfg):
        cfg = cfg.copy()
        cfg.force = False
        cfg.train.resume = "auto"
    return cfg


def run_in_slurm_task(cfg: DictConfig) -> dict[str, Any]:
    """One run in this SLURM task (the sbatch scripts' ``jobs/run.py``): ranks from SLURM's
    variables, job-level signal handlers (requeue on USR2), resume after a requeue, and the
    sweep summary refreshed when the run is done."""
    export_rank_env()
    signals = JobSignals().install() if under_slurm() else None
    try:
        summary = train_run(resumable(cfg))
        refresh_sweep_report(cfg)
    finally:
        if signals is not None:
            signals.leave()  # exiting with our own code (0, or e.g. RankLost's 4) from here
    return summary


def refresh_sweep_report(cfg: DictConfig) -> None:
    """Rebuild ``results/<sweep>/summary.*`` after an array task finished (rank 0).

    Each task writes its own summary.json, then marks the summary stale and rebuilds it unless
    another task is rebuilding: that one rebuilds again while it finds the mark, and looks for
    it once more after letting go of the lock. So the summary ends up listing every finished
    run, and tasks that finish together share rebuilds instead of each reading the whole sweep
    in turn (at 10,000 runs a rebuild takes seconds, and the tasks would wait for one another).
    Failures only warn: ``python jobs/report.py results/<sweep>`` rebuilds it at any time.
    """
    if not cfg.sweep.name or int(os.environ.get("RANK", "0")) != 0:
        return
    from hpclab.analysis.report import write_report

    group = Path(cfg.paths.results) / cfg.run_group
    stale, lock = group / ".report.stale", FileLock(str(group / ".report.lock"))
    try:
        stale.touch()
        while stale.exists():
            try:
                lock.acquire(timeout=0)
            except Timeout:
                return  # the holder sees the mark
            try:
                while stale.exists():
                    stale.unlink(missing_ok=True)
                    write_report(group, cfg.sweep.report)
            finally:
                lock.release()
    except Exception as exc:  # the run itself succeeded; the summary can be rebuilt later
        log.warning("sweep summary not refreshed (%s: %s); run: python jobs/report.py %s",
                    type(exc).__name__, exc, group)
