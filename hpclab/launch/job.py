"""One run as a job: results folder, config/environment records, training, analyses, summary.

``TrainJob`` is what the launcher runs: locally (:mod:`hpclab.launch.local`) it is called
in-process (or in N spawned processes for data parallelism), on SLURM
(:mod:`hpclab.launch.submit`) submitit pickles it. Its ``checkpoint()`` returns the same job to
requeue; since training always resumes from the newest checkpoint, restarting is the same code
path as starting.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from hpclab.config import save_yaml
from hpclab.errors import Preempted, RankLost, RunConflict, RunFolderError
from hpclab.launch.slurm import JobSignals, export_rank_env, record_task, restart_count
from hpclab.rundir import (
    ATTEMPTS,
    CONFIG,
    ENVIRONMENT,
    FIGURES,
    LOCK,
    RUN_LOG,
    SUMMARY,
    RunRecordError,
    completed_summary,
    has_progress,
    moved_aside,
    read_attempts,
    read_config,
)
from hpclab.rundir.lock import TOKEN_ENV, add_writers, run_lock, unwritable
from hpclab.utils import (
    die_with_parent,
    environment_record,
    job_ref,
    one_line,
    setup_logging,
    under_slurm,
    use_threads,
    write_json,
)

log = logging.getLogger("hpclab")


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.results) / cfg.run_group / cfg.run_name


def completed_with(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The summary of ``run_dir`` when it completed with ``cfg``'s config (the keys that say what
    it trains: a smoke run, or a run of other overrides, is not complete for this config); else None."""
    from hpclab.launch.sweep import config_diff

    summary = completed_summary(run_dir)
    if summary is None:
        return None
    try:
        old = read_config(run_dir)
    except RunRecordError:
        return None
    return summary if old is not None and not config_diff(old, cfg) else None


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


_CHECKED: set[str] = set()  # runs' check keys already checked in this process


def _check_key(cfg: DictConfig) -> str:
    """What decides the outcome of :func:`check_run` (not the seed, name or training length)."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "task", "data", "analysis", "paths")}
    parts["train"] = {
        k: OmegaConf.to_container(cfg.train, resolve=True)[k]
        for k in ("eval_splits", "final_splits", "monitor", "stop")
    }
    return json.dumps(parts, sort_keys=True, default=str)


def check_run(cfg: DictConfig, world: int = 1) -> None:
    """Everything a run needs, checked before its folder is written (one line each): the data
    and its splits, the model on a real batch, the monitored metrics, the analyses and what
    they need (weights, other runs). Runs alike in all that are checked once per process."""
    from hpclab.analysis import check_analyses
    from hpclab.data.loader import check_splits
    from hpclab.engine.preflight import preflight
    from hpclab.weights import use_cache

    check_splits(cfg, world)
    key = _check_key(cfg)
    if key in _CHECKED:
        return
    use_cache(cfg.paths.cache)
    check_analyses(cfg, preflight(cfg))
    _CHECKED.add(key)


def train_run(cfg: DictConfig, folder_ready: bool = False) -> dict[str, Any]:
    """Train and analyse one run; return its summary. Skips runs complete with this config
    unless ``force``.

    Rank 0 checks the run (:func:`check_run`) and owns its folder for the whole run
    (``run.lock``): a second process for the same run stops with a line naming the holder.
    ``folder_ready``: the caller (the parent of local data-parallel processes) has checked the
    run, holds the lock and has prepared the folder.
    """
    from hpclab.weights import use_cache

    run_dir = run_dir_of(cfg)
    rank = int(os.environ.get("RANK", "0"))
    use_threads(cfg.cluster.threads)  # the same count here, in each rank and in every SLURM task
    done = None if _starts_over(cfg) else completed_with(run_dir, cfg)
    if done is not None:
        return done if rank != 0 else _finish_analyses(cfg, run_dir, done)
    if rank == 0 and not folder_ready:
        check_run(cfg, int(os.environ.get("WORLD_SIZE", "1")))  # fail before anything is written
    use_cache(cfg.paths.cache)  # pretrained weights resolve from the staged cache, never the network
    if rank != 0 or folder_ready:
        return _train(cfg, run_dir, rank)
    with run_lock(run_dir):
        done = prepare_folder(cfg, run_dir)
        return done if done is not None else _train(cfg, run_dir, rank)


def missing_analyses(cfg: DictConfig, summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(name, kwargs)`` of the analyses ``cfg`` lists that a run's summary has no result of
    (added to the config after the run trained)."""
    from hpclab.analysis import analysis_items

    done = summary.get("analyses") or {}
    return [(name, kwargs) for name, kwargs in analysis_items(cfg.analysis) if name not in done]


