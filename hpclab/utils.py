"""Small shared helpers: atomic file writes, environment records, seeding."""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only on success.

    A kill at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600, and some writers (safetensors) replace the file with another
        # 0600 one: give what was written the permissions the umask asks for
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


def git_commit() -> str | None:
    """The checkout's commit; inside the Apptainer image (no .git, no git) the one it was built from."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("HPCLAB_GIT_COMMIT")
    return out.stdout.strip() or os.environ.get("HPCLAB_GIT_COMMIT")


TRACKED_PACKAGES = (
    "torch",
    "torchvision",
    "accelerate",
    "submitit",
    "timm",
    "tensorboard",
    "pytorch-fid",
    "h5py",
    "hydra-core",
    "omegaconf",
    "numpy",
    "scikit-learn",
)


def environment_record() -> dict[str, Any]:
    """What produced a result: commit, host, package versions, SLURM ids, devices."""
    import torch

    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "git_commit": git_commit(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": {
            "model": cpu_model(),
            "count": os.cpu_count(),
            "usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        },
        "packages": versions,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "threads": thread_counts(),
        "slurm": {k: v for k, v in os.environ.items() if k.startswith("SLURM_") and k in SLURM_KEYS},
        "apptainer_image": os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"),
        # set by the launcher and slurm/common.sh for tasks in the image (hpclab/launch/container.py)
        "container": {
            "engine": os.environ["HPCLAB_CONTAINER_ENGINE"],
            "image": os.environ.get("HPCLAB_CONTAINER_IMAGE"),
        }
        if os.environ.get("HPCLAB_CONTAINER_ENGINE")
        else None,
    }


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def use_threads(threads: int) -> None:
    """Run torch, OpenMP and the BLAS libraries on ``threads`` threads in this process, and pass
    the count on to the processes it starts (local data-parallel ranks, DataLoader workers).

    Results are bit-identical between two machines only at equal thread counts (reductions are
    split differently), so every path of a run (here, each rank, a SLURM task) calls this with
    ``cluster.threads`` instead of following the machine's cores or SLURM's cpus-per-task."""
    import torch

    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    torch.set_num_threads(threads)
    try:  # BLAS already loaded (numpy's OpenBLAS, MKL): they read the variables only when loaded
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn's dependency; without it BLAS keeps its own count
        return
    threadpool_limits(threads)


def thread_counts() -> dict[str, Any]:
    """The thread counts this process computes with (environment.json): torch's intra- and
    inter-op threads, each loaded OpenMP/BLAS library's, and the variables that set them."""
    import torch

    counts: dict[str, Any] = {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads()}
    try:
        from threadpoolctl import threadpool_info

        counts["libraries"] = {f"{i['user_api']}:{i['internal_api']}": i["num_threads"] for i in threadpool_info()}
    except ImportError:
        pass
    counts["env"] = {name: os.environ.get(name) for name in (*THREAD_VARIABLES, "SLURM_CPUS_PER_TASK")}
    return counts


def cpu_model() -> str | None:
    """The processor's name (Linux: /proc/cpuinfo), for the machine line of a result."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


SLURM_KEYS = {
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_PARTITION",
    "SLURM_JOB_NODELIST",
    "SLURM_NTASKS",
    "SLURM_RESTART_COUNT",
    "SLURM_CLUSTER_NAME",
}


def sha256_of(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (staged inputs and weight files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: dotted keys of a nested dict's leaves."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def one_line(exc: BaseException, named: bool = True) -> str:
    """The first line of an exception's message (``Type: message`` when ``named``): errors the
    suite reports in one line."""
    text = str(exc).strip().splitlines()
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text[0]}" if named else text[0]


def did_you_mean(key: str, candidates: Iterable[str], n: int = 3) -> str:
    """``; did you mean a, b or c?`` for an unknown dotted ``key``: keys with the same last part
    first (``train.lr`` -> ``train.optimizer.lr``), then the closest spellings (difflib) of the
    last part beside it (``train.epoch`` -> ``train.epochs``) and of the whole key at its depth
    (``trian`` -> ``train``); "" when nothing is near."""
    candidates = [c for c in dict.fromkeys(candidates) if c != key]
    parent, _, leaf = key.rpartition(".")
    same_leaf = [c for c in candidates if c.rpartition(".")[2] == leaf]
    siblings = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == parent}
    others = [c for c in candidates if c.count(".") == key.count(".") and c.rpartition(".")[0] != parent]
    near = list(
        dict.fromkeys(
            same_leaf
            + [siblings[k] for k in difflib.get_close_matches(leaf, siblings, n, 0.7)]
            + difflib.get_close_matches(key, others, n, 0.8)
        )
    )[:n]
    if not near:
        return ""
    return f"; did you mean {near[0] if len(near) == 1 else ', '.join(near[:-1]) + ' or ' + near[-1]}?"


def can_set_signal_handlers() -> bool:
    """Python sets signal handlers only from the main thread (a training run started from a
    worker thread, e.g. by a notebook tool, keeps the handlers it has)."""
    import threading

    return threading.current_thread() is threading.main_thread()


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent exits (Linux ``PR_SET_PDEATHSIG``), so
    worker processes never outlive a launcher killed with ``kill -9``; where that cannot be
    asked, or the parent is already gone, exit now."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent check below still catches a parent that died before us
    if os.getppid() != parent:
        os._exit(1)


def job_ref() -> str | None:
    """The SLURM job this process runs in, as SLURM names it: ``<array job>_<task>`` in an
    array, else the job id; None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def under_slurm() -> bool:
    return "SLURM_JOB_ID" in os.environ


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (notebooks and pytest replace it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(log_file: Path | None = None, rank: int = 0) -> None:
    """Plain line logs on stdout (SLURM captures them) and, on rank 0, in ``log_file`` (a run's
    ``run.log``; None: stdout only)."""
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
    if log_file is not None and rank == 0:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    logger.propagate = False
