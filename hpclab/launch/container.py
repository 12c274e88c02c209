"""Running SLURM tasks inside the project's Apptainer image (containers/hpclab.def).

One place renders how a task enters the image, so the submitit launcher and the docs agree:

    apptainer exec [--nv] --bind DATA --bind RESULTS [--bind CACHE] [--bind FOLDER] [binds...]
        --env HPCLAB_DATA=... --env HPCLAB_RESULTS=... --env HPCLAB_CACHE=...
        --env TORCH_HOME=... --env HF_HOME=... IMAGE python

Paths are bound at the same absolute path they have on the host, because the run configs the
tasks unpickle carry host paths (``config.validate`` makes them absolute without resolving
symlinks, so neither do we: the bind destination must be the exact string the job opens).
The cache variables are passed with ``--env`` rather than left to the image's %environment,
because Apptainer injects ``--env`` after %environment and host variables never override the
image's own: this way TORCH_HOME/HF_HOME always name the bound ``paths.cache``.

The image has no SLURM client (it would have to match the cluster's version), so the
``scontrol requeue`` that submitit calls after checkpointing on USR2 is relayed: the image's
``scontrol`` (containers/scontrol-relay) writes the request to ``$HPCLAB_REQUEUE_FILE`` and the
batch script, outside the container, runs the real ``scontrol requeue`` when the step ends
(:func:`slurm_setup`).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

from hpclab.config import ConfigError

IMAGE_ENV = "HPCLAB_IMAGE"
REQUEUE_ENV = "HPCLAB_REQUEUE_FILE"


def image_of(cluster: Mapping[str, Any]) -> Optional[str]:
    """The configured image (``cluster.image``, else $HPCLAB_IMAGE) as an absolute path, or None."""
    image = cluster.get("image") or os.environ.get(IMAGE_ENV) or None
    return str(Path(image).expanduser().absolute()) if image else None


def check_image(cluster: Mapping[str, Any]) -> None:
    """Fail before submitting when the configured image is not a file (every task would die)."""
    image = image_of(cluster)
    if image and not Path(image).is_file():
        raise ConfigError(f"config key 'cluster.image': Apptainer image {image} not found "
                          f"(build it on a login node: containers/build.sh {image})")


def _plain_path(key: str, value: str | Path) -> str:
    path = str(Path(value).expanduser().absolute())
    if "," in path or ":" in path:  # Apptainer's separators in --bind and --env lists
        raise ConfigError(f"config key '{key}': {path!r} contains ',' or ':', which Apptainer cannot bind")
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
    """``--bind`` arguments: the project directories, then ``cluster.binds`` verbatim (src[:dst[:opts]])."""
    binds = project_dirs(paths, folder) + [str(b) for b in cluster.get("binds") or []]
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


def exec_prefix(cluster: Mapping[str, Any], paths: Mapping[str, Any], folder: str | Path | None = None) -> list[str]:
    """``apptainer exec ... IMAGE`` as an argument list; empty when no image is configured."""
    image = image_of(cluster)
    if not image:
        return []
    args = ["apptainer", "exec"]
    if (cluster.get("gpus_per_node") or 0) > 0:
        args.append("--nv")
    args += bind_args(cluster, paths, folder)
    for key, value in container_env(paths).items():
        args += ["--env", f"{key}={value}"]
    return args + [image]


def container_python(cluster: Mapping[str, Any], paths: Mapping[str, Any], folder: str | Path | None = None) -> str:
    """The python command of array tasks (submitit's ``slurm_python``): inside the image, or the
    interpreter that submits (its virtual environment), as submitit itself defaults to."""
    prefix = exec_prefix(cluster, paths, folder)
    return shlex.join([*prefix, "python"]) if prefix else shlex.quote(sys.executable)


def slurm_setup(cluster: Mapping[str, Any], paths: Mapping[str, Any], folder: str | Path) -> list[str]:
    """Batch-script lines (outside the container) for tasks that run in the image; none without one.

    They create the bound directories (a missing bind source stops Apptainer), print the
    container command into the job's log, and relay requeue requests from inside the image to
    the real ``scontrol`` when the step has ended. The request file is removed before the
    requeue, and at start, because a requeued job keeps its SLURM_JOB_ID.
    """
    if not image_of(cluster):
        return []
    flag = shlex.quote(str(Path(_plain_path("cluster.folder", folder)) / ".requeue-")) + '"$SLURM_JOB_ID"'
    command = container_python(cluster, paths, folder) + " -u -m submitit.core._submit ..."
    return [
        "mkdir -p " + " ".join(shlex.quote(d) for d in task_dirs(paths, folder)),
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
        "echo " + shlex.quote(f"hpclab: tasks run in the Apptainer image: {command}"),
    ]
