"""Against a real SLURM controller (scripts/local_slurm.sh start): job arrays from the launcher,
the sbatch scripts, preemption by USR2 and by ``scontrol requeue`` with resume, status without
sacct, and a bad override failing the job at once. Skipped when no controller answers.

All jobs use 1 CPU and no GPU; the data is the small Fashion-MNIST-format IDX set staged once
for the module. The jobs inherit HPCLAB_DATA/HPCLAB_RESULTS from the environment of sbatch.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, controller_problem, path_without, requires, run_cli

pytestmark = pytest.mark.slurm  # the tests that run jobs are also marked slow

SLURM_OPTS = ["--gpus-per-node=0", "--cpus-per-task=1", "--mem=2G", "--time=15"]
# preset=smoke's settings spelled out, so the runs keep their sweeps' own group folders
TINY = [
    "train.epochs=null",
    "train.max_steps=200",
    "train.eval_every=100",
    "train.log_every=20",
    "sweep.subset=2",
    "train.eval_batch_size=256",
    "model.channels=[4,8,8]",
    "train.batch_size=16",
    "data.limit=256",
    "analysis=[]",
]
DONE = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, fmnist_mirror: Path) -> dict:
    """A working directory with Fashion-MNIST-format data staged, and the environment of jobs."""
    requires(controller_problem)
    work = tmp_path_factory.mktemp("slurm")
    env = {
        **os.environ,
        "HPCLAB_DATA": str(work / "data"),
        "HPCLAB_RESULTS": str(work / "results"),
        "HPCLAB_PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
    }
    run_cli(
        "prepare_data.py",
        "data=fashion_mnist",
        f"data.mirrors=[{fmnist_mirror}]",
        "data.download=false",
        cwd=work,
        env=env,
    )
    return {"dir": work, "env": env, "results": work / "results"}


# --------------------------------------------------------------------------- helpers


def sbatch(cluster: dict, script: str, *args: str, opts: tuple[str, ...] = ()) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", *SLURM_OPTS, *opts, str(REPO / "slurm" / script), *args],
        cwd=cluster["dir"],
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, f"sbatch failed: {out.stderr}"
    return out.stdout.strip().split(";")[0]


def states(job: str) -> dict[str, str]:
    """Task -> state of a job or array, from squeue (no accounting needed)."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-j", job, "-o", "%i %T"], capture_output=True, text=True, timeout=30
    )
    return dict(line.split() for line in out.stdout.splitlines() if line.strip())


