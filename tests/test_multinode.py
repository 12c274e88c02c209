"""Data parallel across ranks and nodes: sharded evaluation equals one process's and a resumed
2-rank run equals an uninterrupted one (no SLURM), bad multi-rank input refused before any work;
on a real multi-node cluster (``scripts/local_slurm.sh start --nodes 2``): the launcher's
``cluster.nodes=2`` job and ``sbatch --nodes=2 slurm/dcgan.sh`` end with exactly the metrics of
the same 2-rank run on one machine, ``scontrol requeue`` and ``scancel --signal=USR2`` of a
running 2-node job (both paths) stop both ranks at the same step and the job resumes to the
uninterrupted run's metrics, and a rank killed (or frozen) mid-run fails the job within
``cluster.collective_timeout_s`` with RankLost's line, the resubmitted job resuming. The SLURM
tests use the cluster of $HPCLAB_MULTINODE_SLURM_CONF when set (CI's second, 2-node instance),
else $SLURM_CONF; skipped when it has fewer than 2 nodes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import DIGITS_RUN, REPO, controller_problem, requires, run_cli

pytestmark = pytest.mark.multinode

RUN = [*DIGITS_RUN, "train.max_steps=12", "train.eval_every=6", "train.global_batch_size=64", "seed=3", "analysis=[]"]


# The smallest real DCGAN of the suite (experiment=dcgan_small at 8 px on the digits: generator
# 4,385 and discriminator 529 parameters, about 25 ms a 2-rank step here): the GAN draws latents
# from every rank's own RNG stream, which a resume must restore rank by rank. Long enough (300
# steps) for a signal to land mid-training; checkpoints kept to look at the stop steps.
GAN = [
    "experiment=dcgan_small",
    "data=digits",
    "data.image_size=8",
    "model.channels=16",
    "model.latent_dim=16",
    "train.epochs=null",
    "train.max_steps=300",
    "train.eval_every=100",
    "train.checkpoint_every=50",
    "train.keep_checkpoints=10",
    "train.global_batch_size=64",
    "train.log_every=10",
    "train.progress=log",
    "seed=3",
    "analysis=[]",
]
GAN_GROUP = "dcgan_small"
GAN_STEPS = 300


def final_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["metrics"]


def metric_rows(run_dir: Path) -> list[dict]:
    """Every logged row less its one clock-dependent value (images/s)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "images_per_s"} for row in rows]


def last_step(run_dir: Path) -> int:
    """The newest step in metrics.jsonl (0 before the first line; a line being written is skipped)."""
    steps = [0]
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return max(steps)


T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, poll: float = 0.1) -> T:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"no {what} after {timeout} s")


@pytest.fixture(scope="module")
def gan_reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The digits staged at 8 px and the uninterrupted GAN run: 2 local ranks (gloo), one machine."""
    work = tmp_path_factory.mktemp("gan_reference")
    env = {"HPCLAB_DATA": str(work / "data"), "HPCLAB_RESULTS": str(work / "results")}
    run_cli("prepare_data.py", "data=digits", "data.image_size=8", cwd=work, env=env)
    run_cli("launch.py", *GAN, "run_name=reference", "cluster.processes=2", cwd=work, env=env)
    run_dir = work / "results" / GAN_GROUP / "reference"
    return {"data": work / "data", "metrics": final_metrics(run_dir), "rows": metric_rows(run_dir)}


def assert_equals_reference(run_dir: Path, reference: dict) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == GAN_STEPS, summary
    diffs = {k: abs(reference["metrics"][k] - v) for k, v in summary["metrics"].items()}
    assert summary["metrics"] == reference["metrics"], diffs
    assert metric_rows(run_dir) == reference["rows"]


# --------------------------------------------------------------------------- no SLURM


def test_two_rank_sharded_evaluation_totals_equal_one_process(digits):
    """2 local ranks (each evaluating half the batches, one all-reduce) against 1 process with
    the same global batch: the same training is not the point here, the evaluation is: the
    1-process run evaluates the 2-rank run's final checkpoint."""
    run_cli("launch.py", *RUN, "run_name=two", "cluster.processes=2", "train.eval_batch_size=50", cwd=digits)
    two = digits / "results/ae_latent/two"
    assert "accelerate: 2 process(es)" in (two / "run.log").read_text()
    from omegaconf import OmegaConf

    from hpclab.config import load_run_config
    from hpclab.engine import Trainer

    cfg = load_run_config(two)
    cfg = OmegaConf.merge(cfg, {"cluster": {"processes": 1}})
    os.environ.pop("WORLD_SIZE", None)
    trainer = Trainer(cfg, two)
    trainer.fit()  # finished: resumes at the end, evaluates in this one process
    one = final_metrics(two)  # written by the 2-rank run
    again = trainer.run.evaluate("test")
    for key, value in again.items():
        assert abs(one[f"test/{key}"] - value) <= 1e-6 * max(1.0, abs(value)), (key, one[f"test/{key}"], value)


