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
import sys
import time
from pathlib import Path
from typing import Any, Optional

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from hpclab.config import save_yaml
from hpclab.launch.slurm import export_rank_env, record_task, restart_count
from hpclab.utils import environment_record, read_json, write_json

log = logging.getLogger("hpclab")


class RunConflict(RuntimeError):
    """The run folder already holds results of a different config."""


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


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (notebooks and pytest replace it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(run_dir: Optional[Path] = None, rank: int = 0) -> None:
    """Plain line logs on stdout (SLURM captures them) and in ``run.log``."""
    logger = logging.getLogger("hpclab")
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s", "%H:%M:%S")
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(h)
        h.close()
    if run_dir is not None and rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "run.log")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    logger.propagate = False


def train_run(cfg: DictConfig) -> dict[str, Any]:
    """Train and analyse one run; return its summary. Skips finished runs unless ``force``."""
    from hpclab.analysis import ANALYSES
    from hpclab.data.prepare import require_prepared
    from hpclab.engine import Trainer
    from hpclab.weights import use_cache

    run_dir = run_dir_of(cfg)
    rank = int(os.environ.get("RANK", "0"))
    require_prepared(cfg)  # fail before anything is written
    use_cache(cfg.paths.cache)  # pretrained weights resolve from the staged cache, never the network
    if (run_dir / "config.yaml").is_file() and not cfg.force:
        from hpclab.launch.sweep import config_diff

        changed = config_diff(OmegaConf.load(run_dir / "config.yaml"), cfg)
        if changed:
            raise RunConflict(f"{run_dir} holds a run with another config ({'; '.join(changed[:3])}); "
                              f"choose another run_name=... or pass force=true to replace it")
    if is_complete(run_dir) and not cfg.force:
        log.info("run %s is complete; skipping (force=true re-runs it)", run_dir)
        return read_json(run_dir / "summary.json")
    if cfg.force and rank == 0:
        _clear_run(run_dir)
    setup_logging(run_dir, rank)
    if rank == 0:
        save_yaml(cfg, run_dir / "config.yaml")
        write_json(run_dir / "environment.json", environment_record())
        record_task(run_dir)
    log.info("run %s on %s", run_dir, socket.gethostname())
    started = time.time()
    trainer = Trainer(cfg, run_dir)
    try:
        result = trainer.fit()
        analyses: dict[str, Any] = {}
        if trainer.is_main:
            for item in cfg.analysis:  # "name" or {name: ..., **kwargs}
                kwargs = {"name": item} if isinstance(item, str) else OmegaConf.to_container(item, resolve=True)
                name = kwargs.pop("name")
                log.info("analysis %s", name)
                analyses[name] = ANALYSES[name](trainer, run_dir / "figures", **kwargs)
        summary = {
            "status": "completed",
            "run": cfg.run_name,
            "group": cfg.run_group,
            "experiment": cfg.experiment,
            "parameters": {n: sum(p.numel() for p in trainer.unwrap(n).parameters()) for n in trainer.models},
            "wall_time_s": round(time.time() - started, 2),
            **result,
            "analyses": analyses,
        }
        if trainer.is_main:
            write_json(run_dir / "summary.json", summary)
        return summary
    finally:
        trainer.close()
        setup_logging(None, rank)  # detach run.log: what follows belongs to the next run


def _clear_run(run_dir: Path) -> None:
    """``force=true``: move the old results aside (never delete them silently)."""
    if run_dir.exists():
        backup = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(backup)
        log.info("moved previous results to %s", backup)


def _spawned(rank: int, cfg_yaml: str, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    train_run(OmegaConf.create(cfg_yaml))  # force was applied (old run moved aside) before spawning


def train_local_processes(cfg: DictConfig, processes: int) -> dict[str, Any]:
    """Data-parallel training in ``processes`` local processes (gloo on CPU, nccl on GPUs)."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if cfg.force:
        _clear_run(run_dir_of(cfg))
        cfg = cfg.copy()
        cfg.force = False
    mp.start_processes(_spawned, args=(OmegaConf.to_yaml(cfg), processes, port), nprocs=processes,
                       start_method="spawn", join=True)
    return read_json(run_dir_of(cfg) / "summary.json")


class TrainJob:
    """A picklable, requeue-safe job for one run (submitit's checkpoint protocol)."""

    def __init__(self, cfg_yaml: str) -> None:
        self.cfg_yaml = cfg_yaml  # plain text: no objects cross the pickle

    @property
    def cfg(self) -> DictConfig:
        return OmegaConf.create(self.cfg_yaml)

    def __call__(self) -> dict[str, Any]:
        if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        summary = train_run(resumable(self.cfg))
        refresh_sweep_report(self.cfg)
        return summary

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on the pre-timeout signal: the engine has already written its
        checkpoint at the step boundary, so requeue the same job, which resumes from it."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)  # the restart resumes: see resumable()


def resumable(cfg: DictConfig) -> DictConfig:
    """A requeued SLURM task resumes: ``force=true`` applies to the first start only."""
    if restart_count() > 0 and cfg.force:
        cfg = cfg.copy()
        cfg.force = False
    return cfg


def run_in_slurm_task(cfg: DictConfig) -> dict[str, Any]:
    """One run in this SLURM task (the sbatch scripts' ``jobs/run.py``): ranks from SLURM's
    variables, job-level signal handlers (requeue on USR2), resume after a requeue, and the
    sweep summary refreshed when the run is done."""
    from hpclab.launch.slurm import JobSignals, under_slurm

    export_rank_env()
    if under_slurm():
        JobSignals().install()
    summary = train_run(resumable(cfg))
    refresh_sweep_report(cfg)
    return summary


def refresh_sweep_report(cfg: DictConfig) -> None:
    """Rebuild ``results/<sweep>/summary.*`` after an array task finished (rank 0).

    Each task writes its own summary.json before taking the lock, and the report is read under
    the lock, so the last task to finish writes a summary that lists every finished run.
    Failures only warn: ``python jobs/report.py results/<sweep>`` rebuilds it at any time.
    """
    if not cfg.sweep.name or int(os.environ.get("RANK", "0")) != 0:
        return
    from hpclab.analysis.report import write_report

    group = Path(cfg.paths.results) / cfg.run_group
    try:
        with FileLock(str(group / ".report.lock")):
            write_report(group, cfg.sweep.report)
    except Exception as exc:  # the run itself succeeded; the summary can be rebuilt later
        log.warning("sweep summary not refreshed (%s: %s); run: python jobs/report.py %s",
                    type(exc).__name__, exc, group)
