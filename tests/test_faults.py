"""Fault injection: kills at random steps, damaged files of every kind a run reads, concurrent
launches, read-only and full file systems, stop signals, hostile results folders.

Each case runs the real CLI on real data (scikit-learn's digits) and checks the guarantee the
"What survives what" table of docs/runs.md states: the run ends with exactly the metrics of an
uninterrupted run, or stops before any work with one line and exit code 2 (3 for a stop
signal), and nothing written before is lost or half-written. ``pytest -m fault`` runs this
module alone; the kill steps come from HPCLAB_FAULT_SEED (default 0), so another seed tries
other steps.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import DIGITS_RUN, REPO, run_cli

from hpclab.rundir import step_checkpoints

pytestmark = [pytest.mark.fault, pytest.mark.slow]  # minutes: out of the fast set

RUN = [
    *DIGITS_RUN,
    "train.max_steps=80",
    "train.checkpoint_every=25",
    "train.eval_every=20",
    "train.log_every=5",
    "train.keep_checkpoints=5",
]
SEED = int(os.environ.get("HPCLAB_FAULT_SEED", "0"))


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits staged once for the module, and one uninterrupted reference run."""
    home = tmp_path_factory.mktemp("faults")
    env = {"HPCLAB_DATA": str(home / "data"), "HPCLAB_RESULTS": str(home / "reference")}
    run_cli("prepare_data.py", "data=digits", cwd=home, env=env)
    run_cli("launch.py", *RUN, cwd=home, env=env)
    return home