def fully_done(run_dir: Path, cfg: DictConfig) -> bool:
    """Complete with ``cfg``'s config and every analysis it lists: nothing left to run."""
    summary = completed_with(run_dir, cfg)
    return summary is not None and not missing_analyses(cfg, summary)


def _finish_analyses(cfg: DictConfig, run_dir: Path, done: dict[str, Any]) -> dict[str, Any]:
    """A complete run whose config lists analyses its summary lacks: run those, with the
    config's arguments, instead of skipping the run; the training is not repeated. Analyses
    already in the summary are left as they are (``jobs/analyze.py`` reruns one with new
    arguments)."""
    from hpclab.analysis.rerun import analyze_run
    from hpclab.engine.signals import stop_at_once

    missing = missing_analyses(cfg, done)
    if not missing:
        log.info("run %s is complete; skipping (force=true re-runs it)", run_dir)
        return done
    names = ", ".join(name for name, _ in missing)
    log.info("run %s is complete but for analyses its config lists: running %s", run_dir, names)
    # Each finished analysis is in summary.json at once: a stop runs only those still missing again.
    with stop_at_once(f"during the analyses {names}: training is complete; run the same command to run those missing"):
        for name, kwargs in missing:
            log.info("analysis %s", name)
            analyze_run(run_dir, name, kwargs)
    return completed_summary(run_dir) or done


def prepare_folder(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Under the run's lock: the summary when the run is complete with this config (nothing to
    do, None otherwise), after readying the folder: another config's results are refused (or,
    when its start never reached a checkpoint, moved aside), force=true moves old results
    aside, stale temporary files go."""
    from hpclab.engine.checkpoints import clean_temporaries
    from hpclab.launch.sweep import config_diff

    old = read_config(run_dir)  # a damaged record: one line, never overwritten
    if old is not None and not _starts_over(cfg):
        changed = config_diff(old, cfg)
        if changed and has_progress(run_dir):
            raise RunConflict(
                f"{run_dir} holds a run with another config ({'; '.join(changed[:3])}); "
                f"choose another run_name=... or pass force=true to replace it"
            )
        if changed:
            log.info(
                "%s: its earlier start had another config (%s) and never reached a checkpoint; starting "
                "over with this one",
                run_dir,
                "; ".join(changed[:3]),
            )
            _clear_run(run_dir)
    done = None if _starts_over(cfg) else completed_with(run_dir, cfg)
    if done is not None:
        log.info("run %s is complete; skipping (force=true re-runs it)", run_dir)
        return done
    if _starts_over(cfg):
        _clear_run(run_dir)
    check_writable(run_dir)
    for tmp in clean_temporaries(run_dir):
        log.info("removed %s, left by a write that a kill cut short", tmp)
    return None


def _train(cfg: DictConfig, run_dir: Path, rank: int) -> dict[str, Any]:
    attempts = start_attempt(run_dir) if rank == 0 else []
    setup_logging(run_dir / RUN_LOG, rank)
    if rank == 0:
        save_yaml(cfg, run_dir / CONFIG)
        write_json(run_dir / ENVIRONMENT, environment_record())
        record_task(run_dir)
    log.info("run %s on %s", run_dir, socket.gethostname())
    trainer = _make_trainer(cfg, run_dir)
    try:
        try:
            result = trainer.fit()
            analyses = _analyse(trainer, cfg, run_dir) if trainer.parts.is_main else {}
        except (Preempted, SystemExit):  # a stop signal: each rank says where it stopped (they agree)
            log.warning(
                "rank %d of %d stopped at step %d",
                trainer.parts.accelerator.process_index,
                trainer.parts.world,
                trainer.state.step,
            )
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
            "parameters": {
                n: sum(p.numel() for p in trainer.parts.unwrap(n).parameters()) for n in trainer.parts.models
            },
            "wall_time_s": round(sum(a.get("wall_time_s") or 0 for a in attempts), 2),
            "attempts": len(attempts),
            "data": trainer.checkpoints.data_record(),
            **result,
            "analyses": analyses,
        }
        if trainer.parts.is_main:
            write_json(run_dir / SUMMARY, summary)
        return summary
    finally:
        trainer.close()
        setup_logging(None, rank)  # detach run.log: what follows belongs to the next run


def _make_trainer(cfg: DictConfig, run_dir: Path) -> Any:
    """The run's Trainer; data-parallel ranks that cannot reach each other at the start stop
    with RankLost's one line, as they do during training."""
    from hpclab.engine import Trainer
    from hpclab.engine.trainer import lost_peer

    try:
        return Trainer(cfg, run_dir)
    except RuntimeError as exc:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1 or not lost_peer(exc):
            raise
        raise RankLost(
            f"rank {os.environ.get('RANK', '0')} of {world} could not reach the other ranks at the start "
            f"({one_line(exc)[:200]}); resubmit the job"
        ) from None