def test_world_size_must_divide_the_global_batch(digits):
    proc = run_cli("launch.py", *RUN, "train.global_batch_size=63", "cluster.processes=2", cwd=digits, check=False)
    assert proc.returncode == 2 and "train.global_batch_size" in proc.stderr and "63" in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        proc.stderr.strip().splitlines()[-1]
    ]
    assert not (digits / "results/ae_latent/default/checkpoints").exists()


def test_zero_nodes_is_refused(digits):
    proc = run_cli("launch.py", *RUN, "cluster=slurm", "cluster.nodes=0", cwd=digits, check=False)
    assert proc.returncode == 2 and "cluster.nodes" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_two_rank_resume_gives_every_rank_its_own_rng_back(gan_reference, tmp_path):
    """A 2-rank GAN resumed from a mid-run checkpoint ends exactly as the uninterrupted run. Each
    rank draws its latents from its own stream (seed + rank); checkpoints held rank 0's alone,
    so a resumed rank 1 drew rank 0's latents (d_loss 0.91696 instead of 0.91865 at 40 steps)."""
    env = {"HPCLAB_DATA": str(gan_reference["data"]), "HPCLAB_RESULTS": str(tmp_path / "results")}
    run_cli("launch.py", *GAN, "run_name=resumed", "cluster.processes=2", cwd=tmp_path, env=env)
    run_dir = tmp_path / "results" / GAN_GROUP / "resumed"
    (run_dir / "summary.json").unlink()  # as if killed after the checkpoint of step 100
    for ckpt in (run_dir / "checkpoints").glob("step*.pt"):
        if int(re.search(r"\d+", ckpt.name).group()) > 100:
            ckpt.unlink()
    run_cli("launch.py", *GAN, "run_name=resumed", "cluster.processes=2", cwd=tmp_path, env=env)
    assert "at step 100" in (run_dir / "run.log").read_text().split("resumed from")[-1].splitlines()[0]
    assert_equals_reference(run_dir, gan_reference)


@pytest.mark.slow
def test_eval_scaling_benchmark_compares_one_rank_with_two(tmp_path):
    """benchmarks/run.py's eval section runs (quick) and its two evaluations agree; its timings
    are reported, not asserted (they depend on the machine's load)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--quick",
            "--only",
            "eval",
            "--out",
            str(tmp_path / "bench"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "bench" / "benchmarks.json").read_text())["rows"]
    assert [r["row"].split(": ")[-1].split(",")[0] for r in rows] == ["1 rank", "2 ranks"]
    assert all(r["value"] > 0 for r in rows) and rows[0]["ratio"] == 1.0 and rows[1]["ratio"] > 0
    assert rows[1]["metrics_max_rel_diff"] < 1e-6 and len(rows[1]["cpu_s"]) == 2
    assert "speed-up" in proc.stderr


# --------------------------------------------------------------------------- the multi-node cluster


def multinode_env() -> dict:
    """The environment of the multi-node cluster's commands: $HPCLAB_MULTINODE_SLURM_CONF, else $SLURM_CONF."""
    conf = os.environ.get("HPCLAB_MULTINODE_SLURM_CONF") or os.environ.get("SLURM_CONF")
    return {**os.environ, **({"SLURM_CONF": conf} if conf else {})}