@pytest.fixture
def results(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh results folder for this test; the module's staged data."""
    monkeypatch.setenv("HPCLAB_DATA", str(home / "data"))
    monkeypatch.setenv("HPCLAB_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


def launch(*args: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("launch.py", *args, cwd=cwd, check=check, env=env)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error: ...`` line a failed command printed (and no traceback)."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def run_dir(results: Path, name: str = "default") -> Path:
    return results / "ae_latent" / name


def records(folder: Path) -> list[dict]:
    """metrics.jsonl without the timing column (the only one that may differ between runs)."""
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


def assert_same_as_reference(home: Path, folder: Path) -> None:
    reference = run_dir(home / "reference")
    assert (
        json.loads((folder / "summary.json").read_text())["metrics"]
        == json.loads((reference / "summary.json").read_text())["metrics"]
    )
    assert records(folder) == records(reference)


def start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "launch.py"), *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(proc: subprocess.Popen, folder: Path, step: int, timeout: float = 180) -> None:
    """Until the run has logged ``step`` (or more)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        path = folder / "metrics.jsonl"
        if path.is_file():
            steps = [json.loads(x)["step"] for x in path.read_text().splitlines() if x.endswith("}")]
            if steps and max(steps) >= step:
                return
        time.sleep(0.01)
    raise AssertionError(f"the run did not reach step {step} (exit {proc.poll()})")


def kill_at(step: int, cwd: Path, folder: Path, *extra: str) -> None:
    proc = start(*RUN, *extra, cwd=cwd)
    try:
        wait_for_step(proc, folder, step)
    finally:
        proc.kill()
        proc.communicate()


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A small tmpfs of our own (root only), unmounted afterwards."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


# --------------------------------------------------------------------------- kills


def test_kills_at_random_steps_end_with_the_uninterrupted_metrics(home, results):
    folder = run_dir(results)
    for step in sorted(random.Random(SEED).sample(range(1, 80), 3)):
        kill_at(step, home, folder)
    launch(*RUN, cwd=home)
    assert_same_as_reference(home, folder)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["attempts"] == 4  # every start counted, and its time
    attempts = json.loads((folder / "attempts.json").read_text())
    assert len(attempts) == 4 and all(a["wall_time_s"] >= 0 for a in attempts)
    assert summary["wall_time_s"] == pytest.approx(sum(a["wall_time_s"] for a in attempts), abs=0.02)


def test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_rows(home, results):
    folder = run_dir(results)
    kill_at(20, home, folder)  # logged to step 20 or more, first checkpoint at 25
    assert not step_checkpoints(folder) or int(step_checkpoints(folder)[-1].stem[4:]) >= 25
    launch(*RUN, cwd=home)
    assert_same_as_reference(home, folder)


def test_a_kill_mid_write_leaves_no_temporary_files(home, results):
    folder = run_dir(results)
    launch(*RUN, "train.max_steps=30", "run_name=tmp", cwd=home, check=False)  # a config of its own
    tmp_folder = run_dir(results, "tmp")
    (tmp_folder / "summary.json").unlink()
    stale = [tmp_folder / "checkpoints" / ".step000000050.pt.abc123.tmp", tmp_folder / ".metrics.jsonl.x9.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    launch(*RUN, "train.max_steps=30", "run_name=tmp", cwd=home)
    assert not any(path.exists() for path in stale)
    assert folder != tmp_folder


# --------------------------------------------------------------------------- damaged checkpoints


def _without_schedulers(state: dict) -> None:
    del state["schedulers"]


def _wrong_weight_shape(state: dict) -> None:
    key = next(iter(state["models"]["model"]))
    state["models"]["model"][key] = torch.zeros(3)


def _wrong_moment_shape(state: dict) -> None:
    entry = next(iter(state["optimizers"]["model"]["state"].values()))
    entry["exp_avg"] = torch.zeros(2, 2)


def _missing_weight(state: dict) -> None:
    state["models"]["model"].popitem()


def _not_a_checkpoint(state: dict) -> None:
    state.clear()


@pytest.mark.parametrize(
    "damage",
    [_without_schedulers, _wrong_weight_shape, _wrong_moment_shape, _missing_weight, _not_a_checkpoint],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_damaged_checkpoint_is_never_half_loaded(home, results, damage):
    """Killed after step 30 (only step 25 saved), that checkpoint damaged: the run must start
    fresh (no older one) and end exactly as an uninterrupted run, with no extra metric rows."""
    folder = run_dir(results)
    shutil.copytree(run_dir(home / "reference"), folder)
    (folder / "summary.json").unlink()
    for path in step_checkpoints(folder)[:-1]:
        path.unlink()  # as if killed after step 30: only step 25 is saved
    (only,) = step_checkpoints(folder)
    state = torch.load(only, weights_only=True)
    damage(state)
    torch.save(state, only)
    proc = launch(*RUN, cwd=home)
    assert "unusable" in proc.stdout and "fresh initialisation" in proc.stdout
    assert_same_as_reference(home, folder)
    assert list((folder / "checkpoints").glob(f"{only.name}.unusable-*"))  # kept aside, not picked again


def test_a_truncated_newest_checkpoint_falls_back_to_an_older_one(home, results):
    folder = run_dir(results)
    shutil.copytree(run_dir(home / "reference"), folder)
    (folder / "summary.json").unlink()
    newest = step_checkpoints(folder)[0]
    newest.write_bytes(newest.read_bytes()[:1000])
    proc = launch(*RUN, cwd=home)
    assert "unusable" in proc.stdout and "resumed from" in proc.stdout
    assert_same_as_reference(home, folder)


# --------------------------------------------------------------------------- damaged records


def test_damaged_records_in_a_run_folder(home, results):
    """config.yaml: one line (launch and analyze), never overwritten; summary.json: the run is
    finished again from its last checkpoint; attempts.json and slurm.json: warnings only."""
    folder = run_dir(results)
    shutil.copytree(run_dir(home / "reference"), folder)
    (folder / "summary.json").write_text('{"status": "compl')
    (folder / "attempts.json").write_text("[{")
    (folder / "slurm.json").write_text("nope")
    launch(*RUN, cwd=home)
    assert_same_as_reference(home, folder)

    (folder / "config.yaml").write_text("train: [unclosed\n")
    for proc in (
        launch(*RUN, cwd=home, check=False),
        run_cli("analyze.py", str(folder), "examples", cwd=home, check=False),
    ):
        assert proc.returncode == 2 and "config.yaml is damaged" in error_line(proc)
    assert (folder / "config.yaml").read_text() == "train: [unclosed\n"


def test_sweep_summary_skips_moved_aside_and_damaged_runs(home, results):
    sweep = ["sweep=ae_latent", "preset=smoke", "data=digits", "train.max_steps=20", "train.batch_size=32"]
    launch(*sweep, cwd=home)
    launch(*sweep, "force=true", cwd=home)
    group = results / "ae_latent-smoke"
    assert len(list(group.glob("*.old-*"))) == 2
    table = (group / "summary.md").read_text()
    assert table.count("| latent_dim-") == 2 and ".old-" not in table

    (group / "latent_dim-256" / "summary.json").write_text("{broken")
    proc = run_cli("report.py", str(group), cwd=home)
    table = (group / "summary.md").read_text()
    assert table.count("| latent_dim-") == 1 and "damaged records: latent_dim-256" in table
    assert "Traceback" not in proc.stderr
    launch(*sweep, cwd=home)  # the relaunch finishes the damaged run again instead of crashing
    assert (group / "summary.md").read_text().count("| latent_dim-") == 2


# --------------------------------------------------------------------------- damaged data


def _rewrite(path: Path, split: str, key: str, array: np.ndarray) -> None:
    with h5py.File(path, "a") as f:
        del f[split][key]
        f[split].create_dataset(key, data=array)


def _short_labels(path: Path) -> str:
    with h5py.File(path, "r") as f:
        labels = f["train"]["labels"][()]
    _rewrite(path, "train", "labels", labels[: len(labels) // 3])
    return "/train/labels has"


def _float_images(path: Path) -> str:
    with h5py.File(path, "r") as f:
        images = f["test"]["images"][()]
    _rewrite(path, "test", "images", images.astype(np.float32))
    return "/test/images is float32"


def _rank_three(path: Path) -> str:
    with h5py.File(path, "r") as f:
        images = f["train"]["images"][()]
    _rewrite(path, "train", "images", images[:, 0])
    return "not uint8 N x C x H x W"


def _labels_out_of_range(path: Path) -> str:
    with h5py.File(path, "r") as f:
        labels = f["test"]["labels"][()]
    _rewrite(path, "test", "labels", labels + 100)
    return "outside the 10 classes"


def _truncated(path: Path) -> str:
    path.write_bytes(path.read_bytes()[:4096])
    return "cannot be opened as HDF5"


def _empty_split(path: Path) -> str:
    with h5py.File(path, "r") as f:
        shape = f["test"]["images"].shape
    _rewrite(path, "test", "images", np.zeros((0, *shape[1:]), np.uint8))
    _rewrite(path, "test", "labels", np.zeros(0, np.int64))
    return "/test/images is empty"


@pytest.mark.parametrize(
    "damage",
    [_short_labels, _float_images, _rank_three, _labels_out_of_range, _truncated, _empty_split],
    ids=lambda f: f.__name__.strip("_"),
)
def test_inconsistent_data_is_refused_before_any_work(home, results, tmp_path, monkeypatch, damage):
    data = tmp_path / "data"
    shutil.copytree(home / "data", data)
    monkeypatch.setenv("HPCLAB_DATA", str(data))
    expected = damage(data / "digits.h5")
    # the local launch, and the check the sbatch scripts run in the batch shell before srun
    for proc in (launch(*RUN, cwd=home, check=False), run_cli("run.py", *RUN, "--check", cwd=home, check=False)):
        assert proc.returncode == 2, proc.stdout + proc.stderr
        line = error_line(proc)
        assert expected in line and "digits.h5" in line and "prepare_data.py data=digits force=true" in line
    assert not results.exists()  # nothing written
    proc = run_cli("prepare_data.py", "data=digits", cwd=home)  # never "already prepared": staged again
    assert "already prepared" not in proc.stdout + proc.stderr and "wrote" in proc.stdout + proc.stderr
    launch(*RUN, "train.max_steps=5", cwd=home)


def test_an_empty_training_split_after_filters_is_one_line(home, results):
    proc = launch(*RUN, "data.classes=[0]", "data.limit=1", "cluster.processes=2", cwd=home, check=False)
    assert proc.returncode == 2 and "the train split of digits.h5 has 1 image(s)" in error_line(proc)


# --------------------------------------------------------------------------- concurrency


def test_two_launches_of_one_run_never_both_train(home, results):
    folder = run_dir(results)
    first = start(*RUN, "train.max_steps=4000", "train.checkpoint_every=200", cwd=home)
    try:
        wait_for_step(first, folder, 5)
        second = launch(*RUN, "train.max_steps=4000", "train.checkpoint_every=200", cwd=home, check=False)
        assert second.returncode == 2
        line = error_line(second)
        assert f"is in use by pid {first.pid} on" in line and "run.lock" in line
    finally:
        first.kill()
        first.communicate()
    # the holder died without releasing: the next launch sees that and takes the run over
    proc = launch(*RUN, "train.max_steps=30", "force=true", cwd=home)
    assert json.loads((folder / "summary.json").read_text())["steps"] == 30, proc.stdout
    assert not (folder / "run.lock").exists()


def test_a_sweep_with_one_run_name_is_refused(home, results):
    proc = launch("sweep=ae_latent", "preset=smoke", "data=digits", "run_name=foo", cwd=home, check=False)
    assert proc.returncode == 2 and "run_name names one run, but 'ae_latent-smoke' has 2" in error_line(proc)
    assert not results.exists()


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.optimizer.lr=-1", "'train.optimizer.lr': -1.0 must be > 0"),
        ("train.batch_size=0", "'train.batch_size': 0 must be >= 1"),
        ("train.log_every=0", "'train.log_every': 0 must be >= 1"),
        ("train.keep_checkpoints=0", "'train.keep_checkpoints': 0 must be >= 1"),
        ("model.latent_dim=0", "'model.latent_dim': 0 must be >= 1"),
        ("+train.epoch=3", "'train.epoch': Key 'epoch' not in 'TrainConfig'"),
        ("+colour=blue", "'colour': Key 'colour' not in 'RunConfig'"),
    ],
)
def test_bad_values_are_refused_before_any_folder_and_in_dry_runs(home, results, override, message):
    for extra in ([], ["dry_run=true"], ["cluster=slurm", "dry_run=true"]):
        proc = launch(*RUN, override, *extra, cwd=home, check=False)
        assert proc.returncode == 2 and message in error_line(proc)
    assert not results.exists()


def test_an_override_of_a_swept_key_narrows_the_sweep(home, results):
    proc = launch("sweep=ae_latent", "model.latent_dim=8", "dry_run=true", cwd=home)
    assert "1 run(s)" in proc.stdout and "latent_dim-8 " in proc.stdout


def test_resume_never_starts_over_and_keeps_the_old_run(home, results):
    folder = run_dir(results)
    launch(*RUN, "train.max_steps=30", cwd=home)
    launch(*RUN, "train.max_steps=30", "train.resume=never", cwd=home)
    (old,) = folder.parent.glob("default.old-*")
    assert (old / "summary.json").is_file() and (folder / "summary.json").is_file()
    assert [r["step"] for r in records(folder) if r["split"] == "fit"][0] == 5  # from the start again


# --------------------------------------------------------------------------- file systems


def test_a_read_only_results_folder_stops_before_training(home, tmpfs, monkeypatch):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    monkeypatch.setenv("HPCLAB_RESULTS", str(tmpfs / "results"))
    proc = launch(*RUN, cwd=home, check=False)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "cannot write to" in line and "Read-only file system" in line


def test_a_full_disk_at_save_time_keeps_the_last_good_checkpoint(home, tmpfs, monkeypatch):
    results = tmpfs / "results"
    monkeypatch.setenv("HPCLAB_RESULTS", str(results))
    folder = run_dir(results)
    proc = start(*RUN, cwd=home)
    wait_for_step(proc, folder, 30)  # step 25 is saved
    filler = tmpfs / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)  # until ENOSPC
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, out + err
    line = error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert "No space left on device" in line or "disk full" in line
    good = step_checkpoints(folder)
    assert good and torch.load(good[0], weights_only=True)["step"] >= 25  # whole, loadable
    filler.unlink()
    launch(*RUN, cwd=home)
    assert_same_as_reference(home, folder)


def test_files_follow_the_umask(home, results):
    old = os.umask(0o022)
    try:
        launch(*RUN, "train.max_steps=20", cwd=home)
    finally:
        os.umask(old)
    folder = run_dir(results)
    for path in [folder / "summary.json", folder / "checkpoints" / "best_model.safetensors", *step_checkpoints(folder)]:
        assert path.stat().st_mode & 0o777 == 0o644, path


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2], ids=["TERM", "USR2"])
def test_a_local_stop_signal_checkpoints_and_says_how_to_resume(home, results, signum):
    folder = run_dir(results)
    proc = start(*RUN, cwd=home)
    wait_for_step(proc, folder, 10)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, out + err
    (line,) = [x for x in err.splitlines() if x.startswith("stopped: ")]
    step = int(line.split("checkpointed at step ")[1].split(";")[0])
    assert (
        line == f"stopped: {signal.Signals(signum).name}: checkpointed at step {step}; "
        f"the same command resumes from there"
    )
    assert int(step_checkpoints(folder)[0].stem[4:]) == step
    launch(*RUN, cwd=home)
    assert_same_as_reference(home, folder)


# --------------------------------------------------------------------------- hostile results folders


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'pwned'}",))


def test_status_never_unpickles_what_a_results_folder_points_at(home, results, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with open(elsewhere / "123_0_result.pkl", "wb") as fh:
        pickle.dump(("error", _Payload()), fh)
    (elsewhere / "123_0_log.err").write_text("Submitted job triggered an exception\n")
    group = results / "ae_latent"
    group.mkdir(parents=True)
    (group / "submissions.json").write_text(
        json.dumps(
            {"default": {"job_id": "123_0", "log": str(elsewhere / "123_0_log.out"), "run_dir": str(group / "default")}}
        )
    )
    proc = run_cli("launch.py", "status", *RUN, cwd=tmp_path)
    assert not (tmp_path / "pwned").exists()
    assert "FAILED" not in proc.stdout  # a log outside the sweep's submitit folder is not evidence


def test_status_reads_past_a_torn_last_metrics_line(home, results):
    folder = run_dir(results)
    shutil.copytree(run_dir(home / "reference"), folder)
    with open(folder / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 85, "spl')
    proc = run_cli("launch.py", "status", *RUN, cwd=home)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("default"))
    assert line.split()[1] == "COMPLETED" and line.split()[3] == "80/80"


@pytest.mark.slurm
def test_a_submission_the_cluster_refuses_is_one_line_naming_the_setting(home, results, slurm_cluster):
    """What sinfo tells (no GPUs here) is refused before sbatch; what only sbatch knows (a node
    feature) is sbatch's reason in one line, with the setting to change."""
    no_gpus = launch(
        *RUN,
        "cluster=slurm",
        "cluster.gpus_per_node=1",
        "cluster.cpus_per_task=1",
        "cluster.mem_gb=null",
        cwd=home,
        check=False,
    )
    line = error_line(no_gpus)
    assert no_gpus.returncode == 2 and line.startswith("error: the job does not fit partition")
    assert "These fit: cluster.gpus_per_node=0" in line
    feature = launch(*RUN, "cluster=slurm_cpu", "+cluster.extra.constraint=no_such_feature", cwd=home, check=False)
    line = error_line(feature)
    assert feature.returncode == 2 and line.startswith("error: sbatch refused the job array:")
    assert "Invalid feature specification" in line and "cluster.extra.constraint" in line
