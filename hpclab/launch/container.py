"""Running SLURM tasks inside the project's image: Apptainer (a SIF file) or podman (an OCI image).

One place renders how a task enters the image, for the submitit launcher and the sbatch scripts
(``slurm/common.sh`` evaluates what :mod:`hpclab.launch.batch` renders from here):

    apptainer exec [--nv] --bind DATA --bind RESULTS [--bind CACHE] [--bind FOLDER] [binds...]
        --env HPCLAB_DATA=... (and the other variables of container_env) IMAGE python
    sh -c 'export HPCLAB_PARENT_PID=$$; exec "$@"' hpclab-task podman run --rm --network=host
        --ipc=host --pid=host [--device nvidia.com/gpu=all] --volume DATA:DATA ...
        --env HPCLAB_DATA=... --env SLURM_* ... --label hpclab.slurm_job=$SLURM_JOB_ID IMAGE python

Both give the task the same view: data, results, cache and submitit's folder bound at the same
absolute path they have on the host (the run configs the tasks unpickle carry host paths;
``config.validate`` makes them absolute without resolving symlinks, so neither do we), the
same variables, the host's network, IPC (NCCL, DataLoader shared memory) and process space, as
Apptainer has by default, and the GPUs when some are allocated.

The rules both engines share:

- The image's own environment is fixed (Apptainer sources %environment with the host's
  variables cleared; OCI ENV is not overridden by host values either), so the paths are passed
  explicitly (``--env``), TORCH_HOME and HF_HOME included.
- No Python of the host reaches the image's: Apptainer passes the whole host environment
  (SLURM's variables need it), so PYTHONPATH and PYTHONHOME are emptied (``--env X=``);
  podman passes nothing but the names in :data:`PODMAN_PASS`.
- A task that SLURM stops (requeue, preemption, time limit, scancel) stops the run inside:
  Apptainer's processes are the task's own; podman's are children of conmon, so its task
  passes its pid and the image's entry point stops the run when the task is gone, and the
  batch script removes a container of an earlier start of the same job (:func:`slurm_setup`).
- The image has no SLURM client (it would have to match the cluster's version), so the
  ``scontrol requeue`` that submitit calls after checkpointing on USR2 is relayed: the image's
  ``scontrol`` (containers/scontrol-relay) writes the request to ``$HPCLAB_REQUEUE_FILE`` and
  the batch script, outside the container, runs the real ``scontrol requeue`` when the step
  ends (:func:`slurm_setup`).

Site settings of podman (cgroup manager, OCI runtime, ulimits, SELinux labels, user namespaces)
are not rendered here: they belong in the site's containers.conf (on the hpclab machines
``CONTAINERS_CONF=containers/podman-local.conf``), which podman reads in every task.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpclab.errors import ConfigError

IMAGE_ENV = "HPCLAB_IMAGE"
ENGINE_ENV = "HPCLAB_CONTAINER"
REQUEUE_ENV = "HPCLAB_REQUEUE_FILE"
ENGINES = ("apptainer", "singularity", "podman")
APPTAINER_FAMILY = ("apptainer", "singularity")
# Host variables a podman task needs (a trailing * passes every variable with that prefix;
# a name that is not set on the host is left out): SLURM's and submitit's job description,
# the ranks and rendezvous of slurm/common.sh, threads, NCCL settings, the GPUs SLURM
# allocated, and the batch script's requeue relay and log path.
PODMAN_PASS = (
    "SLURM_*",
    "SUBMITIT_*",
    "NCCL_*",
    "ACCELERATE_*",
    "CUDA_VISIBLE_DEVICES",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "OMP_NUM_THREADS",
    "HDF5_USE_FILE_LOCKING",
    REQUEUE_ENV,
    "HPCLAB_SLURM_LOG",
    "HPCLAB_PARENT_PID",
)
# The label that marks a task's podman container with its SLURM job (see slurm_setup).
PODMAN_JOB_LABEL = "hpclab.slurm_job"
# podman runs as the task's own process with its pid in HPCLAB_PARENT_PID: the image's entry
# point (containers/entrypoint.sh) stops the run when that process is gone (see there).
PODMAN_WRAPPER = ["sh", "-c", 'export HPCLAB_PARENT_PID=$$; exec "$@"', "hpclab-task"]


@dataclass(frozen=True)
class Settings:
    """What the user set the image, the engine and extra binds with, for the one-line errors:
    config keys (the launcher) or variables (the sbatch scripts)."""

    image: str
    container: str
    binds: str

    @staticmethod
    def named(key: str) -> str:
        return f"config key '{key}'" if "." in key else key


LAUNCHER_SETTINGS = Settings("cluster.image", "cluster.container", "cluster.binds")
SCRIPT_SETTINGS = Settings(IMAGE_ENV, ENGINE_ENV, "HPCLAB_BINDS")


def engine_of(cluster: Mapping[str, Any], settings: Settings = LAUNCHER_SETTINGS) -> str:
    """``cluster.container``, else $HPCLAB_CONTAINER, else apptainer (singularity where it is the
    only one of the two on PATH: SingularityCE >= 4 runs the same images and options)."""
    engine = cluster.get("container") or os.environ.get(ENGINE_ENV) or "apptainer"
    if engine not in ENGINES:
        raise ConfigError(f"{settings.named(settings.container)}: {engine!r} is not one of {', '.join(ENGINES)}")
    if engine == "apptainer" and not shutil.which("apptainer") and shutil.which("singularity"):
        return "singularity"
    return engine


def image_of(cluster: Mapping[str, Any]) -> str | None:
    """The configured image (``cluster.image``, else $HPCLAB_IMAGE), or None: for Apptainer an
    absolute path to the SIF file, for podman the image reference as given."""
    image = cluster.get("image") or os.environ.get(IMAGE_ENV) or None
    if not image:
        return None
    if engine_of(cluster) == "podman":
        return str(image)
    return str(Path(image).expanduser().absolute())


def check_image(cluster: Mapping[str, Any], settings: Settings = LAUNCHER_SETTINGS, engine_here: bool = True) -> None:
    """Before any task starts (every task would die otherwise): a valid engine, the image, every
    extra bind source; with ``engine_here`` also the engine on PATH and, for podman, the image
    in its store. One line with the fix, as ConfigError."""
    if not (cluster.get("image") or os.environ.get(IMAGE_ENV)):
        return
    engine, image = engine_of(cluster, settings), str(image_of(cluster))
    named, host = settings.named, socket.gethostname()
    if engine != "podman" and not Path(image).is_file():
        hint = f" (an OCI image? set {settings.container}=podman)" if ":" in str(cluster.get("image") or "") else ""
        raise ConfigError(
            f"{named(settings.image)}: {engine} image {image} not found{hint} "
            f"(build it on a login node: containers/build.sh {image})"
        )
    for bind in cluster.get("binds") or []:
        source = str(bind).split(":", 1)[0]
        if not Path(source).exists():
            raise ConfigError(
                f"{named(settings.binds)}: bind source {source} does not exist on {host} "
                f"(create it, or remove '{bind}' from {settings.binds})"
            )
    if not engine_here:
        return
    if not shutil.which(engine):
        fix = (
            f"install it (Debian/Ubuntu: apt-get install podman runc) or use Apptainer: {settings.container}=apptainer"
            if engine == "podman"
            else f"load it (e.g. module load apptainer; cluster.setup=['module load apptainer'] for the launcher's "
            f"tasks) or run an OCI image with podman: {settings.container}=podman"
        )
        raise ConfigError(f"{named(settings.container)}: {engine} not found on PATH on {host}: {fix}")
    if engine == "podman":
        found = subprocess.run(["podman", "image", "exists", image], capture_output=True, text=True, timeout=120)
        if found.returncode == 1:
            raise ConfigError(
                f"{named(settings.image)}: podman on {host} has no image {image!r} (build it: "
                f"containers/build.sh --engine podman; list the images: podman images)"
            )
        if found.returncode != 0:
            last = (found.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(
                f"{named(settings.container)}: podman does not work on {host} ({last}); "
                f"check its setup with: podman info"
            )


def _plain_path(key: str, value: str | Path) -> str:
    path = str(Path(value).expanduser().absolute())
    if "," in path or ":" in path:  # the separators of --bind/--volume and --env lists
        raise ConfigError(f"config key '{key}': {path!r} contains ',' or ':', which a container bind cannot hold")
    return path


def task_dirs(paths: Mapping[str, Any], folder: str | Path | None = None) -> list[str]:
    """The directories a task reads and writes: data, results, cache and submitit's folder."""
    named = [(f"paths.{key}", paths[key]) for key in ("data", "results", "cache")]
    if folder is not None:
        named.append(("cluster.folder", folder))
    return list(dict.fromkeys(_plain_path(key, value) for key, value in named))