def two_node_problem() -> str | None:
    """Why the multi-node cluster cannot run these tests (None when it answers with 2 nodes)."""
    env = multinode_env()
    saved = os.environ.get("SLURM_CONF")
    if "SLURM_CONF" in env:
        os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    try:
        problem = controller_problem()
        nodes = (
            []
            if problem
            else subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, timeout=20
            ).stdout.split()
        )
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
    if problem:
        return f"multi-node: {problem}"
    if len(set(nodes)) < 2:
        return (
            f"multi-node: the cluster has {len(set(nodes))} node(s); start one with 2: "
            "scripts/local_slurm.sh start --nodes 2 (or set HPCLAB_MULTINODE_SLURM_CONF)"
        )
    return None


@pytest.fixture(scope="module")
def two_nodes() -> dict:
    requires(two_node_problem)
    return multinode_env()


def wait_job(job: str, env: dict, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, env=env)
        if not out.stdout.strip():
            return
        time.sleep(1)
    raise AssertionError(f"job {job} still queued or running after {timeout} s")


@pytest.mark.slurm
@pytest.mark.slow
def test_launcher_two_nodes_one_rank_each_equals_two_ranks_on_one_machine(digits, two_nodes, capsys):
    env = {**two_nodes, "HPCLAB_DATA": str(digits / "data"), "HPCLAB_RESULTS": str(digits / "results")}
    run_cli("launch.py", *RUN, "run_name=local2", "cluster.processes=2", cwd=digits, env=env)
    proc = run_cli(
        "launch.py",
        *RUN,
        "run_name=nodes2",
        "cluster=slurm",
        "cluster.nodes=2",
        "cluster.gpus_per_node=0",
        "cluster.cpus_per_task=1",
        "cluster.mem_gb=null",
        "cluster.time_min=10",
        cwd=digits,
        env=env,
    )
    match = re.search(r"submitted (?:array )?job (\d+)", proc.stdout)
    assert match, proc.stdout
    wait_job(match.group(1), env, 1200)
    run_dir = digits / "results/ae_latent/nodes2"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 12
    logs = "\n".join(p.read_text(errors="replace") for p in (digits / "results/ae_latent").rglob("*.out"))
    logs += (run_dir / "run.log").read_text()
    assert "accelerate: 2 process(es)" in logs
    local, nodes = final_metrics(digits / "results/ae_latent/local2"), summary["metrics"]
    diffs = {k: abs(local[k] - nodes[k]) for k in local}
    with capsys.disabled():
        print(f"\n2 nodes vs 2 ranks on one machine, largest |difference|: {max(diffs.values()):.3g} {diffs}")
    assert local == nodes, diffs


# ---- the sbatch script and the signals of a running 2-node job


def job_env(two_nodes: dict, reference: dict, work: Path) -> dict:
    return {
        **two_nodes,
        "HPCLAB_DATA": str(reference["data"]),
        "HPCLAB_RESULTS": str(work / "results"),
        "HPCLAB_PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
    }


def sbatch_gan(work: Path, env: dict, *overrides: str) -> str:
    """``sbatch --nodes=2 --ntasks-per-node=1 slurm/dcgan.sh GAN...``: one rank per node. The
    results folder is an override with slashes (the script finds its repository from scontrol's
    Command=, which holds the arguments too). A hang would end at the 5-minute limit."""
    proc = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=2",
            "--ntasks-per-node=1",
            "--gpus-per-node=0",
            "--cpus-per-task=1",
            "--mem=1G",
            "--time=5",
            str(REPO / "slurm" / "dcgan.sh"),
            *GAN,
            f"paths.results={work / 'results'}",
            *overrides,
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def launch_gan(work: Path, env: dict, *overrides: str) -> str:
    """The launcher's submitit job on 2 nodes, one rank each."""
    proc = run_cli(
        "launch.py",
        *GAN,
        "cluster=slurm",
        "cluster.nodes=2",
        "cluster.gpus_per_node=0",
        "cluster.cpus_per_task=1",
        "cluster.mem_gb=null",
        "cluster.time_min=5",
        *overrides,
        cwd=work,
        env=env,
    )
    match = re.search(r"submitted (?:array )?job (\d+)", proc.stdout)
    assert match, proc.stdout
    return match.group(1)


