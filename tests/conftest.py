"""Shared fixtures: an isolated working directory and small datasets in real file formats."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# Tiny test models run fastest on one thread, and OpenMP threads that spin-wait against the
# test's own subprocesses on a 2-core machine slow each step ~100x (measured). Before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests choose their own folders and images: the caller's (or the hpclab image's own ENV, when the
# suite runs inside it: HPCLAB_CACHE=/shared/cache) must not redirect them.
for _name in ("HPCLAB_DATA", "HPCLAB_RESULTS", "HPCLAB_CACHE", "HPCLAB_IMAGE", "HPCLAB_CONTAINER"):
    os.environ.pop(_name, None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from formats.flowers102 import write_flowers102  # noqa: E402
from formats.idx import write_idx_dataset  # noqa: E402


def run_cli(
    script: str, *args: str, cwd: Path, timeout: float = 600, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``jobs/<script>`` like a user would; on unexpected failure show its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def path_without(tmp_path: Path, *names: str) -> str:
    """A PATH with every command of this machine except ``names``."""
    bin_dir = tmp_path / "bin-without"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not Path(directory).is_dir():
            continue
        for tool in Path(directory).iterdir():
            target = bin_dir / tool.name
            if tool.name not in names and not target.exists() and os.access(tool, os.X_OK):
                target.symlink_to(tool)
    return str(bin_dir)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh directory with data/ and results/ that the CLI and the API both use."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPCLAB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HPCLAB_RESULTS", str(tmp_path / "results"))
    return tmp_path


@pytest.fixture(scope="session")
def fmnist_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of small gzipped IDX files in Fashion-MNIST's real layout."""
    directory = tmp_path_factory.mktemp("fmnist_mirror")
    write_idx_dataset(directory, n_train=600, n_test=200)
    return directory


@pytest.fixture
def fmnist_data(workdir: Path, fmnist_mirror: Path) -> Path:
    """``workdir`` with fashion_mnist staged from the small mirror through prepare_data."""
    run_cli(
        "prepare_data.py", "data=fashion_mnist", f"data.mirrors=[{fmnist_mirror}]", "data.download=false", cwd=workdir
    )
    return workdir


# A small real run: the ae_latent conv AE on scikit-learn's 8x8 digits (real data, ships offline).
DIGITS_RUN = [
    "experiment=ae_latent",
    "data=digits",
    "model.latent_dim=8",
    "model.channels=[8,16]",
    "train.epochs=null",
    "train.batch_size=64",
    "train.log_every=10",
    "train.progress=log",
]


@pytest.fixture
def digits(workdir: Path) -> Path:
    """``workdir`` with scikit-learn's digits staged through prepare_data."""
    run_cli("prepare_data.py", "data=digits", cwd=workdir)
    return workdir


def requires(*checks: Callable[[], str | None]) -> None:
    """Skip the calling test (or fixture) unless everything it needs is here. Each check says
    why one thing is missing (the reason, with the command that fixes it) or returns None when
    it is there; they run in order and a later one only when the earlier ones pass, so a slow
    probe (a container start) is not made when a fast one already failed."""
    __tracebackhide__ = True  # pytest reports the skip at the caller's line
    for check in checks:
        problem = check()
        if problem:
            pytest.skip(problem)


def cuda_problem() -> str | None:
    """Why no CUDA device can be used here (None when one can)."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device here (torch.cuda.is_available() is False): the gpu tests need one"
    return None


def controller_problem() -> str | None:
    """Why no job could run here (None when a controller answers and a node is usable)."""
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"no SLURM client ({exc}); install slurm-client and run scripts/local_slurm.sh start"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return "no SLURM controller answers (scontrol ping); start one: scripts/local_slurm.sh start"
    if not any(s.strip(" *~#") in ("idle", "mixed", "allocated", "completing") for s in nodes.stdout.split()):
        return f"no usable SLURM node (sinfo: {nodes.stdout.split()}); see scripts/local_slurm.sh status"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Skip unless a SLURM controller answers with a usable node (scripts/local_slurm.sh start)."""
    requires(controller_problem)


# A small Flowers-102 (the GAN brief's data): these categories, this many images each.
LABELS1 = [1, 2, 51, 77, 102]  # 1-based, as in imagelabels.mat: pink primrose ... blackberry lily
PER_CLASS = 20


@pytest.fixture(scope="session")
def flowers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small Flowers-102 in torchvision's layout (non-square jpgs, shuffled 1-based labels)."""
    root = tmp_path_factory.mktemp("flowers_mirror")
    labels = np.repeat(LABELS1, PER_CLASS)
    np.random.default_rng(1).shuffle(labels)
    return {"root": root, **write_flowers102(root, labels)}


def run_main(script: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``jobs/<script>`` in this process, as its ``__main__`` would (its main_guard: one
    line and an exit code for expected failures), returning its exit code and output like
    :func:`run_cli`. Seconds faster than a subprocess (no fresh torch import), for fault cases
    run many times. An unexpected exception propagates, so a traceback fails the test. The
    working directory, environment, signal handlers and hpclab's logging handlers are restored."""
    import contextlib
    import io
    import logging
    import runpy
    import signal

    saved_env, saved_argv, saved_cwd = dict(os.environ), list(sys.argv), os.getcwd()
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    loggers = [logging.getLogger("hpclab"), logging.getLogger()]
    saved_handlers = {lg.name: list(lg.handlers) for lg in loggers}
    saved_propagate = loggers[0].propagate
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.environ.update(env or {})
        os.chdir(cwd)
        sys.argv = [str(REPO / "jobs" / script), *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(sys.argv[0], run_name="__main__")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        for lg in loggers:
            for handler in [h for h in lg.handlers if h not in saved_handlers[lg.name]]:
                lg.removeHandler(handler)
                handler.close()
        loggers[0].propagate = saved_propagate
    return subprocess.CompletedProcess(sys.argv, code, out.getvalue(), err.getvalue())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Spread the suite over pytest-xdist's workers (``-n 2 --dist loadgroup`` in pyproject.toml:
    most tests use one core) without sharing what must not be shared: the tests that submit to the
    local SLURM cluster run one after another on one worker, as before (they read its queue), the
    2-node cluster's file likewise on one, and the tests that share a fixture built once per file
    (a trained run, a staged dataset) stay on one worker so it is still built once. Every other
    test goes to whichever worker is free. The two cluster groups, the longest, come first: a
    worker that started them last would run them alone while the other one idles."""
    for item in items:
        if item.get_closest_marker("multinode"):
            group = "multinode-cluster"
        elif item.get_closest_marker("slurm"):
            group = "slurm-cluster"
        elif uses_a_fixture_of_its_file(item):
            group = item.path.name
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))
    first = ("slurm-cluster", "multinode-cluster")
    items.sort(key=lambda item: first.index(g) if (g := xdist_group_of(item)) in first else len(first))


def xdist_group_of(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("xdist_group")
    return marker.args[0] if marker else None


def uses_a_fixture_of_its_file(item: pytest.Item) -> bool:
    """Whether the test requests a module- or session-scoped fixture defined in its own file."""
    info = getattr(item, "_fixtureinfo", None)
    module = item.nodeid.split("::")[0]
    return bool(info) and any(
        d.scope in ("module", "session") and d.baseid == module for defs in info.name2fixturedefs.values() for d in defs
    )
