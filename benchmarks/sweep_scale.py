#!/usr/bin/env python
"""Sweep-scale benchmark on a live SLURM cluster: a sweep of N tiny runs (digits, a few steps).

usage: python benchmarks/sweep_scale.py [--runs 1000] [--execute 20] [--parallelism 2]
                                         [--max-array-size 400] [--finished-locally 0] [--finish-all]
                                         [--out results/benchmarks]

Measures, through the public entry points (jobs/launch.py, jobs/report.py):
  local      with --finished-locally K: K runs of the sweep really trained first, in one local
             process (``launch.py`` without cluster=slurm): seconds, and per run
  submit     wall time of ``launch.py ... cluster=slurm`` for N runs, the arrays it made (split at
             cluster.max_array_size, chained or sharing the limit) and the tasks it queued
             (should be N - K: finished runs are not submitted)
  parallel   the most RUNNING tasks of the sweep squeue showed at once, over all its arrays, vs
             cluster.array_parallelism
  status     seconds per ``launch.py status`` while tasks run and after; counts per state
  report     seconds of ``report.py`` on the finished runs, and the rows of its table
  resubmit   after ``--execute`` runs have finished as SLURM tasks and the rest is cancelled, the
             same sweep again, held: how many tasks it queued (should be N - finished); then
             cancelled
  all        with --finish-all: the runs still to do are trained locally too, then ``report.py``
             and ``launch.py status`` are timed on all N finished runs, and every row of the
             table is checked against its run's summary.json

What is real: every run that counts as finished really trained, as a SLURM task (``--execute``
of them; 2 cores run about 8 tasks a minute here) or in the local process (the same training
code; about 15 runs a second here, without a Python start per run); the other tasks are really
queued and then scancelled. Nothing is fabricated. Needs sbatch/squeue (SLURM_CONF may name a
development instance, see scripts/local_slurm.sh).
"""

from __future__ import annotations

import argparse
import collections
import csv
import getpass
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hpclab.rundir import SUMMARY, read_summary
from hpclab.utils import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "sweep=ae_latent",
    "data=digits",
    "train.epochs=null",  # preset=smoke's settings spelled out: its group would be sweep_scale-smoke
    "train.eval_batch_size=256",
    "model.latent_dim=2",
    "model.channels=[4,8,8]",
    "train.batch_size=16",
    "data.limit=128",
    "analysis=[]",
    "train.max_steps=4",
    "train.eval_every=4",
    "train.log_every=2",
    "sweep.subset=0",
]


def cli(script: str, *args: str, env: dict[str, str], check: bool = True) -> tuple[float, float, str]:
    """(seconds, CPU seconds, stdout) of one jobs/ entry point. The CPU time (user + system of the
    process) does not grow with the load of a shared machine, where the wall time does."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=env["HPCLAB_WORK"],
    )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if check and proc.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args[:3])}... failed: {proc.stderr.strip()[-2000:]}")
    return seconds, cpu, proc.stdout


def squeue_states(job_ids: list[str]) -> collections.Counter:
    """State -> number of array tasks of these jobs squeue lists."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-u", getpass.getuser(), "-j", ",".join(job_ids), "-o", "%T"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return collections.Counter(out.stdout.split())


def status_counts(stdout: str) -> collections.Counter:
    """State -> runs, from ``launch.py status`` lines (header and notes skipped)."""
    counts: collections.Counter = collections.Counter()
    for line in stdout.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("("):
            counts[parts[1]] += 1
    return counts


def submit(overrides: list[str], env: dict[str, str]) -> tuple[float, float, list[str]]:
    seconds, cpu, out = cli("launch.py", *overrides, env=env)
    match = re.search(r"submitted array job ([\d, ]+) \(", out)
    return seconds, cpu, [j.strip() for j in match.group(1).split(",")] if match else []