def project_dirs(paths: Mapping[str, Any], folder: str | Path | None = None) -> list[str]:
    """:func:`task_dirs` less those inside another one (the parent's bind covers them)."""
    dirs = task_dirs(paths, folder)
    return [d for d in dirs if not any(d != other and Path(d).is_relative_to(other) for other in dirs)]


def bind_args(cluster: Mapping[str, Any], paths: Mapping[str, Any], folder: str | Path | None = None) -> list[str]:
    """Bind arguments: the project directories at their own paths, then ``cluster.binds``
    (``src[:dst[:opts]]``, the same syntax for both engines; podman needs a destination, so a
    bare ``src`` becomes ``src:src``)."""
    binds = project_dirs(paths, folder) + [str(b) for b in cluster.get("binds") or []]
    if engine_of(cluster) == "podman":
        return [arg for bind in dict.fromkeys(binds) for arg in ("--volume", bind if ":" in bind else f"{bind}:{bind}")]
    return [arg for bind in dict.fromkeys(binds) for arg in ("--bind", bind)]


def container_env(paths: Mapping[str, Any]) -> dict[str, str]:
    """Variables set inside the image so that configs and caches resolve to the bound paths."""
    cache = _plain_path("paths.cache", paths["cache"])
    return {
        "HPCLAB_DATA": _plain_path("paths.data", paths["data"]),
        "HPCLAB_RESULTS": _plain_path("paths.results", paths["results"]),
        "HPCLAB_CACHE": cache,
        "TORCH_HOME": cache,
        "HF_HOME": str(Path(cache) / "huggingface"),
    }


