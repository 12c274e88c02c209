"""Data parallel across ranks and nodes: sharded evaluation equals one process's (no SLURM), bad
multi-rank input refused before any work, and the launcher's ``cluster.nodes=2`` job on a real
multi-node cluster (``scripts/local_slurm.sh start --nodes 2``) ends with the metrics of the same
2-rank run on one machine. The SLURM tests use the cluster of $HPCLAB_MULTINODE_SLURM_CONF when
set (CI's second, 2-node instance), else $SLURM_CONF; skipped when it has fewer than 2 nodes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import DIGITS_RUN, controller_problem, run_cli

pytestmark = pytest.mark.multinode

RUN = [*DIGITS_RUN, "train.max_steps=12", "train.eval_every=6", "train.global_batch_size=64", "seed=3",
       "analysis=[]"]


def final_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["metrics"]


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
    assert [line for line in proc.stderr.splitlines() if line.startswith('error:')] == [proc.stderr.strip().splitlines()[-1]]
    assert not (digits / "results/ae_latent/default/checkpoints").exists()


def test_zero_nodes_is_refused(digits):
    proc = run_cli("launch.py", *RUN, "cluster=slurm", "cluster.nodes=0", cwd=digits, check=False)
    assert proc.returncode == 2 and "cluster.nodes" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- the multi-node cluster

@pytest.fixture(scope="module")
def two_nodes() -> dict:
    conf = os.environ.get("HPCLAB_MULTINODE_SLURM_CONF") or os.environ.get("SLURM_CONF")
    env = {**os.environ, **({"SLURM_CONF": conf} if conf else {})}
    saved = os.environ.get("SLURM_CONF")
    if conf:
        os.environ["SLURM_CONF"] = conf
    try:
        problem = controller_problem()
        nodes = [] if problem else subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True,
                                                  text=True, timeout=20).stdout.split()
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
    if problem:
        pytest.skip(f"multi-node: {problem}")
    if len(set(nodes)) < 2:
        pytest.skip(f"multi-node: the cluster has {len(set(nodes))} node(s); start one with 2: "
                    "scripts/local_slurm.sh start --nodes 2 (or set HPCLAB_MULTINODE_SLURM_CONF)")
    return env


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
    proc = run_cli("launch.py", *RUN, "run_name=nodes2", "cluster=slurm", "cluster.nodes=2",
                   "cluster.gpus_per_node=0", "cluster.cpus_per_task=1", "cluster.mem_gb=null",
                   "cluster.time_min=10", cwd=digits, env=env)
    match = re.search(r"submitted (?:array )?job (\d+)", proc.stdout)
    assert match, proc.stdout
    wait_job(match.group(1), env, 300)
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