def job_logs(work: Path) -> str:
    """Every SLURM log of the jobs run from ``work``: the sbatch script's (both ranks in one
    file) and submitit's (one per rank, under results/<group>/.submitit)."""
    return "\n".join(p.read_text(errors="replace") for p in sorted(work.rglob("*")) if p.suffix in (".out", ".err"))


def stop_steps(work: Path) -> dict[int, list[int]]:
    """Per rank, the steps at which a stop signal ended its training (job.py logs one line each)."""
    steps: dict[int, list[int]] = {0: [], 1: []}
    for rank, step in re.findall(r"rank (\d) of 2 stopped at step (\d+)", job_logs(work)):
        steps[int(rank)].append(int(step))
    return steps


def stopped_again(work: Path, before: int) -> dict[int, list[int]] | None:
    """The ranks' stop steps once both have logged one more stop than ``before``, else None."""
    steps = stop_steps(work)
    return steps if min(len(steps[0]), len(steps[1])) > before else None


def job_state(job: str, env: dict) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, env=env).stdout
    match = re.search(r"JobState=(\S+)", out)
    return match.group(1) if match else "GONE"


def rank_pid(job: str, rank: int, env: dict) -> int:
    """The pid of rank ``rank``'s Python process: ``scontrol listpids`` on each node of the job
    (the emulated nodes share this host, so their pids are ours to signal)."""
    nodelist = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True, env=env
    ).stdout.strip()
    nodes = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, env=env
    ).stdout.split()
    for node in nodes:
        out = subprocess.run(["scontrol", "listpids", job, node], capture_output=True, text=True, env=env).stdout
        for line in out.splitlines()[1:]:
            pid, _, step, _, global_id = (line.split() + [""] * 5)[:5]
            if step == "0" and global_id == str(rank):
                return int(pid)
    raise AssertionError(f"no pid of rank {rank} in job {job} on {nodes}")


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_two_nodes_one_rank_each_equals_two_ranks_on_one_machine(two_nodes, gan_reference, tmp_path, capsys):
    env = job_env(two_nodes, gan_reference, tmp_path)
    job = sbatch_gan(tmp_path, env, "run_name=nodes2")
    wait_job(job, env, 1200)
    log = job_logs(tmp_path)
    assert "accelerate: 2 process(es)" in log and job_state(job, env) == "COMPLETED", log[-3000:]
    assert (
        "NumNodes=2 "
        in subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, env=env).stdout
    )
    run_dir = tmp_path / "results" / GAN_GROUP / "nodes2"
    summary = json.loads((run_dir / "summary.json").read_text())
    diffs = {k: abs(gan_reference["metrics"][k] - v) for k, v in summary["metrics"].items()}
    with capsys.disabled():
        print(f"\nsbatch on 2 nodes vs 2 ranks on one machine, largest |difference|: {max(diffs.values()):.3g}")
    assert_equals_reference(run_dir, gan_reference)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("path", ["sbatch", "launcher"])