def finish_locally(sweep: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds, CPU seconds) to train these runs of the sweep in one local process (finished
    ones are skipped)."""
    seconds, cpu, _ = cli("launch.py", *sweep, env=env)
    return seconds, cpu


def check_table(group: Path) -> tuple[int, int]:
    """(rows of summary.csv, rows whose metrics equal their run's summary.json, rounded as the
    report rounds them)."""
    with open(group / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    equal = 0
    for row in rows:
        summary = read_summary(group / row["run"], strict=True)
        metrics = {k: v for k, v in row.items() if k in summary["metrics"]}
        if (
            metrics
            and all(float(v) == round(summary["metrics"][k], 6) for k, v in metrics.items())
            and int(row["parameters"]) == sum(summary["parameters"].values())
        ):
            equal += 1
    return len(rows), equal


def finished_runs(group: Path) -> int:
    """Runs of the sweep folder that wrote their summary (finished, whatever their outcome)."""
    return sum(1 for d in group.iterdir() if (d / SUMMARY).is_file()) if group.is_dir() else 0


def measure(
    runs: int,
    execute: int,
    parallelism: int,
    max_array_size: int,
    work: Path,
    finished_locally: int = 0,
    finish_all: bool = False,
) -> dict[str, Any]:
    env = {
        **os.environ,
        "HPCLAB_DATA": str(work / "data"),
        "HPCLAB_RESULTS": str(work / "results"),
        "HPCLAB_PYTHON": sys.executable,
        "HPCLAB_WORK": str(work),
        "PYTHONUNBUFFERED": "1",
    }
    cli("prepare_data.py", "data=digits", env=env)
    sweep = [*TINY, "sweep.name=sweep_scale", f"seed=range(0,{runs})"]
    slurm = [
        "cluster=slurm",
        "cluster.gpus_per_node=0",
        "cluster.cpus_per_task=1",
        "cluster.mem_gb=null",
        "cluster.time_min=10",
        f"cluster.array_parallelism={parallelism}",
        f"cluster.max_array_size={max_array_size}",
    ]
    row: dict[str, Any] = {
        "runs": runs,
        "execute": execute,
        "array_parallelism": parallelism,
        "max_array_size": max_array_size,
        "finished_locally": finished_locally,
        "load_start": os.getloadavg()[0],
    }
    group = work / "results" / "sweep_scale"
    if finished_locally:  # a part of the sweep (the same run names: seed stays an axis)
        part = [*TINY, "sweep.name=sweep_scale", f"seed=range(0,{finished_locally})"]
        row["local_s"], row["local_cpu_s"] = finish_locally(part, env)
    row["submit_s"], row["submit_cpu_s"], ids = submit([*sweep, *slurm], env)
    row["arrays"] = ids
    row["array_layout"] = array_layout(ids)
    row["queued_tasks"] = sum(squeue_states(ids).values())
    max_running, status_running = 0, []
    deadline = time.time() + 60 * 60
    while time.time() < deadline:
        states = squeue_states(ids)
        max_running = max(max_running, states.get("RUNNING", 0))
        finished = finished_runs(group)
        if states.get("RUNNING") and len(status_running) < 3:
            seconds, cpu, out = cli("launch.py", "status", *sweep, env=env)
            status_running.append((seconds, cpu, dict(status_counts(out))))
        if finished >= finished_locally + execute:
            break
        if not states and finished_runs(group) < finished_locally + execute:
            raise RuntimeError(f"the arrays {ids} left the queue with {finished} of {group}'s runs finished")
        time.sleep(1)
    subprocess.run(["scancel", *ids], check=True)
    deadline = time.monotonic() + 120  # until SLURM has let go of every task (no COMPLETING left)
    while squeue_states(ids) and time.monotonic() < deadline:
        time.sleep(1)
    row["max_running"] = max_running
    row["status_running"] = status_running
    row["status_after_s"], row["status_after_cpu_s"], out = cli("launch.py", "status", *sweep, env=env)
    row["status_after"] = dict(status_counts(out))
    row["finished"] = finished_runs(group)
    row["report_s"], row["report_cpu_s"], _ = cli("report.py", str(group), env=env)
    row["report_rows"] = len((group / "summary.csv").read_text().splitlines()) - 1
    # held, so that none of it runs before it is cancelled
    row["resubmit_s"], row["resubmit_cpu_s"], again = submit([*sweep, *slurm, "+cluster.extra.hold=true"], env)
    row["resubmit_arrays"] = again
    row["resubmitted_tasks"] = sum(squeue_states(again).values()) if again else 0
    if again:
        subprocess.run(["scancel", *again], check=True)
        deadline = time.monotonic() + 120
        while squeue_states(again) and time.monotonic() < deadline:
            time.sleep(1)
    if finish_all:
        row["finish_rest_s"], row["finish_rest_cpu_s"] = finish_locally(sweep, env)
        row["all_finished"] = finished_runs(group)
        row["report_all_s"], row["report_all_cpu_s"], _ = cli("report.py", str(group), env=env)
        row["report_all_rows"], row["report_all_equal"] = check_table(group)
        row["status_all_s"], row["status_all_cpu_s"], out = cli("launch.py", "status", *sweep, env=env)
        row["status_all"] = dict(status_counts(out))
    row["load_end"] = os.getloadavg()[0]
    return row


def array_layout(ids: list[str]) -> list[str]:
    """``tasks%limit[ after id]`` of each array (a one-run array is a plain job: no limit), from
    squeue and scontrol: what SLURM itself enforces."""
    layout = []
    for job in ids:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=60
        ).stdout.splitlines()
        fields = dict(f.split("=", 1) for f in (out[0].split() if out else []) if "=" in f)
        after = re.findall(r"afterany:(\d+)", fields.get("Dependency", ""))
        limit = f"%{fields['ArrayTaskThrottle']}" if "ArrayTaskThrottle" in fields else ""
        layout.append(f"{sum(squeue_states([job]).values())}{limit}" + (f" after {after[0]}" if after else ""))
    return layout


def to_markdown(row: dict[str, Any]) -> str:
    def t(key: str) -> str:  # wall (CPU) seconds
        return f"{row[key + '_s']:.1f} s ({row[key + '_cpu_s']:.1f} s CPU)"

    running = "; ".join(f"{s:.1f} s ({c:.1f} s CPU) {n}" for s, c, n in row["status_running"]) or "-"
    lines = [
        f"## sweep_scale: {row['runs']} runs, {row['finished']} really executed "
        f"({row['finished_locally']} locally first, the others as SLURM tasks)",
        "",
        f"Wall time, and in brackets the CPU time of the command; load average at the start "
        f"{row['load_start']:.1f}, at the end {row['load_end']:.1f} on {os.cpu_count()} cores.",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    if row["finished_locally"]:
        lines.append(
            f"| {row['finished_locally']} runs trained locally first (one process) | {t('local')}, "
            f"{row['local_s'] / row['finished_locally']:.2f} s per run, plan and start included |"
        )
    lines += [
        f"| submission | {t('submit')} |",
        f"| arrays (max_array_size {row['max_array_size']}; tasks%limit) | {len(row['arrays'])}: "
        f"{', '.join(f'{j} {layout}' for j, layout in zip(row['arrays'], row['array_layout']))} |",
        f"| tasks queued (expected {row['runs'] - row['finished_locally']}) | {row['queued_tasks']} |",
        f"| most RUNNING at once over all arrays vs array_parallelism | {row['max_running']} vs "
        f"{row['array_parallelism']} |",
        f"| status while running (counts) | {running} |",
        f"| status after | {t('status_after')} {row['status_after']} |",
        f"| report.py on {row['finished']} finished runs | {t('report')}, {row['report_rows']} rows |",
        f"| resubmission after {row['finished']} finished (held) | {row['resubmitted_tasks']} tasks queued "
        f"(expected {row['runs'] - row['finished']}), {t('resubmit')} |",
    ]
    if "report_all_s" in row:
        lines += [
            f"| the other {row['runs'] - row['finished']} trained locally | {t('finish_rest')} |",
            f"| report.py on {row['all_finished']} finished runs | {t('report_all')}, "
            f"{row['report_all_rows']} rows, {row['report_all_equal']} equal to their summary.json |",
            f"| status on {row['all_finished']} finished runs | {t('status_all')} {row['status_all']} |",
        ]
    lines += [
        "",
        "Real: every finished run trained (locally or as a SLURM task); the others were queued, then scancelled.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="grid points (seeds) in the sweep")
    parser.add_argument("--execute", type=int, default=20, help="runs to let finish before cancelling the rest")
    parser.add_argument("--parallelism", type=int, default=2, help="cluster.array_parallelism")
    parser.add_argument("--max-array-size", type=int, default=400, help="cluster.max_array_size (<= MaxArraySize - 1)")
    parser.add_argument(
        "--finished-locally", type=int, default=0, help="runs to train locally (one process) before the submission"
    )
    parser.add_argument(
        "--finish-all",
        action="store_true",
        help="at the end, train the rest locally and time report.py and status on all runs",
    )
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    args = parser.parse_args(argv)
    if not 0 <= args.finished_locally < args.runs:
        parser.error("--finished-locally must be between 0 and --runs - 1")
    if not 0 < args.execute <= args.runs - args.finished_locally:
        parser.error("--execute must be between 1 and --runs - --finished-locally")
    # Cancelled tasks may still be writing submitit logs while the folder is removed: the
    # measurement is kept whatever the clean-up finds.
    with tempfile.TemporaryDirectory(prefix="sweep_scale-", ignore_cleanup_errors=True) as tmp:
        row = measure(
            args.runs,
            args.execute,
            args.parallelism,
            args.max_array_size,
            Path(tmp),
            args.finished_locally,
            args.finish_all,
        )
    text = to_markdown(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep_scale.md", text + "\n")
    atomic_write_text(out / "sweep_scale.json", json.dumps(row, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