def _analyse(trainer: Any, cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The run's analyses, after training (main process). A stop signal meanwhile ends the
    command with one line; the run stays unfinished and the same command runs them again."""
    from hpclab.analysis import ANALYSES, analysis_items
    from hpclab.engine.signals import stop_at_once

    analyses: dict[str, Any] = {}
    what = (
        f"during the analyses: training is complete (checkpointed at step {trainer.state.step}); run the same "
        f"command{' without force=true' if cfg.force else ''} to run the analyses again"
    )
    with stop_at_once(what):
        for name, kwargs in analysis_items(cfg.analysis):
            log.info("analysis %s", name)
            analyses[name] = ANALYSES[name](trainer.run, run_dir / FIGURES, **kwargs)
    return analyses


def start_attempt(run_dir: Path) -> list[dict[str, Any]]:
    """Record a new start in ``attempts.json``. An earlier start that never recorded its end
    (killed, preempted, requeued) is closed at the last write to its ``run.log``, so the run's
    wall time counts every attempt, not only the last."""
    attempts = read_attempts(run_dir)
    run_log = run_dir / RUN_LOG
    for entry in attempts:
        if entry.get("wall_time_s") is None and entry.get("start_ts") is not None:
            last = run_log.stat().st_mtime if run_log.is_file() else entry["start_ts"]
            entry.update(wall_time_s=round(max(last - entry["start_ts"], 0.0), 2), ended="killed")
    attempts.append(
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "start_ts": time.time(),
            "host": socket.gethostname(),
            "job": job_ref(),
        }
    )
    write_json(run_dir / ATTEMPTS, attempts)
    return attempts


def end_attempt(run_dir: Path, attempts: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    entry = attempts[-1]
    entry.update(
        wall_time_s=round(time.time() - entry["start_ts"], 2),
        reached_step=step,
        ended=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    write_json(run_dir / ATTEMPTS, attempts)
    return attempts


def _clear_run(run_dir: Path) -> None:
    """``force=true`` / ``train.resume=never``: move the old results aside (never delete them
    silently). The folder itself stays, with its lock, so the owner keeps it throughout."""
    entries = [p for p in run_dir.iterdir() if p.name != LOCK] if run_dir.is_dir() else []
    if not entries:
        return
    backup = moved_aside(run_dir)
    backup.mkdir()
    for entry in entries:
        entry.rename(backup / entry.name)
    log.info("moved previous results to %s", backup)


def _spawned(rank: int, cfg_yaml: str, world: int, port: int, token: str, parent: int) -> None:
    die_with_parent(parent)  # a killed launcher leaves no rank training on in its run folder
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        **{TOKEN_ENV: token},
    )
    train_run(OmegaConf.create(cfg_yaml), folder_ready=True)


def train_local_processes(cfg: DictConfig, processes: int) -> dict[str, Any]:
    """Data-parallel training in ``processes`` local processes (gloo on CPU, nccl on GPUs).
    This process checks the run, holds its lock for them (naming them as its writers) and
    prepares the folder first; they die with it."""
    import torch.multiprocessing as mp

    run_dir = run_dir_of(cfg)
    done = None if _starts_over(cfg) else completed_with(run_dir, cfg)
    if done is not None:
        return _finish_analyses(cfg, run_dir, done)
    check_run(cfg, processes)  # here, not in each spawned process
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with run_lock(run_dir) as me:
        done = prepare_folder(cfg, run_dir)
        if done is not None:
            return done
        context = mp.start_processes(
            _spawned,
            args=(OmegaConf.to_yaml(cfg), processes, port, me["token"], os.getpid()),
            nprocs=processes,
            start_method="spawn",
            join=False,
        )
        add_writers(run_dir, me, [p.pid for p in context.processes])
        while not context.join():
            pass
    summary = completed_summary(run_dir)
    if summary is None:
        raise RunRecordError(f"{run_dir / SUMMARY} is missing or damaged after training; run the same command again")
    return summary


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
        log.warning(
            "sweep summary not refreshed (%s: %s); run: python jobs/report.py %s", type(exc).__name__, exc, group
        )