def wait_until(condition: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.is_file() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def wait_done(job: str, count: int = 1, timeout: float = 240, log: Path | None = None) -> dict[str, str]:
    """Wait until the job's ``count`` tasks have all ended; return their final states."""
    wait_until(lambda: len(s := states(job)) >= count and set(s.values()) <= DONE, timeout, f"job {job}", log)
    return states(job)


STATUS_ROW = re.compile(r"(\S+)\s+(.+?)\s{2,}(\S+)\s+(\S+)\s+(-|\S+ step/s|\S+ s/step)\s+(\S+)$")


def status(cluster: dict, *overrides: str) -> dict[str, list[str]]:
    """``jobs/launch.py status``: run name -> [state, job, step, log] (the step without its total)."""
    proc = run_cli("launch.py", "status", *overrides, cwd=cluster["dir"], env=cluster["env"])
    rows = {}
    for line in proc.stdout.splitlines()[1:]:
        m = STATUS_ROW.match(line)
        if m:
            rows[m.group(1)] = [m.group(2).strip(), m.group(3), m.group(4).split("/")[0], m.group(6)]
    return rows


def metric_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# --------------------------------------------------------------------------- the scripts themselves

SCRIPTS = {
    "dcgan.sh": "experiment=dcgan",
    "ddpm.sh": "experiment=ddpm_flowers",
    "ae_pretrain.sh": "experiment=ae_pretrain",
    "resnet_transfer.sh": "sweep=resnet_transfer",
    "pix2pix.sh": "experiment=pix2pix_colourize",
}


def sbatch_header(script: str) -> dict[str, str]:
    lines = (REPO / "slurm" / script).read_text().splitlines()
    return dict((line.split()[1] + "=").split("=")[:2] for line in lines if line.startswith("#SBATCH "))


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_sbatch_script_header_and_command_lines(script, tmp_path):
    """Readable defaults in the header, and the commands the script would run (no SLURM needed)."""
    header = sbatch_header(script)
    for key in ("--time", "--gpus-per-node", "--ntasks-per-node", "--cpus-per-task", "--mem", "--requeue"):
        assert key in header, key
    assert header["--ntasks-per-node"] == header["--gpus-per-node"] == "1"  # one task per GPU
    assert re.fullmatch(r"USR2@\d+", header["--signal"])  # to the tasks (no B:): Python gets it
    assert header["--open-mode"] == "append"  # a requeued job appends to its log
    assert header["--output"] == ("%x-%A_%a.out" if "--array" in header else "%x-%j.out")
    assert header["--job-name"] == f"hpclab-{SCRIPTS[script].split('=')[1]}"  # status finds queued tasks by it
    env = {
        **os.environ,
        "HPCLAB_PRINT_ONLY": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_GPUS_ON_NODE": "2",
        "SLURM_NTASKS": "2",
        "SLURM_NNODES": "1",
        "SLURM_CPUS_PER_TASK": "8",
        "HPCLAB_DATA": str(tmp_path / "data"),
        "HPCLAB_RESULTS": str(tmp_path / "results"),
    }
    image = tmp_path / "hpclab.sif"
    image.write_bytes(b"")
    plain = subprocess.run(
        ["bash", str(REPO / "slurm" / script), "train.epochs=5", "data.classes=[a, b]"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert plain.returncode == 0, plain.stderr
    out = plain.stdout
    assert f"2 task(s), master {socket.gethostname()}:24242," in out  # port from the job id
    assert f"--check '{SCRIPTS[script]}' 'train.epochs=5' 'data.classes=[a, b]'\n" in out
    assert (
        "'srun' '--kill-on-bad-exit=1' '--cpus-per-task=8' 'bash' '-c' "
        "'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec \"$@\"'" in out
    )
    assert "apptainer" not in out and "'-m' 'hpclab.launch.run_one'" in out
    # A choice of experiment or sweep on the command line replaces the script's default.
    other = subprocess.run(
        ["bash", str(REPO / "slurm" / script), "experiment=ae_latent"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    ).stdout
    assert SCRIPTS[script] not in other and "--check 'experiment=ae_latent'" in other
    # With an image: apptainer exec --nv (GPUs allocated), data/results/cache bound at their paths.
    boxed = subprocess.run(
        ["bash", str(REPO / "slurm" / script)],
        env={**env, "HPCLAB_IMAGE": str(image)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    ).stdout
    prefix = f"'apptainer' 'exec' '--nv' '--bind' '{tmp_path}/data' '--bind' '{tmp_path}/results' '--env'"
    assert prefix in boxed and f"'{image}' 'python' '-m' 'hpclab.launch.run_one'" in boxed
    # ... exactly the prefix the launcher's submitit tasks use (hpclab/launch/container.py)
    from hpclab.launch.container import exec_prefix

    paths = {k: tmp_path / p for k, p in (("data", "data"), ("results", "results"), ("cache", "data/cache"))}
    launcher = exec_prefix({"image": str(image), "container": "apptainer", "gpus_per_node": 2}, paths)
    assert " ".join(f"'{arg}'" for arg in launcher) + " 'python'" in boxed
    # ... also with podman (HPCLAB_CONTAINER=podman, an image reference): the same command.
    oci = "localhost/hpclab:0.1.0-abc"
    podman = subprocess.run(
        ["bash", str(REPO / "slurm" / script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "HPCLAB_IMAGE": oci, "HPCLAB_CONTAINER": "podman"},
        cwd=tmp_path,
    )
    assert podman.returncode == 0, podman.stderr
    launcher = exec_prefix({"image": oci, "container": "podman", "gpus_per_node": 2}, paths)
    expected = " ".join(f"'{arg}'".replace("$SLURM_JOB_ID", "4242") for arg in launcher) + " 'python'"
    assert f"check: {expected} '-m' 'hpclab.launch.run_one' --check" in podman.stdout
    assert expected in podman.stdout.split("run: ", 1)[1] and "'--device' 'nvidia.com/gpu=all'" in expected


def test_the_batch_setup_renders_with_the_standard_library_alone(tmp_path):
    """On a cluster where only the image holds the suite, the sbatch scripts render their setup
    with the system's python3: ``python -S`` (no site-packages: no torch, omegaconf, submitit)."""
    image = tmp_path / "hpclab.sif"
    image.write_bytes(b"")
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO),
        "HPCLAB_IMAGE": str(image),
        "HPCLAB_PRINT_ONLY": "1",
        "HPCLAB_RESULTS": str(tmp_path / "results"),
        "HPCLAB_DATA": str(tmp_path / "data"),
        "SLURM_JOB_ID": "7",
    }
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "hpclab.launch.batch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "export HDF5_USE_FILE_LOCKING=FALSE" in proc.stdout and "export MASTER_PORT=$((20000 + " in proc.stdout
    assert f"HPCLAB_PY=(apptainer exec --bind {tmp_path}/data --bind {tmp_path}/results" in proc.stdout
    assert proc.stdout.rstrip().endswith(f"{image} python -m hpclab.launch.run_one)")


def test_the_launcher_arrays_get_the_same_job_setup_as_the_sbatch_scripts():
    """One source: submitit's sbatch script starts with the lines the scripts evaluate."""
    from hpclab.config import compose
    from hpclab.launch.batch import job_lines
    from hpclab.launch.submit import slurm_parameters

    cluster = compose(["experiment=ae_latent", "cluster=slurm", "cluster.nodes=2"]).cluster
    assert slurm_parameters(cluster, "x")["slurm_setup"][: len(job_lines())] == job_lines()


def test_sbatch_scripts_stop_at_once_on_bad_container_settings(tmp_path):
    """One line naming the fix, before any srun: an unknown engine, a missing SIF, an extra bind
    that does not exist, an engine that is not installed; a missing data folder is created, so
    that the suite's own check (inside the image) names the dataset instead of a mount error."""
    image = tmp_path / "hpclab.sif"
    image.write_bytes(b"")
    env = {
        **os.environ,
        "SLURM_JOB_ID": "4242",
        "HPCLAB_DATA": str(tmp_path / "new-data"),
        "HPCLAB_RESULTS": str(tmp_path / "results"),
        "HPCLAB_IMAGE": str(image),
    }
    no_engines = path_without(tmp_path, "apptainer", "singularity", "podman")
    cases = [
        (
            {"HPCLAB_CONTAINER": "docker"},
            "error: HPCLAB_CONTAINER: 'docker' is not one of apptainer, singularity, podman",
        ),
        (
            {"HPCLAB_IMAGE": str(tmp_path / "missing.sif")},
            f"error: HPCLAB_IMAGE: apptainer image {tmp_path}/missing.sif not found (build it on a login node: ",
        ),
        (
            {"HPCLAB_PRINT_ONLY": "1", "HPCLAB_BINDS": f"{tmp_path}/site:/site:ro"},
            f"error: HPCLAB_BINDS: bind source {tmp_path}/site does not exist",
        ),
        ({"PATH": f"{no_engines}"}, "error: HPCLAB_CONTAINER: apptainer not found on PATH on "),
        (
            {"PATH": f"{no_engines}", "HPCLAB_CONTAINER": "podman", "HPCLAB_IMAGE": "localhost/hpclab:x"},
            "error: HPCLAB_CONTAINER: podman not found on PATH on ",
        ),
    ]
    for extra, expected in cases:
        proc = subprocess.run(
            ["/bin/bash", str(REPO / "slurm" / "dcgan.sh")],
            env={**env, **extra},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected), (
            extra,
            proc.stdout,
            proc.stderr,
        )
        assert "srun" not in proc.stdout
    assert (tmp_path / "new-data").is_dir()


def test_array_script_covers_every_run_of_its_sweep():
    from hpclab.launch.sweep import plan

    runs = len(plan(["sweep=resnet_transfer"]).runs)
    assert sbatch_header("resnet_transfer.sh")["--array"].split("%")[0] == f"0-{runs - 1}"


def test_a_damaged_submission_record_is_a_warning_in_status_and_refused_by_a_submission(workdir):
    """status is a view: it warns and shows the rest; a submission would overwrite the only
    record of the launcher's job ids, so it stops with one line naming the file."""
    record = workdir / "results" / "ae_latent" / "submissions.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"latent_dim-2": {"job_id": "12_0"')  # hand-edited and cut off
    proc = run_cli("launch.py", "status", "sweep=ae_latent", cwd=workdir, check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert f"{record} is damaged (not readable JSON" in proc.stdout + proc.stderr and "latent_dim-2" in proc.stdout
    from hpclab.launch.sweep import plan
    from hpclab.rundir import RunRecordError, read_submissions

    with pytest.raises(RunRecordError, match="it holds the job ids of earlier submissions"):
        read_submissions(plan(["sweep=ae_latent"]).group_dir)
    assert record.read_text() == '{"latent_dim-2": {"job_id": "12_0"'


# --------------------------------------------------------------------------- (1) submitit array


@pytest.mark.slow
def test_launcher_submits_one_array_whose_tasks_all_complete(cluster):
    args = ["sweep=ae_latent", "sweep.name=launcher_sweep", *TINY, "train.max_steps=60", "train.eval_every=30"]
    proc = run_cli(
        "launch.py",
        *args,
        "cluster=slurm",
        "cluster.gpus_per_node=0",
        "cluster.cpus_per_task=1",
        "cluster.mem_gb=null",
        "cluster.time_min=15",
        cwd=cluster["dir"],
        env=cluster["env"],
    )
    match = re.search(r"submitted array job (\d+) \((\d+) runs\)", proc.stdout)
    assert match, proc.stdout
    job, runs = match.group(1), int(match.group(2))
    assert runs == 2  # preset=smoke keeps the first and last latent size
    final = wait_done(job, count=runs)
    assert sorted(final) == [f"{job}_0", f"{job}_1"] and set(final.values()) == {"COMPLETED"}, final

    group = cluster["results"] / "launcher_sweep"
    rows = status(cluster, *args)
    assert set(rows) == {"latent_dim-2", "latent_dim-256"}
    for name, (state, task, step, log) in rows.items():
        assert state == "COMPLETED" and task.startswith(f"{job}_") and step == "60", rows
        assert Path(log).is_file() and "completed successfully" in Path(log).read_text()
        assert summary(group / name)["steps"] == 60
        record = json.loads((group / name / "slurm.json").read_text())
        assert record["job"] == task and record["starts"][0]["submitit"] is True

    report = run_cli("report.py", str(group), cwd=cluster["dir"], env=cluster["env"])
    table = (group / "summary.md").read_text()
    assert "summary.md" in report.stdout
    assert "latent_dim-2 " in table and "latent_dim-256 " in table and "2 finished run(s)" in table


# --------------------------------------------------------------------------- (2) sbatch scripts


@pytest.mark.slow
def test_sbatch_array_script_runs_each_sweep_run_and_status_follows_it(cluster):
    args = ["sweep=ae_latent", "sweep.name=sbatch_sweep", *TINY, "train.max_steps=40", "train.eval_every=20"]
    job = sbatch(cluster, "resnet_transfer.sh", *args, opts=("--array=0-1", "--hold", "--job-name=hpclab-sbatch_sweep"))
    # Held: nothing has started, so status finds the tasks by their job name, hpclab-<sweep>.
    assert states(job) == {f"{job}_0": "PENDING", f"{job}_1": "PENDING"}
    rows = status(cluster, *args)
    assert {name: row[:2] for name, row in rows.items()} == {
        "latent_dim-2": ["PENDING", f"{job}_0"],
        "latent_dim-256": ["PENDING", f"{job}_1"],
    }, rows
    subprocess.run(["scontrol", "release", job], check=True, timeout=30)
    logs = [cluster["dir"] / f"hpclab-sbatch_sweep-{job}_{i}.out" for i in (0, 1)]
    final = wait_done(job, count=2, log=logs[0])
    assert set(final.values()) == {"COMPLETED"}, final

    group = cluster["results"] / "sbatch_sweep"
    rows = status(cluster, *args)
    for i, name in enumerate(["latent_dim-2", "latent_dim-256"]):
        text = logs[i].read_text()
        assert f"run {i + 1}/2 of 'sbatch_sweep': {name}" in text  # array task i ran run i
        assert summary(group / name)["steps"] == 40
        assert rows[name] == ["COMPLETED", f"{job}_{i}", "40", str(logs[i])]
    assert "2 finished run(s)" in (group / "summary.md").read_text()  # refreshed by the tasks


@pytest.mark.slow
def test_sbatch_script_runs_one_task_per_process_with_ranks_from_slurm(cluster):
    """Two tasks (as on two GPUs): ranks, world size and the rendezvous come from SLURM."""
    log_of = lambda job: cluster["dir"] / f"hpclab-ae_pretrain-{job}.out"  # noqa: E731
    job = sbatch(
        cluster,
        "ae_pretrain.sh",
        "experiment=ae_latent",
        *TINY,
        "model.latent_dim=4",
        "train.max_steps=40",
        "train.eval_every=20",
        "run_name=two_tasks",
        opts=("--ntasks-per-node=2",),
    )
    final = wait_done(job, log=log_of(job))
    text = log_of(job).read_text()
    assert final == {job: "COMPLETED"}, text[-3000:]
    assert "2 task(s), master" in text and f":{20000 + int(job) % 20000}," in text
    run_dir = cluster["results"] / "ae_latent" / "two_tasks"
    assert "accelerate: 2 process(es)" in (run_dir / "run.log").read_text()
    assert summary(run_dir)["steps"] == 40


# --------------------------------------------------------------------------- (3) preemption

PREEMPT_RUN = [
    "experiment=ae_latent",
    *TINY,
    "model.latent_dim=4",
    "train.max_steps=300",
    "train.eval_every=100",
    "train.log_every=20",
]
# run -> (how it is submitted, how it is interrupted once it has trained 40 steps)
INTERRUPTIONS = {
    "usr2": ("sbatch", "usr2"),  # what SLURM sends before the time limit (--signal=USR2@...)
    "requeue": ("sbatch", "requeue"),  # scontrol requeue (also what preemption by requeue does)
    "run_name-sub_usr2": ("submitit", "usr2"),  # launcher's arrays: submitit's checkpoint() protocol
    "run_name-sub_requeue": ("submitit", "requeue"),
}


@pytest.fixture(scope="module")
def interrupted(cluster) -> dict:
    """Identical runs (same seed, 1 CPU): one left alone, the others interrupted mid-training by
    USR2 or by ``scontrol requeue``, as sbatch-script tasks and as launcher (submitit) tasks."""
    jobs = {
        name: sbatch(cluster, "ae_pretrain.sh", *PREEMPT_RUN, f"run_name={name}")
        for name in ("straight", "usr2", "requeue")
    }
    logs = {name: cluster["dir"] / f"hpclab-ae_pretrain-{job}.out" for name, job in jobs.items()}
    proc = run_cli(
        "launch.py",
        *PREEMPT_RUN,
        "run_name=sub_usr2,sub_requeue",
        "cluster=slurm",
        "cluster.gpus_per_node=0",
        "cluster.cpus_per_task=1",
        "cluster.mem_gb=null",
        "cluster.time_min=15",
        cwd=cluster["dir"],
        env=cluster["env"],
    )
    assert "submitted array job" in proc.stdout, proc.stdout
    record = json.loads((cluster["results"] / "ae_latent" / "submissions.json").read_text())
    for name in ("run_name-sub_usr2", "run_name-sub_requeue"):
        jobs[name], logs[name] = record[name]["job_id"], Path(record[name]["log"])
    run_dirs = {name: cluster["results"] / "ae_latent" / name for name in jobs}

    def progressed(name: str) -> int:
        if not (run_dirs[name] / "metrics.jsonl").is_file():
            return 0
        return max((r["step"] for r in metric_lines(run_dirs[name]) if r["split"] == "fit"), default=0)

    # Interrupt each run as soon as it has trained 40 steps (never blocking: the others go on).
    seen: dict[str, int] = {}
    held = None  # the sbatch job requeued with scontrol, held while it pends to check status
    deadline = time.time() + 300
    while len(seen) < len(INTERRUPTIONS) or held is None:
        assert time.time() < deadline, f"runs did not reach step 40: {seen}"
        for name, (_, how) in INTERRUPTIONS.items():
            if name not in seen and progressed(name) >= 40:
                seen[name] = progressed(name)
                command = ["scancel", "--signal=USR2"] if how == "usr2" else ["scontrol", "requeue"]
                subprocess.run([*command, jobs[name]], check=True, timeout=30)
        if held is None and "requeue" in seen and states(jobs["requeue"]).get(jobs["requeue"]) == "PENDING":
            subprocess.run(["scontrol", "hold", jobs["requeue"]], check=True, timeout=30)
            held = jobs["requeue"]
        time.sleep(0.2)
    requeued_status = status(cluster, *PREEMPT_RUN, "run_name=requeue")["requeue"]
    subprocess.run(["scontrol", "release", held], check=True, timeout=30)
    final = {name: wait_done(job, log=logs[name])[job] for name, job in jobs.items()}
    return {
        "jobs": jobs,
        "run_dirs": run_dirs,
        "logs": logs,
        "seen": seen,
        "final": final,
        "requeued_status": requeued_status,
        "status": status(cluster, *PREEMPT_RUN, "run_name=usr2")["usr2"],
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(INTERRUPTIONS))
def test_interrupted_run_checkpoints_requeues_and_ends_like_an_uninterrupted_one(interrupted, name):
    run_dir, log = interrupted["run_dirs"][name], interrupted["logs"][name].read_text()
    submitter, how = INTERRUPTIONS[name]
    assert interrupted["final"][name] == "COMPLETED", log[-3000:]
    assert interrupted["final"]["straight"] == "COMPLETED"
    assert ("received SIGUSR2" if how == "usr2" else "received SIGTERM") in log
    # The step counter did not restart: it resumed from the checkpoint written at the signal
    # (the periodic ones are at steps 100 and 200), at or after the step seen before it.
    resumed = re.findall(r"resumed from \S+ at step (\d+)", (run_dir / "run.log").read_text())
    assert len(resumed) == 1 and int(resumed[0]) >= interrupted["seen"][name] >= 40, resumed
    fit_steps = [r["step"] for r in metric_lines(run_dir) if r["split"] == "fit"]
    assert fit_steps == sorted(set(fit_steps)) and fit_steps[-1] == 300
    # The same SLURM job came back (requeue, not a new submission), and its task records it.
    starts = json.loads((run_dir / "slurm.json").read_text())["starts"]
    assert [s["restart"] for s in starts] == [0, 1] and {s["job"] for s in starts} == {interrupted["jobs"][name]}
    assert {s["submitit"] for s in starts} == {submitter == "submitit"}
    if submitter == "submitit" and how == "usr2":
        assert "Calling checkpoint method" in log and "Requeued job" in log  # submitit's handler ran
    straight = summary(interrupted["run_dirs"]["straight"])
    assert summary(run_dir)["metrics"] == straight["metrics"]  # same seed, same CPU: identical
    assert summary(run_dir)["steps"] == straight["steps"] == 300


@pytest.mark.slow
def test_status_shows_a_requeued_task_and_then_its_completion(interrupted):
    state, job, step, _ = interrupted["requeued_status"]
    assert state == "REQUEUED" and job == interrupted["jobs"]["requeue"] and int(step) >= 40
    state, job, step, log = interrupted["status"]
    assert [state, job, step, log] == [
        "COMPLETED",
        interrupted["jobs"]["usr2"],
        "300",
        str(interrupted["logs"]["usr2"]),
    ]


# --------------------------------------------------------------------------- (4) bad override


@pytest.mark.slow
def test_bad_override_fails_the_job_at_once_with_one_line_and_writes_nothing(cluster):
    job = sbatch(cluster, "dcgan.sh", "train.epochz=5")
    log = cluster["dir"] / f"hpclab-dcgan-{job}.out"
    assert wait_done(job, log=log) == {job: "FAILED"}
    text = log.read_text()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: config key 'train.epochz': Key 'epochz' not in 'TrainConfig'; did you mean train.epochs?"
    ], text
    assert "Traceback" not in text and "srun" not in text  # failed in the batch shell, before any task
    assert not (cluster["results"] / "dcgan").exists()
    assert status(cluster, "experiment=dcgan")["default"][:2] == ["FAILED", job]


# --------------------------------------------------------------------------- (4) sweep scale


@pytest.mark.slow
def test_sweep_scale_quick_mode_and_resubmission_queues_only_unfinished_runs(tmp_path):
    """benchmarks/sweep_scale.py at 6 runs, 2 of them trained locally first, the other 4 split
    over 2 arrays: only the 4 queued, the limit held over both arrays, status counts add up,
    the report has one row per finished run, resubmitting the same sweep after some finished
    queues exactly the others, and with all 6 finished the table equals their summaries."""
    requires(controller_problem)
    sys.path.insert(0, str(REPO / "benchmarks"))
    import sweep_scale

    assert (
        sweep_scale.main(
            [
                "--runs",
                "6",
                "--execute",
                "2",
                "--max-array-size",
                "2",
                "--finished-locally",
                "2",
                "--finish-all",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    row = json.loads((tmp_path / "sweep_scale.json").read_text())
    assert len(row["arrays"]) == 2 and row["queued_tasks"] == 4, row
    assert 1 <= row["max_running"] <= row["array_parallelism"], row
    after = row["status_after"]
    assert sum(after.values()) == 6 and after.get("COMPLETED") == row["finished"] >= 4, row
    assert set(after) <= {"COMPLETED", "CANCELLED"}, row
    assert row["report_rows"] == row["finished"], row
    assert row["resubmitted_tasks"] == 6 - row["finished"], row
    assert row["all_finished"] == row["report_all_rows"] == row["report_all_equal"] == 6, row
    assert row["status_all"] == {"COMPLETED": 6}, row
    assert "| report.py on 6 finished runs |" in (tmp_path / "sweep_scale.md").read_text()


@pytest.mark.slow
def test_a_sweep_larger_than_max_array_size_is_split_to_fit_the_cluster(tmp_path):
    """cluster.max_array_size above the controller's MaxArraySize would have sbatch refuse the
    whole array; the launcher caps it at MaxArraySize - 1 (read from scontrol) and splits. The
    tasks are submitted held (nothing runs) and cancelled."""
    from hpclab.launch.slurm import max_array_tasks

    requires(controller_problem)
    limit = max_array_tasks()
    assert limit is not None
    if limit > 1000:
        pytest.skip(f"MaxArraySize {limit + 1}: too many runs for a test (scripts/local_slurm.sh sets 1001)")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import sweep_scale

    env = {
        **os.environ,
        "HPCLAB_DATA": str(tmp_path / "data"),
        "HPCLAB_RESULTS": str(tmp_path / "results"),
        "HPCLAB_WORK": str(tmp_path),
    }
    run_cli("prepare_data.py", "data=digits", cwd=tmp_path, env=env)
    runs = limit + 1
    sweep = [*sweep_scale.TINY, "sweep.name=too_big", "seed=" + ",".join(str(i) for i in range(runs))]
    proc = run_cli(
        "launch.py",
        *sweep,
        "cluster=slurm",
        "cluster.gpus_per_node=0",
        "cluster.cpus_per_task=1",
        "cluster.mem_gb=null",
        f"cluster.max_array_size={limit + 500}",
        "+cluster.extra.hold=true",
        cwd=tmp_path,
        env=env,
    )
    match = re.search(r"submitted array job ([\d, ]+) \((\d+) runs\)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    ids = [j.strip() for j in match.group(1).split(",")]
    try:
        assert int(match.group(2)) == runs and len(ids) == 2, proc.stdout
        assert f"above this cluster's MaxArraySize - 1 = {limit}" in proc.stderr
        counts = [sum(sweep_scale.squeue_states([j]).values()) for j in ids]
        assert counts == [limit, 1], counts
    finally:
        subprocess.run(["scancel", *ids], check=False, timeout=60)


def test_more_nodes_than_the_partition_has_is_refused_in_one_line_and_leaves_nothing(cluster):
    results = cluster["results"] / "too_many_nodes"
    nodes = (
        int(subprocess.run(["sinfo", "-h", "-o", "%D"], capture_output=True, text=True, timeout=30).stdout.split()[0])
        + 1
    )
    proc = run_cli(
        "launch.py",
        "sweep=ae_latent",
        "sweep.name=too_many_nodes",
        *TINY,
        "cluster=slurm",
        "cluster.gpus_per_node=0",
        "cluster.mem_gb=null",
        f"cluster.nodes={nodes}",
        cwd=cluster["dir"],
        env=cluster["env"],
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()  # one line for every misfit (before: sbatch's, one at a time)
    assert line.startswith("error: the job does not fit partition '") and f"cluster.nodes={nodes} (" in line, line
    assert f"These fit: cluster.nodes={nodes - 1} " in line, line
    assert not results.exists()  # nothing was written or submitted


# ---------------------------------------------- (4) arrays share one limit (the layout itself: test_arrays.py)


def test_dry_run_shows_the_arrays_and_how_they_share_the_limit(workdir):
    proc = run_cli(
        "launch.py",
        "sweep=ae_latent",
        "preset=smoke",
        "cluster=slurm",
        "cluster.max_array_size=1",
        "cluster.array_parallelism=1",
        "dry_run=true",
        cwd=workdir,
    )
    assert "# 2 task(s) in 2 array(s), at most 1 at once: #1 1%1, #2 1%1 after #1" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("cluster.array_parallelism=0", "'cluster.array_parallelism': 0 must be >= 1"),
        ("cluster.array_parallelism=-2", "'cluster.array_parallelism': -2 must be >= 1"),
        ("cluster.max_array_size=0", "'cluster.max_array_size': 0 must be >= 1"),
        (
            "cluster.array_parallelism=many",
            "'cluster.array_parallelism': Value 'many' of type 'str' could not be converted to Integer",
        ),
        (
            "cluster.time_min=10,20",
            "cluster.time_min differs between the runs (10, 20), but one submission has one "
            "cluster setting: give cluster.time_min one value, not a sweep axis",
        ),
        ("cluster.array_parallelism=1,2", "cluster.array_parallelism differs between the runs (1, 2)"),
        ("cluster=local,slurm", "cluster differs between the runs (local, slurm)"),
    ],
)
def test_bad_array_settings_are_refused_in_one_line_before_anything_is_submitted(workdir, override, message):
    """Nothing reaches sbatch (so no controller is needed): a limit below 1, and a sweep axis over
    cluster.* (each submission has one cluster setting; the axis would only duplicate runs)."""
    for extra in (["dry_run=true"], []):
        proc = run_cli(
            "launch.py",
            "sweep=ae_latent",
            "preset=smoke",
            "cluster=slurm",
            "cluster.gpus_per_node=0",
            override,
            *extra,
            cwd=workdir,
            check=False,
        )
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert not (workdir / "results").exists()


def running_tasks(ids: list[str]) -> set[str]:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "RUNNING", "-j", ",".join(ids), "-o", "%i"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return set(out.stdout.split())


def launched_ids(proc: subprocess.CompletedProcess) -> list[str]:
    match = re.search(r"submitted array job ([\d, ]+) \(", proc.stdout)
    assert match, proc.stdout + proc.stderr
    return [j.strip() for j in match.group(1).split(",")]


@pytest.mark.slow
def test_array_parallelism_holds_over_all_arrays_of_a_sweep(cluster):
    """A sweep split into several arrays runs at most cluster.array_parallelism tasks at once
    in all (squeue sampled while it runs), and every run finishes. The limit is below the
    cluster's CPUs, so that running more would have been possible."""
    cpus = int(
        subprocess.run(["sinfo", "-h", "-o", "%C"], capture_output=True, text=True, timeout=30)
        .stdout.split()[0]
        .split("/")[3]
    )
    if cpus < 2:
        pytest.skip(f"{cpus} CPU: a limit below the CPUs cannot be tested")
    limit = min(cpus - 1, 3)
    size, runs = (3, 7) if limit == 1 else (2, 3 * limit - 1)
    args = [
        "sweep=ae_latent",
        "sweep.name=shared_limit",
        *TINY,
        "sweep.subset=0",
        "model.latent_dim=2",
        "train.max_steps=8",
        "train.eval_every=8",
        "seed=" + ",".join(str(i) for i in range(runs)),
    ]
    proc = run_cli(
        "launch.py",
        *args,
        "cluster=slurm",
        "cluster.gpus_per_node=0",
        "cluster.cpus_per_task=1",
        "cluster.mem_gb=null",
        "cluster.time_min=15",
        f"cluster.array_parallelism={limit}",
        f"cluster.max_array_size={size}",
        cwd=cluster["dir"],
        env=cluster["env"],
    )
    ids = launched_ids(proc)
    assert len(ids) == -(-runs // size), proc.stdout
    seen: list[set[str]] = []
    try:
        deadline = time.time() + 600
        while any(set(states(job).values()) - DONE for job in ids):
            assert time.time() < deadline, f"not done after 600 s: {[states(job) for job in ids]}"
            seen.append(running_tasks(ids))
            time.sleep(0.2)
    finally:
        subprocess.run(["scancel", *ids], check=False, timeout=30)
    most = max(len(s) for s in seen)
    print(f"{len(ids)} arrays, at most {most} of {runs} tasks running at once in {len(seen)} samples; limit {limit}")
    assert 1 <= most <= limit, [s for s in seen if len(s) > limit][:3]
    final = {task: state for job in ids for task, state in states(job).items()}
    assert len(final) == runs and set(final.values()) == {"COMPLETED"}, final
    group = cluster["results"] / "shared_limit"
    assert sum(summary(group / f"latent_dim-2__seed-{i}")["steps"] == 8 for i in range(runs)) == runs


def test_a_resubmission_leaves_out_runs_still_queued(cluster):
    """Submitting a sweep again while its tasks are still queued submits only the runs that are
    neither queued nor complete (they would run twice, and past the sweep's limit)."""
    args = [
        "sweep=ae_latent",
        "sweep.name=queued_twice",
        *TINY,
        "cluster=slurm",
        "cluster.gpus_per_node=0",
        "cluster.cpus_per_task=1",
        "cluster.mem_gb=null",
        "+cluster.extra.hold=true",
    ]
    first = launched_ids(run_cli("launch.py", *args, "model.latent_dim=2", cwd=cluster["dir"], env=cluster["env"]))
    ids = list(first)
    try:
        again = run_cli("launch.py", *args, cwd=cluster["dir"], env=cluster["env"])  # latent 2 and 256
        assert "1 run(s) are still queued or running under earlier submissions" in again.stderr, again.stderr
        second = launched_ids(again)
        ids += second
        assert [sorted(states(job)) for job in second] == [[second[0]]]  # one run: latent 256
        record = json.loads((cluster["results"] / "queued_twice" / "submissions.json").read_text())
        assert {name: r["job_id"] for name, r in record.items()} == {
            "latent_dim-2": f"{first[0]}",
            "latent_dim-256": second[0],
        }
        third = run_cli("launch.py", *args, cwd=cluster["dir"], env=cluster["env"])
        assert "submitted" not in third.stdout and "2 run(s) are still queued" in third.stderr, third.stdout
    finally:
        subprocess.run(["scancel", *ids], check=False, timeout=30)


def test_the_same_sweep_from_another_results_folder_is_its_own(cluster, tmp_path):
    """Jobs are matched by the results folder they write to (a tag in the job comment), not by
    name alone: the same sweep submitted with another HPCLAB_RESULTS while the first array is
    queued is submitted, and each folder's status shows its own jobs."""
    args = [
        "sweep=ae_latent",
        "sweep.name=two_folders",
        *TINY,
        "cluster=slurm",
        "cluster.gpus_per_node=0",
        "cluster.cpus_per_task=1",
        "cluster.mem_gb=null",
        "+cluster.extra.hold=true",
    ]
    other = {**cluster["env"], "HPCLAB_RESULTS": str(tmp_path / "other results")}
    ids = launched_ids(run_cli("launch.py", *args, cwd=cluster["dir"], env=cluster["env"]))
    try:
        again = run_cli("launch.py", *args, cwd=cluster["dir"], env=other)
        assert "still queued" not in again.stderr, again.stderr
        second = launched_ids(again)
        ids += second
        assert second and set(second).isdisjoint(ids[: len(ids) - len(second)])
        mine = run_cli("launch.py", "status", *args, cwd=cluster["dir"], env=cluster["env"]).stdout
        theirs = run_cli("launch.py", "status", *args, cwd=cluster["dir"], env=other).stdout
        shows = lambda text, job: re.search(rf"\s{job}_\d+\s", text) is not None  # noqa: E731
        first = ids[: len(ids) - len(second)]
        assert all(shows(mine, job) and not shows(theirs, job) for job in first), (mine, theirs)
        assert all(shows(theirs, job) and not shows(mine, job) for job in second), (mine, theirs)
    finally:
        subprocess.run(["scancel", *ids], check=False, timeout=30)


def test_a_sweep_the_controller_cannot_hold_is_refused_before_anything_is_queued(cluster, monkeypatch):
    """Past MaxJobCount sbatch neither queues nor refuses: it retries for two minutes, then
    fails in the middle of a split sweep. The launcher counts first (every array task is a job)."""
    from hpclab.config import ConfigError
    from hpclab.launch import submit
    from hpclab.launch.status import squeue_jobs
    from hpclab.launch.sweep import plan

    held = len(squeue_jobs(everyone=True))
    monkeypatch.setattr(submit, "max_job_count", lambda: held + 2)  # room for one more job only
    for key in ("HPCLAB_DATA", "HPCLAB_RESULTS"):
        monkeypatch.setenv(key, cluster["env"][key])
    sweep = plan(
        ["sweep=ae_latent", "sweep.name=too_many_jobs", *TINY, "cluster=slurm_cpu", "+cluster.extra.hold=true"]
    )
    with pytest.raises(ConfigError, match=rf"at most MaxJobCount={held + 2} jobs .* has {held} now: 2 more do not fit"):
        submit.submit_slurm(sweep)
    assert not (cluster["results"] / "too_many_jobs").exists()
    assert not [j for j, info in squeue_jobs().items() if info["name"] == "hpclab-too_many_jobs"]


# --------------------------------------------------------------------------- (5) a newcomer's first hour


def default_partition():
    """The default partition as the launcher's fit check sees it (sinfo)."""
    from hpclab.launch.fit import partitions

    return next(p for p in partitions().values() if p.default)


def test_a_request_that_does_not_fit_is_refused_once_naming_every_misfit_and_what_fits(cluster):
    """GPUs, CPUs and memory beyond the nodes: one line naming all three with the overrides that
    fit (sbatch refused them one at a time, a round trip each); those overrides, and the
    CPU-only profile, are then accepted. A dry run says the same as a warning."""
    part = default_partition()
    too_big = [
        f"cluster.gpus_per_node={part.gpus + 1}",
        f"cluster.cpus_per_task={part.cpus + 1}",
        f"cluster.mem_gb={part.mem_mb // 1024 + 2}",
    ]
    args = [*TINY, "cluster=slurm", *too_big, "+cluster.extra.hold=true"]

    def run(*more: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cli("launch.py", "sweep=ae_latent", *more, cwd=cluster["dir"], env=cluster["env"], check=check)

    proc = run("sweep.name=misfit", *args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: the job does not fit partition '{part.name}' ("), line
    assert all(f"{setting} (" in line for setting in too_big), line
    fits = re.search(r"These fit: (.+?)(, or cluster=slurm_cpu)? \(set them once", line)
    assert [f.split("=")[0] for f in fits[1].split()] == [
        "cluster.gpus_per_node",
        "cluster.cpus_per_task",
        "cluster.mem_gb",
    ], line
    assert not (cluster["results"] / "misfit").exists()
    assert "# warning: the job does not fit" in run("sweep.name=misfit", *args, "dry_run=true").stdout
    ids: list[str] = []
    try:
        ids += launched_ids(run("sweep.name=misfit", *args, *fits[1].split()))
        if part.gpus == 0:
            assert fits[2], line  # the CPU-only profile fits a cluster without GPUs
            ids += launched_ids(run("sweep.name=misfit_cpu", *TINY, "cluster=slurm_cpu", "+cluster.extra.hold=true"))
    finally:
        subprocess.run(["scancel", *ids], check=False, timeout=30)


@pytest.mark.slow
def test_the_dcgan_scripts_small_partition_recipe_stages_its_data_and_its_log_ends_with_the_results(
    tmp_path, fmnist_mirror
):
    """The CPU recipe of slurm/dcgan.sh's header, as written (shorter), on a fresh data folder:
    the job stages Fashion-MNIST itself (from Debian's files, else data.mirrors), its log holds no
    other library's INFO lines (TensorBoard's event reader runs in gan_epoch_grids) and ends
    saying where the results are."""
    import shlex

    problem = controller_problem()
    if problem:
        pytest.skip(problem)
    header = (REPO / "slurm" / "dcgan.sh").read_text()
    args = shlex.split(re.search(r"^#   (sbatch --gpus-per-node=0 .*slurm/dcgan\.sh .*)$", header, re.M)[1])
    args[args.index("slurm/dcgan.sh")] = str(REPO / "slurm" / "dcgan.sh")
    args += ["train.max_steps=40", "train.eval_every=20"]
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        args.append(f"data.mirrors=[{fmnist_mirror}]")
    env = {
        **os.environ,
        "HPCLAB_DATA": str(tmp_path / "data"),
        "HPCLAB_RESULTS": str(tmp_path / "results"),
        "HPCLAB_PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
    }
    out = subprocess.run(
        [args[0], "--parsable", *args[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    log = tmp_path / f"hpclab-dcgan-{job}.out"
    final = wait_done(job, timeout=900, log=log)
    text = log.read_text()
    assert final == {job: "COMPLETED"}, text[-3000:]
    run_dir = tmp_path / "results" / "dcgan_fmnist-smoke" / "default"  # preset=smoke keeps its own group
    assert text.splitlines()[-1] == f"results: {run_dir}/", text[-2000:]
    assert (tmp_path / "data" / "fashion_mnist_32px.h5").is_file() and " INFO wrote " in text
    assert list((run_dir / "figures" / "epochs").glob("*.png"))  # the grids read back from TensorBoard
    assert "No path found" not in text and "tensorboard" not in text.lower(), text[-3000:]


def metric_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its timing column."""
    return [{k: v for k, v in row.items() if k != "images_per_s"} for row in metric_lines(run_dir)]


@pytest.mark.slow
def test_local_and_slurm_runs_compute_with_the_same_threads_and_give_the_same_numbers(cluster):
    """A tiny digits run here (torch would take every core), as an sbatch task with 2 CPUs and
    as a launcher task with 1: cluster.threads (1) everywhere, recorded in environment.json, and
    every logged value equal (before, local 2 threads vs SLURM's cpus-per-task differed)."""
    env = {k: v for k, v in cluster["env"].items() if k != "OMP_NUM_THREADS"}
    run_cli("prepare_data.py", "data=digits", cwd=cluster["dir"], env=env)
    run = [
        "experiment=ae_latent",
        "data=digits",
        "model.latent_dim=8",
        "model.channels=[8,16]",
        "train.epochs=null",
        "train.batch_size=64",
        "train.max_steps=40",
        "train.eval_every=20",
        "train.log_every=10",
        "analysis=[pca_baseline]",
        "sweep.name=threads",
    ]
    run_cli("launch.py", *run, "run_name=local", cwd=cluster["dir"], env=env)
    sbatch_job = sbatch(cluster, "ae_pretrain.sh", *run, "run_name=sbatch", opts=("--cpus-per-task=2",))
    (array,) = launched_ids(
        run_cli(
            "launch.py",
            *run,
            "run_name=submitit",
            "cluster=slurm_cpu",
            "cluster.time_min=15",
            cwd=cluster["dir"],
            env=env,
        )
    )
    assert wait_done(sbatch_job) == {sbatch_job: "COMPLETED"}
    assert set(wait_done(array).values()) == {"COMPLETED"}
    group = cluster["results"] / "threads"
    reference = metric_rows(group / "local")
    assert len(reference) > 5
    for name, cpus in (("local", None), ("sbatch", "2"), ("submitit", "1")):
        threads = json.loads((group / name / "environment.json").read_text())["threads"]
        assert threads["torch"] == 1 and threads["env"]["OMP_NUM_THREADS"] == "1", (name, threads)
        assert set(threads.get("libraries", {}).values()) <= {1} and threads["env"]["SLURM_CPUS_PER_TASK"] == cpus
        assert metric_rows(group / name) == reference, name
        assert summary(group / name)["analyses"] == summary(group / "local")["analyses"], name


@pytest.mark.slow
def test_the_slurm_walk_through_runs_as_written(cluster):
    """docs/slurm.md "A first submission", its block, command by command, with the one
    documented change on a cluster without GPUs (cluster=slurm_cpu); then every run completed,
    status shows step/total, and the report is of the folder the submission named."""
    import shlex

    text = (REPO / "docs" / "slurm.md").read_text()
    section = text[text.index("\n## A first submission\n") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    commands = [shlex.split(line.split("  #")[0]) for line in block.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["python", "jobs/launch.py"]] * 3 + [["python", "jobs/report.py"]], commands
    no_gpus = default_partition().gpus == 0
    submitted = None
    for command in commands:
        args = [("cluster=slurm_cpu" if no_gpus and a == "cluster=slurm" else a) for a in command[2:]]
        proc = run_cli(Path(command[1]).name, *args, cwd=cluster["dir"], env=cluster["env"])
        if "submitted array job" in proc.stdout:
            submitted = re.search(r"results: (\S+)/;", proc.stdout)[1]
            for job in launched_ids(proc):
                assert set(wait_done(job, count=2, timeout=900).values()) == {"COMPLETED"}
        elif command[1] == "jobs/launch.py" and args[0] == "status":
            rows = [line.split() for line in proc.stdout.splitlines()[1:]]
            assert rows and all(row[1] == "COMPLETED" and row[3] == "200/200" for row in rows), proc.stdout
        elif command[1] == "jobs/report.py":
            assert Path(cluster["dir"], args[0]).resolve() == Path(submitted).resolve()
            assert (Path(submitted) / "summary.png").is_file()
    assert submitted, "the walk-through submits the sweep"
