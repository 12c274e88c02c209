"""One process at a time per run folder: ``<run>/run.lock``.

The lock is a file created with ``O_CREAT | O_EXCL``, which is atomic on local disks and on
the shared file systems of clusters (NFSv3+, Lustre, GPFS), unlike ``flock``, which Lustre
mounts without ``-o flock`` refuse and ``localflock`` makes node-local. It records who holds it
(host, pid, the process's start time, SLURM job), so a lock whose holder is gone is recognised
and taken over: on the same host, a pid that no longer runs (or now runs another process);
from another host, the holder's SLURM job when this process is that job again (a requeue keeps
the job id and may land on another node) or when the controller no longer runs it. A lock whose
holder cannot be checked (another host, no SLURM) is never broken silently: the error names the
holder and the file to remove.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hpclab.errors import RunFolderError, RunLocked
from hpclab.rundir import LOCK as LOCK_NAME
from hpclab.utils import job_ref

TOKEN_ENV = "HPCLAB_RUN_LOCK"  # set for child processes that work under their parent's lock


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_record() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": _start_time(os.getpid()),
        "job": job_ref(),
        "token": uuid.uuid4().hex,
    }


def describe(holder: dict[str, Any]) -> str:
    job = f", SLURM job {holder['job']}" if holder.get("job") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}"


def _slurm_job_running(job: str) -> bool | None:
    """Whether SLURM still runs ``job``; None when the controller cannot be asked."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return False if "Invalid job id" in out.stderr else None
    return any(state in ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED") for state in out.stdout.split())


def _gone(pid: Any, start: Any) -> bool:
    """Whether process ``pid`` (started at ``start``, clock ticks since boot) no longer runs here."""
    if not isinstance(pid, int):
        return True
    started = _start_time(pid)
    return started is None or (start is not None and started != start)


def is_stale(holder: dict[str, Any]) -> bool:
    """Whether the processes that hold ``holder`` are certainly gone (see the module doc): the
    holder and every writer it named (local data-parallel ranks)."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        writers = holder.get("writers") if isinstance(holder.get("writers"), list) else []
        if any(
            isinstance(w, dict) and w.get("pid") != os.getpid() and not _gone(w.get("pid"), w.get("start"))
            for w in writers
        ):
            return False  # a rank of a killed launcher still writes
        if holder["pid"] == os.getpid():
            return True  # our own leftover
        return _gone(holder["pid"], holder.get("start"))
    if holder.get("job") and holder["job"] == job_ref():
        return True  # this job again on another node, after a requeue: its earlier start is gone
    if holder.get("job"):
        return _slurm_job_running(holder["job"]) is False
    return False


def live_holder(run_dir: Path) -> dict[str, Any] | None:
    """The record of the live process that holds ``run_dir``'s lock; None when none does."""
    holder, _ = _read(run_dir / LOCK_NAME)
    return holder if holder and not is_stale(holder) else None


WRITE_GRACE_S = 10.0  # a lock file younger than this with no record yet is being written


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return WRITE_GRACE_S


def _read(path: Path) -> tuple[dict[str, Any] | None, str]:
    try:
        text = path.read_text(errors="replace")  # damaged bytes read as damaged, not as a crash
    except FileNotFoundError:
        return None, ""
    try:
        holder = json.loads(text)
        return (holder if isinstance(holder, dict) else {}), text
    except ValueError:
        return {}, text  # written by a holder killed mid-write (empty or cut short)


def acquire(run_dir: Path) -> dict[str, Any]:
    """Take the run folder's lock, or raise :class:`RunLocked` naming its live holder
    (:class:`RunFolderError` when the folder cannot be written)."""
    path = run_dir / LOCK_NAME
    me = holder_record()
    for _ in range(5):
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder, text = _read(path)
            if holder is None:
                continue  # released meanwhile
            if not holder and _age(path) < WRITE_GRACE_S:
                raise RunLocked(
                    f"{run_dir} is being taken by another process right now ({path}); try again in a moment"
                ) from None
            if holder and not is_stale(holder):
                raise RunLocked(
                    f"{run_dir} is in use by {describe(holder)}; wait until it ends "
                    f"(or, if that process is gone, remove {path})"
                ) from None
            _break(path, text)
            continue
        except OSError as exc:
            raise RunFolderError(exc.errno, unwritable(run_dir, exc)) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me))
            fh.flush()
            os.fsync(fh.fileno())
        return me
    raise RunLocked(f"could not take the lock {path} (others keep taking it); try again")


def _break(path: Path, judged: str) -> None:
    """Remove a stale lock. Renaming it first makes the removal atomic; should a live holder
    have replaced it meanwhile (its content differs from what was judged stale), it is put back."""
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        if aside.read_text(errors="replace") != judged:
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
    finally:
        aside.unlink(missing_ok=True)


def unwritable(directory: Path, exc: OSError) -> str:
    """The one-line message for a run folder that cannot be written."""
    return (
        f"cannot write to {directory} ({exc.strerror or type(exc).__name__}); fix its permissions or free "
        f"space, or choose another paths.results=..."
    )


def add_writers(run_dir: Path, me: dict[str, Any], pids: list[int]) -> None:
    """Name the processes that write the run under our lock (local data-parallel ranks), so the
    lock counts as held while any of them lives, even when we are gone."""
    from hpclab.utils import atomic_write_text

    me["writers"] = [{"pid": pid, "start": _start_time(pid)} for pid in pids]
    holder, _ = _read(run_dir / LOCK_NAME)
    if holder and holder.get("token") == me["token"]:
        atomic_write_text(run_dir / LOCK_NAME, json.dumps(me))


def release(run_dir: Path, me: dict[str, Any]) -> None:
    """Remove the lock if it is still ours (never someone else's)."""
    path = run_dir / LOCK_NAME
    holder, _ = _read(path)
    if holder and holder.get("token") == me["token"]:
        path.unlink(missing_ok=True)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[dict[str, Any]]:
    """Hold ``run_dir``'s lock for the block. A child started under its parent's lock (local
    data parallelism) finds the parent's token in $HPCLAB_RUN_LOCK and takes no lock of its own."""
    holder, _ = _read(run_dir / LOCK_NAME)
    if holder and os.environ.get(TOKEN_ENV) and holder.get("token") == os.environ[TOKEN_ENV]:
        yield holder
        return
    me = acquire(run_dir)
    try:
        yield me
    finally:
        release(run_dir, me)
