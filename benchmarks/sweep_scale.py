#!/usr/bin/env python
"""Sweep-scale benchmark on a live SLURM cluster: a sweep of N tiny runs (digits, a few steps).

usage: python benchmarks/sweep_scale.py [--runs 1000] [--execute 20] [--parallelism 2]
                                         [--max-array-size 400] [--out results/benchmarks]

Measures, through the public entry points (jobs/launch.py, jobs/report.py):
  submit     wall time of ``launch.py ... cluster=slurm`` for N runs, and the arrays it made
             (split at cluster.max_array_size)
  parallel   the most RUNNING tasks squeue showed at once vs cluster.array_parallelism
  status     seconds per ``launch.py status`` while tasks run and after; counts per state
  report     seconds of ``report.py`` on the finished runs, and the rows of its table
  resubmit   after ``--execute`` runs have finished and the rest is cancelled, the same sweep
             again: how many tasks it queued (should be N - finished)

What is real: every run that counts as finished really ran as a SLURM task (``--execute`` of
them; the machine's CPUs bound how many fit in a session); the remaining tasks are really
queued and then scancelled. Nothing is fabricated. Needs sbatch/squeue (SLURM_CONF may name
a development instance, see scripts/local_slurm.sh).
"""

from __future__ import annotations

import argparse
import collections
import getpass
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
TINY = ["sweep=ae_latent", "data=digits", "preset=smoke", "model.latent_dim=2", "model.channels=[4,8,8]",
        "train.batch_size=16", "data.limit=128", "analysis=[]", "train.max_steps=4", "train.eval_every=4",
        "train.log_every=2", "sweep.subset=0"]