def test_requeue_then_usr2_on_a_running_two_node_job_resume_exactly(path, two_nodes, gan_reference, tmp_path, capsys):
    """``scontrol requeue`` (SIGTERM: SLURM requeues) and then ``scancel --signal=USR2`` (the
    job requeues itself: JobSignals for the sbatch script, submitit's checkpoint() for the
    launcher), each once the run has trained past its last stop: both ranks stop at the same
    step, that step's checkpoint is written, the job comes back and resumes from it, and the run
    ends with every value of the uninterrupted run."""
    env = job_env(two_nodes, gan_reference, tmp_path)
    job = (sbatch_gan if path == "sbatch" else launch_gan)(tmp_path, env, "run_name=signals")
    run_dir = tmp_path / "results" / GAN_GROUP / "signals"
    started = time.time()
    stops: list[int] = []
    for signal_cmd in (["scontrol", "requeue", job], ["scancel", "--signal=USR2", job]):
        after = stops[-1] if stops else 0
        wait_for(lambda after=after: last_step(run_dir) > after, 900, f"step after {after} in {run_dir}/metrics.jsonl")
        subprocess.run(signal_cmd, check=True, env=env, timeout=60)
        steps = wait_for(
            lambda: stopped_again(tmp_path, len(stops)),
            600,
            f"'stopped at step' of both ranks after {' '.join(signal_cmd)}",
        )
        assert steps[0] == steps[1], steps  # the ranks agreed on the stop step
        stops.append(steps[0][-1])
    wait_for(
        lambda: job_state(job, env) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "GONE"),
        1200,
        f"end of job {job}",
        poll=1,
    )
    log = job_logs(tmp_path)
    assert job_state(job, env) in ("COMPLETED", "GONE"), log[-3000:]
    assert 0 < stops[0] < stops[1] < GAN_STEPS, stops  # both landed mid-training
    run_log = (run_dir / "run.log").read_text()
    for step in stops:
        assert (run_dir / "checkpoints" / f"step{step:09d}.pt").is_file()
        assert f"step{step:09d}.pt at step {step}" in run_log, run_log[-3000:]
    starts = json.loads((run_dir / "slurm.json").read_text())["starts"]
    assert [s["restart"] for s in starts] == [0, 1, 2] and {s["job_id"] for s in starts} == {job}, starts
    with capsys.disabled():
        print(
            f"\n{path}: requeue stopped both ranks at step {stops[0]}, USR2 at step {stops[1]}; starts on "
            f"{[s.get('nodes') for s in starts]}; {time.time() - started:.0f} s from submission to the end"
        )
    assert_equals_reference(run_dir, gan_reference)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("how", ["KILL", "STOP"])
def test_a_lost_rank_fails_the_two_node_job_within_the_collective_timeout(
    how, two_nodes, gan_reference, tmp_path, capsys
):
    """``kill -9`` of rank 1's Python (its sockets close: rank 0 fails at its next collective)
    or ``kill -STOP`` (a hung rank: rank 0 waits cluster.collective_timeout_s): the job fails
    long before its time limit with RankLost's one line and exit 4 (srun ends the other task).
    After the kill, the same sbatch command resumes from the newest checkpoint and ends with the
    uninterrupted run's values."""
    timeout_s = 20
    env = job_env(two_nodes, gan_reference, tmp_path)
    args = ("run_name=lost", f"cluster.collective_timeout_s={timeout_s}")
    job = sbatch_gan(tmp_path, env, *args)
    run_dir = tmp_path / "results" / GAN_GROUP / "lost"
    wait_for(lambda: last_step(run_dir) > 50, 900, "a step after the first checkpoint (50)")
    pid = rank_pid(job, 1, env)
    subprocess.run(["kill", f"-{how}", str(pid)], check=True)
    killed = time.time()
    # generous: on a loaded machine srun's clean-up takes its time; what is checked is how the job ends
    wait_for(
        lambda: job_state(job, env) not in ("RUNNING", "COMPLETING"), timeout_s + 600, f"end of job {job}", poll=0.2
    )
    elapsed = time.time() - killed
    log = job_logs(tmp_path)
    lost = [line for line in log.splitlines() if "lost the other ranks at step" in line]
    assert job_state(job, env) == "FAILED" and lost and "exit code 4" in log, log[-3000:]
    assert lost[0].startswith("error: rank ") and f"cluster.collective_timeout_s={timeout_s} s" in lost[0]
    assert "Traceback" not in log, log[-3000:]  # one line, not a stack
    with capsys.disabled():
        print(f"\nkill -{how} of rank 1: job {job} FAILED {elapsed:.1f} s later: {lost[0][:160]}...")
    if how == "STOP":  # (how long rank 0 waited depends on where it was in its collective: not checked)
        return
    newest = int(re.search(r"resume from step(\d+)\.pt", lost[0]).group(1))
    again = sbatch_gan(tmp_path, env, *args)
    wait_job(again, env, 1200)
    run_log = (run_dir / "run.log").read_text()
    resumed = re.findall(r"resumed from \S+ at step (\d+)", run_log)
    assert resumed and int(resumed[-1]) == newest > 0, run_log[-3000:]
    assert_equals_reference(run_dir, gan_reference)