def env_args(cluster: Mapping[str, Any], paths: Mapping[str, Any]) -> list[str]:
    """``--env`` arguments: the paths, which image ran the task (environment.json records it),
    and, per engine, what keeps the host's Python out or lets SLURM's variables in."""
    engine, image = engine_of(cluster), image_of(cluster)
    env = {**container_env(paths), "HPCLAB_CONTAINER_ENGINE": engine, "HPCLAB_CONTAINER_IMAGE": str(image)}
    args = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
    if engine == "podman":
        return args + [arg for name in PODMAN_PASS for arg in ("--env", name)]
    return args + ["--env", "PYTHONPATH=", "--env", "PYTHONHOME="]


def exec_prefix(cluster: Mapping[str, Any], paths: Mapping[str, Any], folder: str | Path | None = None) -> list[str]:
    """The command that runs a program inside the image, up to and including the image, as an
    argument list; empty when no image is configured. A podman prefix ends with a label naming
    the SLURM job as ``$SLURM_JOB_ID``, expanded by the batch shell (see :func:`shell_prefix`)."""
    image = image_of(cluster)
    if not image:
        return []
    engine = engine_of(cluster)
    gpus = (cluster.get("gpus_per_node") or 0) > 0
    if engine == "podman":
        args = [*PODMAN_WRAPPER, "podman", "run", "--rm", "--network=host", "--ipc=host", "--pid=host"]
        if gpus:
            args += ["--device", "nvidia.com/gpu=all"]  # CDI (nvidia-ctk cdi generate); untested here
        args += bind_args(cluster, paths, folder) + env_args(cluster, paths)
        return args + ["--label", f"{PODMAN_JOB_LABEL}=$SLURM_JOB_ID", image]
    args = [engine, "exec"]
    if gpus:
        args.append("--nv")
    return args + bind_args(cluster, paths, folder) + env_args(cluster, paths) + [image]


def shell_prefix(prefix: list[str]) -> str:
    """:func:`exec_prefix` as shell words: quoted, but ``$SLURM_JOB_ID`` left to the shell."""
    return " ".join(f'"{arg}"' if arg == f"{PODMAN_JOB_LABEL}=$SLURM_JOB_ID" else shlex.quote(arg) for arg in prefix)


def container_python(cluster: Mapping[str, Any], paths: Mapping[str, Any], folder: str | Path | None = None) -> str:
    """The python command of array tasks (submitit's ``slurm_python``, a shell command): inside
    the image, or the interpreter that submits (its virtual environment), as submitit defaults to."""
    prefix = exec_prefix(cluster, paths, folder)
    return shell_prefix([*prefix, "python"]) if prefix else shlex.quote(sys.executable)


def slurm_setup(
    cluster: Mapping[str, Any],
    paths: Mapping[str, Any],
    folder: str | Path,
    command: str | None = None,
    remove_leftovers: bool = True,
) -> list[str]:
    """Batch-script lines (outside the container) for tasks that run in the image; none without one.

    They create the bound directories (a missing bind source stops either engine), print the
    task's container ``command`` (default: submitit's) into the job's log, and relay requeue requests from inside the
    image to the real ``scontrol`` when the step has ended. The request file (in ``folder``) is
    removed before the requeue, and at start, because a requeued job keeps its SLURM_JOB_ID.
    With podman (and ``remove_leftovers``) they also remove containers of an earlier start of
    this job still running on this node: podman's containers are not children of the task
    (conmon runs them), so a task killed after its grace time can leave one behind, which would
    otherwise write into the run next to its restart.
    """
    if not image_of(cluster):
        return []
    engine = engine_of(cluster)
    command = command or container_python(cluster, paths, folder) + " -u -m submitit.core._submit ..."
    flag = shlex.quote(str(Path(_plain_path("cluster.folder", folder)) / ".requeue-")) + '"${SLURM_JOB_ID:-none}"'
    lines = ["mkdir -p " + " ".join(shlex.quote(d) for d in task_dirs(paths, folder))]
    if engine == "podman" and remove_leftovers:
        lines.append(
            f'if [ -n "${{SLURM_JOB_ID:-}}" ]; then podman ps -aq --filter "label={PODMAN_JOB_LABEL}='
            f'$SLURM_JOB_ID" | xargs -r podman rm -f; fi'
        )
    return lines + [
        f"export {REQUEUE_ENV}={flag}",
        f'rm -f "${REQUEUE_ENV}"',
        "hpclab_requeue_relay() {",
        f'  if [ -s "${REQUEUE_ENV}" ]; then',
        f'    job=$(cat "${REQUEUE_ENV}"); rm -f "${REQUEUE_ENV}"',
        '    echo "hpclab: requeueing $job (requested inside the container)"',
        "    scontrol requeue $job",
        "  fi",
        "}",
        "trap hpclab_requeue_relay EXIT",
        "echo " + shlex.quote(f"hpclab: tasks run in the {engine} image: {command}"),
    ]