def cli(script: str, *args: str, env: dict[str, str], check: bool = True) -> tuple[float, str]:
    """(seconds, stdout) of one jobs/ entry point."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / script), *args], capture_output=True, text=True,
                          env=env, cwd=env["HPCLAB_WORK"])
    seconds = time.perf_counter() - start
    if check and proc.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args[:3])}... failed: {proc.stderr.strip()[-2000:]}")
    return seconds, proc.stdout


def squeue_states(job_ids: list[str]) -> collections.Counter:
    """State -> number of array tasks of these jobs squeue lists."""
    out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-j", ",".join(job_ids), "-o", "%T"],
                         capture_output=True, text=True, timeout=60)
    return collections.Counter(out.stdout.split())


def status_counts(stdout: str) -> collections.Counter:
    """State -> runs, from ``launch.py status`` lines (header and notes skipped)."""
    counts: collections.Counter = collections.Counter()
    for line in stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("("):
            counts[parts[1]] += 1
    return counts


def submit(overrides: list[str], env: dict[str, str]) -> tuple[float, list[str]]:
    seconds, out = cli("launch.py", *overrides, env=env)
    match = re.search(r"submitted array job ([\d, ]+) \(", out)
    return seconds, [j.strip() for j in match.group(1).split(",")] if match else []


def measure(runs: int, execute: int, parallelism: int, max_array_size: int, work: Path) -> dict[str, Any]:
    env = {**os.environ, "HPCLAB_DATA": str(work / "data"), "HPCLAB_RESULTS": str(work / "results"),
           "HPCLAB_PYTHON": sys.executable, "HPCLAB_WORK": str(work), "PYTHONUNBUFFERED": "1"}
    cli("prepare_data.py", "data=digits", env=env)
    sweep = [*TINY, "sweep.name=sweep_scale", "seed=" + ",".join(str(i) for i in range(runs))]
    slurm = ["cluster=slurm", "cluster.gpus_per_node=0", "cluster.cpus_per_task=1", "cluster.mem_gb=null",
             "cluster.time_min=10", f"cluster.array_parallelism={parallelism}",
             f"cluster.max_array_size={max_array_size}"]
    row: dict[str, Any] = {"runs": runs, "execute": execute, "array_parallelism": parallelism,
                           "max_array_size": max_array_size}
    row["submit_s"], ids = submit([*sweep, *slurm], env)
    row["arrays"] = ids
    row["queued_tasks"] = sum(squeue_states(ids).values())
    max_running, status_running = 0, []
    deadline = time.time() + 60 * 60
    group = work / "results" / "sweep_scale"
    while time.time() < deadline:
        states = squeue_states(ids)
        max_running = max(max_running, states.get("RUNNING", 0))
        finished = sum(1 for d in group.iterdir() if (d / "summary.json").is_file()) if group.is_dir() else 0
        if states.get("RUNNING") and len(status_running) < 3:
            seconds, out = cli("launch.py", "status", *sweep, env=env)
            status_running.append((seconds, dict(status_counts(out))))
        if finished >= execute:
            break
        time.sleep(2)
    subprocess.run(["scancel", *ids], check=True)
    deadline = time.monotonic() + 120  # until SLURM has let go of every task (no COMPLETING left)
    while squeue_states(ids) and time.monotonic() < deadline:
        time.sleep(1)
    row["max_running"] = max_running
    row["status_running"] = status_running
    seconds, out = cli("launch.py", "status", *sweep, env=env)
    row["status_after_s"], row["status_after"] = seconds, dict(status_counts(out))
    finished = sum(1 for d in group.iterdir() if (d / "summary.json").is_file())
    row["finished"] = finished
    row["report_s"], _ = cli("report.py", str(group), env=env)
    table = (group / "summary.csv").read_text().splitlines()
    row["report_rows"] = len(table) - 1
    row["resubmit_s"], again = submit([*sweep, *slurm], env)
    row["resubmit_arrays"] = again
    row["resubmitted_tasks"] = sum(squeue_states(again).values()) if again else 0
    if again:
        subprocess.run(["scancel", *again], check=True)
    return row


def to_markdown(row: dict[str, Any]) -> str:
    running = "; ".join(f"{s:.1f} s {c}" for s, c in row["status_running"]) or "-"
    return "\n".join([
        f"## sweep_scale: {row['runs']} runs, {row['finished']} really executed",
        "",
        "| measure | value |", "|---|---|",
        f"| submission wall time | {row['submit_s']:.1f} s |",
        f"| arrays (max_array_size {row['max_array_size']}) | {len(row['arrays'])}: {', '.join(row['arrays'])} "
        f"({row['queued_tasks']} tasks queued) |",
        f"| most RUNNING at once vs array_parallelism | {row['max_running']} vs {row['array_parallelism']} |",
        f"| status while running (s, counts) | {running} |",
        f"| status after (s, counts) | {row['status_after_s']:.1f} s {row['status_after']} |",
        f"| report.py on {row['finished']} finished runs | {row['report_s']:.1f} s, {row['report_rows']} rows |",
        f"| resubmission after {row['finished']} finished | {row['resubmitted_tasks']} tasks queued "
        f"(expected {row['runs'] - row['finished']}), {row['resubmit_s']:.1f} s |",
        "",
        "Real: the finished runs ran as SLURM tasks; the others were queued, then scancelled.",
    ])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="grid points (seeds) in the sweep")
    parser.add_argument("--execute", type=int, default=20, help="runs to let finish before cancelling the rest")
    parser.add_argument("--parallelism", type=int, default=2, help="cluster.array_parallelism")
    parser.add_argument("--max-array-size", type=int, default=400, help="cluster.max_array_size (<= MaxArraySize - 1)")
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    args = parser.parse_args(argv)
    if not 0 < args.execute <= args.runs:
        parser.error("--execute must be between 1 and --runs")
    # Cancelled tasks may still be writing submitit logs while the folder is removed: the
    # measurement is kept whatever the clean-up finds.
    with tempfile.TemporaryDirectory(prefix="sweep_scale-", ignore_cleanup_errors=True) as tmp:
        row = measure(args.runs, args.execute, args.parallelism, args.max_array_size, Path(tmp))
    text = to_markdown(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep_scale.md").write_text(text + "\n")
    (out / "sweep_scale.json").write_text(json.dumps(row, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
