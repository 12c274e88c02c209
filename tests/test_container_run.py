"""The built image, for real (podman): its self-test, what a task sees inside it, the build
script's one-line errors, and the smoke sweep as a SLURM array with every task inside the
image, one task requeued mid-run, ending with exactly the metrics of the same runs outside.

Needs podman and an image (``containers/build.sh``; the image is $HPCLAB_TEST_IMAGE, default
localhost/hpclab:latest); the SLURM tests also need the local cluster. Each is skipped with the
reason when something is missing. On the hpclab machines podman needs
``CONTAINERS_CONF=containers/podman-local.conf`` (CI sets it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, controller_problem, requires, run_cli

from hpclab.launch import container

pytestmark = pytest.mark.container

IMAGE = os.environ.get("HPCLAB_TEST_IMAGE", "localhost/hpclab:latest")
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
NOT_COMPARED = {"images_per_s"}  # wall-clock rates; every other logged value must be identical


def podman_problem(image: str | None = IMAGE) -> str | None:
    """Why podman (and the image) cannot be used here; None when they can."""
    if not shutil.which("podman"):
        return "podman is not installed (apt-get install podman runc)"
    if image is None:
        return None
    if subprocess.run(["podman", "image", "exists", image], capture_output=True).returncode != 0:
        return f"no image {image}: build it with containers/build.sh (or set HPCLAB_TEST_IMAGE)"
    probe = subprocess.run(
        ["podman", "run", "--rm", "--entrypoint", "true", image], capture_output=True, text=True, timeout=120
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1][:160]
        return (
            f"podman cannot start containers here ({last}); on the hpclab machines: "
            f"export CONTAINERS_CONF={REPO}/containers/podman-local.conf"
        )
    return None


@pytest.fixture(scope="module")
def image() -> str:
    requires(podman_problem)
    return IMAGE


def podman(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- the image itself


@pytest.mark.slow
def test_image_self_test_lock_and_labels(image):
    proc = podman("run", "--rm", image, "selftest")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "environment matches /opt/hpclab/constraints.txt" in proc.stdout
    assert "hpclab image self-test passed" in proc.stdout
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", image).stdout)
    inside = podman(
        "run",
        "--rm",
        image,
        "sh",
        "-c",
        "sha256sum /opt/hpclab/constraints.txt; command -v python; "
        "find /run/hpclab-build -type f -size +0 | wc -l; du -sm /root/.cache 2>/dev/null | cut -f1; "
        "python -m pip config list",
    ).stdout.splitlines()
    assert inside[0].split()[0] == labels["org.hpclab.constraints.sha256"]
    assert inside[1] == "/opt/venv/bin/python"
    assert inside[2] == "0"  # of the build-time inputs only their empty mount points are left
    assert inside[3:4] in ([], ["0"])  # no pip cache in the image
    assert inside[4:] == []  # no pip configuration of the build machine either
    assert labels["org.opencontainers.image.title"] == "hpclab" and labels["org.opencontainers.image.revision"]


def test_a_task_sees_the_bound_paths_and_variables_and_no_host_python(image, tmp_path):
    """The exact command the launcher renders, run by a shell as the batch script runs it."""
    paths = {"data": tmp_path / "data", "results": tmp_path / "results", "cache": tmp_path / "weights"}
    for path in paths.values():
        path.mkdir()
    cluster = {"image": image, "container": "podman", "gpus_per_node": 0, "binds": []}
    python = container.container_python(cluster, paths, tmp_path / "results" / ".submitit")
    probe = (
        "import json, os, sys; import hpclab; open(os.environ['HPCLAB_RESULTS'] + '/from-inside', 'w').write('x'); "
        "print(json.dumps({'env': dict(os.environ), 'exe': sys.executable, 'path': sys.path, "
        "'hpclab': hpclab.__file__}))"
    )
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "PYTHONHOME": "/nonexistent",
        "SLURM_JOB_ID": "4242",
        "SLURM_ARRAY_TASK_ID": "1",
        "RANK": "0",
        "OMP_NUM_THREADS": "1",
        "HPCLAB_REQUEUE_FILE": str(tmp_path / "rq"),
        "TORCH_HOME": "/home/me/.cache/torch",
        "VIRTUAL_ENV": "/work/main/.venv",
        **({"CONTAINERS_CONF": os.environ["CONTAINERS_CONF"]} if "CONTAINERS_CONF" in os.environ else {}),
    }
    proc = subprocess.run(
        ["bash", "-c", f'{python} -c "$PROBE"'],
        env={**env, "PROBE": probe},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    inside = seen["env"]
    assert inside["HPCLAB_DATA"] == str(paths["data"]) and inside["HPCLAB_CACHE"] == str(paths["cache"])
    assert inside["TORCH_HOME"] == str(paths["cache"]) and inside["HF_HOME"] == f"{paths['cache']}/huggingface"
    assert inside["HPCLAB_CONTAINER_ENGINE"] == "podman" and inside["HPCLAB_CONTAINER_IMAGE"] == image
    assert (inside["SLURM_JOB_ID"], inside["SLURM_ARRAY_TASK_ID"], inside["RANK"]) == ("4242", "1", "0")
    assert inside["HPCLAB_REQUEUE_FILE"] == str(tmp_path / "rq")
    assert not {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"} & set(inside)  # the host's Python stays out
    assert seen["exe"] == "/opt/venv/bin/python" and seen["hpclab"] == "/opt/hpclab/hpclab/__init__.py"
    assert not any(str(REPO) in p for p in seen["path"])
    assert (paths["results"] / "from-inside").read_text() == "x"  # written at the same path
    # The task's container carried the job's label (the batch script's cleanup finds it by it).
    assert podman("ps", "-aq", "--filter", "label=hpclab.slurm_job=4242").stdout.strip() == ""  # --rm: gone


def test_podman_cleanup_removes_a_leftover_container_of_the_same_job(image, tmp_path):
    """slurm_setup's podman line: a container of an earlier start of this job is removed."""
    started = podman("run", "-d", "--label", "hpclab.slurm_job=99123", "--entrypoint", "sleep", image, "300")
    assert started.returncode == 0, started.stderr
    other = podman("run", "-d", "--label", "hpclab.slurm_job=99124", "--entrypoint", "sleep", image, "300")
    try:
        lines = container.slurm_setup(
            {"image": image, "container": "podman"},
            {"data": tmp_path / "d", "results": tmp_path / "r", "cache": tmp_path / "c"},
            tmp_path / "r" / ".submitit",
        )
        cleanup = next(line for line in lines if "podman ps" in line)  # inside a SLURM job only
        proc = subprocess.run(
            ["bash", "-c", cleanup],
            env={**os.environ, "SLURM_JOB_ID": "99123"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert podman("ps", "-aq", "--filter", "label=hpclab.slurm_job=99123").stdout.strip() == ""
        assert podman("ps", "-q", "--filter", "label=hpclab.slurm_job=99124").stdout.strip() != ""  # another job's
    finally:
        podman("rm", "-f", "-i", "-t", "0", started.stdout.strip(), other.stdout.strip())


# --------------------------------------------------------------------------- one-line errors


def test_build_script_names_the_fix_for_an_unfetchable_base_and_a_podman_that_cannot_run(tmp_path):
    requires(lambda: podman_problem(image=None))
    proc = subprocess.run(
        [str(REPO / "containers" / "build.sh"), "--engine", "podman", "--base", "localhost/hpclab-no-such-base:1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: base image localhost/hpclab-no-such-base:1 cannot be fetched (")
    assert "containers/make_base.sh, then containers/build.sh --base localhost/debian:bookworm" in proc.stderr
    # Without this machine's site settings podman may not start containers: named, not a stack.
    empty = tmp_path / "containers.conf"
    empty.write_text("")
    env = {**os.environ, "CONTAINERS_CONF": str(empty)}
    bare = subprocess.run(["podman", "run", "--rm", "--entrypoint", "true", IMAGE], env=env, capture_output=True)
    if bare.returncode == 0 or podman_problem():
        return  # podman works here without site settings (or there is no image to probe with)
    proc = subprocess.run(
        [str(REPO / "containers" / "build.sh"), "--engine", "podman", "--base", IMAGE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: podman cannot start containers on this machine (")
    assert "export CONTAINERS_CONF=" in proc.stderr and "podman-local.conf" in proc.stderr


def test_a_podman_image_that_does_not_exist_stops_the_submission(fmnist_data):
    requires(lambda: podman_problem(image=None))
    proc = run_cli(
        "launch.py",
        "sweep=ae_latent",
        "preset=smoke",
        "cluster=slurm",
        "cluster.container=podman",
        "cluster.image=localhost/hpclab:no-such-tag",
        cwd=fmnist_data,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"error: config key 'cluster.image': podman on {socket.gethostname()} has no image "
        "'localhost/hpclab:no-such-tag' (build it: "
        "containers/build.sh --engine podman; list the images: podman images)"
    ]
    assert not (fmnist_data / "results" / "ae_latent-smoke").exists()


# --------------------------------------------------------------------------- SLURM, inside the image


def logged(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]


def comparable(run_dir: Path) -> dict[tuple[str, int], dict]:
    """(split, step) -> every logged value but the wall-clock rates."""
    return {(r["split"], r["step"]): {k: v for k, v in r.items() if k not in NOT_COMPARED} for r in logged(run_dir)}


def squeue_state(job: str) -> str | None:
    out = subprocess.run(
        ["squeue", "-h", "-j", job, "-t", "all", "-o", "%T"], capture_output=True, text=True, timeout=30
    )
    return out.stdout.split()[0] if out.stdout.split() else None


@pytest.mark.slurm
@pytest.mark.slow
def test_smoke_sweep_array_inside_the_image_requeued_mid_run_equals_the_runs_outside(image, tmp_path):
    """sweep=ae_latent preset=smoke on real Fashion-MNIST: one SLURM array, both tasks inside the
    image (podman), task 0 requeued with scontrol mid-run; the same sweep outside the image
    (this venv, one thread like the 1-CPU tasks). Every logged value and the final metrics of
    both runs are bit-identical inside and outside, the requeued one included."""
    requires(
        controller_problem,
        lambda: (
            None
            if FASHION_MNIST.is_dir()
            else f"{FASHION_MNIST} missing: apt-get install dataset-fashion-mnist (scripts/setup.sh does)"
        ),
    )
    env = {
        **os.environ,
        "HPCLAB_DATA": str(tmp_path / "data"),
        "HPCLAB_RESULTS": str(tmp_path / "inside"),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("HPCLAB_IMAGE", "HPCLAB_CONTAINER", "HPCLAB_CACHE"):
        env.pop(key, None)
    run_cli("prepare_data.py", "data=fashion_mnist", cwd=tmp_path, env=env)
    sweep = ["sweep=ae_latent", "preset=smoke"]
    proc = run_cli(
        "launch.py",
        *sweep,
        "cluster=slurm",
        "cluster.container=podman",
        f"cluster.image={image}",
        "cluster.gpus_per_node=0",
        "cluster.cpus_per_task=1",
        "cluster.mem_gb=null",
        "cluster.time_min=20",
        cwd=tmp_path,
        env=env,
    )
    match = re.search(r"submitted array job (\d+) \(2 runs\)", proc.stdout)
    assert match, proc.stdout
    job = match.group(1)
    # Meanwhile the same sweep outside the image, in this process's environment.
    outside = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "launch.py"), *sweep],
        cwd=tmp_path,
        env={**env, "HPCLAB_RESULTS": str(tmp_path / "outside")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    inside = tmp_path / "inside" / "ae_latent-smoke"
    requeued, seen = f"{job}_0", 0
    deadline = time.time() + 900
    while not seen:  # requeue task 0 once it has trained 40 steps (of 200)
        assert time.time() < deadline, f"task 0 did not reach step 40; state {squeue_state(requeued)}"
        steps = [r["step"] for r in logged(inside / "latent_dim-2") if r["split"] == "fit"]
        if steps and max(steps) >= 40:
            seen = max(steps)
            subprocess.run(["scontrol", "requeue", requeued], check=True, timeout=30)
        time.sleep(0.5)
    out, _ = outside.communicate(timeout=900)
    assert outside.returncode == 0, out[-3000:]
    for task in (requeued, f"{job}_1"):
        while squeue_state(task) not in (None, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"):
            assert time.time() < deadline, f"{task} still {squeue_state(task)}"
            time.sleep(1)
        assert squeue_state(task) in (None, "COMPLETED"), f"{task}: {squeue_state(task)}"
    record = json.loads((inside / "submissions.json").read_text())
    log = Path(record["latent_dim-2"]["log"]).read_text()
    assert log.count("tasks run in the podman image: sh -c") == 2  # both starts
    # The run's own log (in the bound results folder; what the task printed after SLURM killed
    # its podman process does not reach the SLURM log): the signal, the checkpoint, the resume.
    run_log = (inside / "latent_dim-2" / "run.log").read_text()
    assert "received SIGTERM: checkpointing at the next step boundary" in run_log
    resumed = re.findall(r"resumed from \S+ at step (\d+)", run_log)
    assert len(resumed) == 1 and int(resumed[0]) >= seen, resumed
    resume = int(resumed[0])
    print(f"requeued at step {seen}, resumed at step {resume}")

    host_python = f"{sys.version_info[0]}.{sys.version_info[1]}.{sys.version_info[2]}"
    for name in ("latent_dim-2", "latent_dim-256"):
        run_in, run_out = inside / name, tmp_path / "outside" / "ae_latent-smoke" / name
        environment = json.loads((run_in / "environment.json").read_text())
        assert environment["container"] == {"engine": "podman", "image": image}
        assert json.loads((run_out / "environment.json").read_text())["container"] is None
        summary_in, summary_out = (json.loads((d / "summary.json").read_text()) for d in (run_in, run_out))
        assert summary_in["status"] == summary_out["status"] == "completed" and summary_in["steps"] == 200
        print(
            f"{name}: inside (Python {environment['python']}, image) {summary_in['metrics']} | "
            f"outside (Python {host_python}) {summary_out['metrics']}"
        )
        assert summary_in["metrics"] == summary_out["metrics"]  # bit-identical floats
        logged_in, logged_out = comparable(run_in), comparable(run_out)
        # every logged value, evaluations included: the loss window since the last log line is
        # part of the checkpoint, so the first line after the resume equals the uninterrupted one
        assert logged_in == logged_out
    starts = json.loads((inside / "latent_dim-2" / "slurm.json").read_text())["starts"]
    assert [s["restart"] for s in starts] == [0, 1] and {s["job"] for s in starts} == {requeued}
    assert len(json.loads((inside / "latent_dim-256" / "slurm.json").read_text())["starts"]) == 1


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_script_runs_its_task_inside_the_image(image, fmnist_mirror, tmp_path):
    """slurm/common.sh's podman path for real: the config check and the srun task in the image."""
    from test_slurm import SLURM_OPTS, TINY

    requires(controller_problem)
    env = {
        **os.environ,
        "HPCLAB_DATA": str(tmp_path / "data"),
        "HPCLAB_RESULTS": str(tmp_path / "results"),
        "HPCLAB_CONTAINER": "podman",
        "HPCLAB_IMAGE": image,
        "PYTHONPATH": str(REPO),
    }
    run_cli(
        "prepare_data.py",
        "data=fashion_mnist",
        f"data.mirrors=[{fmnist_mirror}]",
        "data.download=false",
        cwd=tmp_path,
        env={k: v for k, v in env.items() if k not in ("HPCLAB_CONTAINER", "HPCLAB_IMAGE")},
    )
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            *SLURM_OPTS,
            str(REPO / "slurm" / "ae_pretrain.sh"),
            "experiment=ae_latent",
            *TINY,
            "train.max_steps=40",
            "train.eval_every=20",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    log = tmp_path / f"hpclab-ae_pretrain-{job}.out"
    deadline = time.time() + 600
    while squeue_state(job) not in (None, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        assert time.time() < deadline, log.read_text()[-3000:] if log.is_file() else "no log"
        time.sleep(1)
    text = log.read_text()
    assert squeue_state(job) in (None, "COMPLETED"), text[-3000:]
    assert "'podman' 'run' '--rm'" in text and f"'{image}' 'python' '-m' 'hpclab.launch.run_one'" in text
    run_dir = tmp_path / "results" / "ae_latent" / "default"
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["container"] == {"engine": "podman", "image": image}
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 40
