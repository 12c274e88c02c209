"""Does a SLURM request fit the cluster? One look at ``sinfo`` before anything is submitted,
and every misfit named in one line with the overrides that fit (sbatch refuses one thing at a
time: GPUs, then CPUs, then memory, a round trip each)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from hpclab.config import CONFIG_DIR, ConfigError

CPU_PROFILE = "slurm_cpu"  # configs/cluster/slurm_cpu.yaml


@dataclass
class Partition:
    """What one partition offers per node (the largest node where nodes differ)."""

    name: str
    default: bool
    nodes: int
    cpus: int
    mem_mb: int
    gpus: int
    time_min: int | None  # None: no limit

    def describe(self) -> str:
        time = "no time limit" if self.time_min is None else f"at most {self.time_min} min"
        gpus = f"{self.gpus} GPUs" if self.gpus else "no GPUs"
        nodes = "1 node" if self.nodes == 1 else f"{self.nodes} nodes, each"
        return f"partition '{self.name}' ({nodes}: {self.cpus} CPUs, {self.mem_mb / 1024:.1f} GB, {gpus}; {time})"


def partitions() -> dict[str, Partition] | None:
    """The partitions ``sinfo`` reports (one call); None when it does not answer."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P|%D|%c|%m|%G|%l"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    found: dict[str, Partition] = {}
    for line in out.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        name, nodes, cpus, mem, gres, limit = fields
        part = Partition(
            name.rstrip("*"), name.endswith("*"), _int(nodes), _int(cpus), _int(mem), gpus_of(gres), minutes(limit)
        )
        if part.name in found:  # nodes of another configuration in the same partition
            seen = found[part.name]
            part = Partition(
                part.name,
                seen.default or part.default,
                seen.nodes + part.nodes,
                max(seen.cpus, part.cpus),
                max(seen.mem_mb, part.mem_mb),
                max(seen.gpus, part.gpus),
                seen.time_min,
            )
        found[part.name] = part
    return found or None


def _int(text: str) -> int:
    match = re.match(r"\d+", text.strip())
    return int(match.group()) if match else 0


def gpus_of(gres: str) -> int:
    """GPUs per node from sinfo's GRES (``gpu:a100:4(S:0-1),gpu:2`` -> 6; ``(null)`` -> 0)."""
    total = 0
    for entry in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", entry).split(":")
        if parts[0] == "gpu" and len(parts) > 1 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def minutes(limit: str) -> int | None:
    """sinfo's time limit in minutes: ``30:00`` (min:s), ``4:00:00``, ``1-12:00:00``; None for
    ``infinite`` (or anything unreadable: sbatch then judges)."""
    days, _, clock = limit.strip().rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        day_count = int(days) if days else 0
    except ValueError:
        return None
    if days:  # days-hours[:minutes[:seconds]]
        hours, mins = parts[0], (parts + [0])[1]
    elif len(parts) == 3:
        hours, mins = parts[0], parts[1]
    else:  # minutes[:seconds]
        hours, mins = 0, parts[0]
    return day_count * 1440 + hours * 60 + mins


def misfits(cluster: DictConfig, parts: dict[str, Partition]) -> tuple[Partition | None, list[tuple[str, str]]]:
    """The partition the job would go to, and each setting that does not fit it as
    ``(what is wrong, the override that fits)``."""
    found: list[tuple[str, str]] = []
    default = next((p for p in parts.values() if p.default), next(iter(parts.values())))
    part = parts.get(cluster.partition) if cluster.partition else default
    if part is None:
        found.append(
            (
                f"cluster.partition={cluster.partition} (there are {', '.join(parts)})",
                f"cluster.partition={default.name}",
            )
        )
        part = default
    if cluster.nodes > part.nodes:
        found.append((f"cluster.nodes={cluster.nodes} ({part.nodes} there)", f"cluster.nodes={part.nodes}"))
    gpus = min(cluster.gpus_per_node, part.gpus)
    if gpus < cluster.gpus_per_node:
        found.append(
            (
                f"cluster.gpus_per_node={cluster.gpus_per_node} ({part.gpus or 'no'} GPUs a node)",
                f"cluster.gpus_per_node={gpus}",
            )
        )
    tasks = max(gpus, 1)  # one task per GPU
    per_task = max(part.cpus // tasks, 1)  # the most CPUs each task can have
    cpus = min(cluster.cpus_per_task, per_task)
    if cpus < cluster.cpus_per_task:
        found.append(
            (
                f"cluster.cpus_per_task={cluster.cpus_per_task} ({part.cpus} CPUs a node"
                + (f" for {tasks} tasks)" if tasks > 1 else ")"),
                f"cluster.cpus_per_task={cpus}",
            )
        )
    if cluster.threads > cpus:  # more threads than CPUs: every step waits for the ones without a core
        fix = f"cluster.cpus_per_task={cluster.threads}" if cluster.threads <= per_task else f"cluster.threads={cpus}"
        found.append((f"cluster.threads={cluster.threads} (more than cluster.cpus_per_task={cpus})", fix))
    if cluster.mem_gb and cluster.mem_gb * 1024 > part.mem_mb:
        fitting = int(part.mem_mb // 1024)
        found.append(
            (
                f"cluster.mem_gb={cluster.mem_gb:g} ({part.mem_mb / 1024:.1f} GB a node)",
                f"cluster.mem_gb={fitting}" if fitting else "cluster.mem_gb=null",
            )
        )
    if part.time_min is not None and cluster.time_min > part.time_min:
        found.append(
            (f"cluster.time_min={cluster.time_min} (limit {part.time_min})", f"cluster.time_min={part.time_min}")
        )
    return part, found


def fit_problem(cluster: DictConfig) -> str | None:
    """One line naming every setting that does not fit the cluster, with the overrides that do
    (and the CPU profile when it fits); None when all fit or sinfo does not answer."""
    parts = partitions()
    if not parts:
        return None
    part, found = misfits(cluster, parts)
    if not found:
        return None
    line = (
        f"the job does not fit {part.describe()}: {', '.join(what for what, _ in found)}. "
        f"These fit: {' '.join(fix for _, fix in found)}"
    )
    profile = OmegaConf.load(Path(CONFIG_DIR) / "cluster" / f"{CPU_PROFILE}.yaml")
    as_profile = OmegaConf.merge(cluster, {k: v for k, v in profile.items() if k != "defaults"})
    if cluster.gpus_per_node and not misfits(as_profile, parts)[1]:
        line += f", or cluster={CPU_PROFILE}"
    return line + " (set them once for every command in configs/local/default.yaml)"


def check_fit(cluster: DictConfig) -> None:
    """Refuse, before anything is queued, a request the cluster cannot run (one line)."""
    problem = fit_problem(cluster)
    if problem:
        raise ConfigError(problem)
