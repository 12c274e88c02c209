"""Fault cases one step off the tested paths, one test per class of fault (docs/runs.md, "What
survives what"): names that would leave the results folder, a second writer, results reported
"completed" that the config did not produce, work thrown away late, malformed datasets, and
signals and full disks at odd moments. The untrusted-file readers are fuzzed in
test_fuzz_records.py.

Most commands run in this process (:func:`conftest.run_main`, seconds each); kills and signals
need real processes.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import run_cli, run_main
from test_faults import RUN, error_line, home, results, run_dir, start, tmpfs, wait_for_step  # noqa: F401

from hpclab.rundir import step_checkpoints

pytestmark = [pytest.mark.fault, pytest.mark.slow]

SHORT = [*RUN, "train.max_steps=20"]


def launch(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_main("launch.py", *args, cwd=cwd, env=env)


def refused(proc: subprocess.CompletedProcess, *parts: str) -> str:
    """The one error line of a command that stopped with exit 2, holding every ``part``."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = error_line(proc)
    assert all(part in line for part in parts), line
    return line


def wait_for_text(proc: subprocess.Popen, path: Path, text: str, timeout: float = 600) -> None:
    """Until ``path`` holds ``text`` (the process still running)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"no '{text}' in {path} (exit {proc.poll()})")


def tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "override",
    [
        "run_name=.",
        "run_name=..",
        "run_name=/tmp/elsewhere",
        "run_name=a/b",
        "run_name=x.old-1",
        "run_name=.hidden",
        "run_group=..",
        "sweep.name=/abs",
        "sweep.name=../..",
        "experiment=../x",
    ],
)
def test_names_never_leave_the_results_folder(home, results, override):
    """Explicit names obey the grid names' rule (one plain path component) in every command,
    also with force=true, so no folder outside the run's own is moved or written."""
    launch(*SHORT, "run_name=sibling", cwd=home)
    before = tree(results)
    for extra in (["force=true"], ["dry_run=true"], ["cluster=slurm", "dry_run=true"]):
        proc = launch(*SHORT, override, *extra, cwd=home)
        if override.startswith("experiment="):
            assert proc.returncode == 2 and "error: " in proc.stderr, proc.stderr
            continue
        refused(proc, f"config key '{override.split('=')[0]}'", "one plain folder name")
    assert tree(results) == before


# --------------------------------------------------------------------------- a second writer


def test_the_ranks_of_a_killed_launcher_die_with_it_and_the_run_resumes_alone(home, results):
    """kill -9 of the parent of a cluster.processes=2 run: its ranks exit too (none keeps
    writing beside the next launch), the lock names them while they live, and the same command
    resumes to one clean record: no duplicate rows, one final evaluation."""
    folder = run_dir(results)
    args = [*RUN, "cluster.processes=2", "train.max_steps=400", "train.checkpoint_every=25"]
    proc = start(*args, cwd=home)
    try:
        wait_for_step(proc, folder, 30)
        lock = json.loads((folder / "run.lock").read_text())
        ranks = [w["pid"] for w in lock["writers"]]
        assert len(ranks) == 2 and lock["pid"] == proc.pid
    finally:
        proc.kill()
        proc.communicate()
    deadline = time.time() + 60
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in ranks):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks), "a rank outlived its launcher"
    launch(*args, cwd=home)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["split"]) for r in rows]
    assert len(keys) == len(set(keys)) and sum(r["split"] == "final_test" for r in rows) == 1


# --------------------------------------------------------------------------- "completed" that isn't


def test_a_run_that_diverges_is_never_completed(home, results):
    """NaN at an evaluation (or the final one): one line, no summary, no checkpoint of it."""
    folder = run_dir(results)
    proc = launch(*SHORT, "train.optimizer.lr=1e6", "train.scheduler.name=none", cwd=home)
    refused(proc, "non-finite", "train.optimizer.lr")
    assert not (folder / "summary.json").exists() and not step_checkpoints(folder)
    assert "COMPLETED" not in launch("status", *SHORT, "train.optimizer.lr=1e6", cwd=home).stdout


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.monitor=val/mes", "train.monitor"),
        ("train.stop.metric=val/mes", "train.stop.metric"),
        ("train.final_splits=[test,holdout]", "train.final_splits"),
        ("data.val_fraction=0", "train.monitor"),
    ],
)
def test_metrics_and_splits_a_run_cannot_have_are_refused_before_its_folder(home, results, override, key):
    proc = launch(*SHORT, override, "train.stop.threshold=0.1", cwd=home)
    refused(proc, f"config key '{key}'")
    assert not results.exists()


def test_a_resume_on_other_data_is_refused_naming_both(home, results, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(home / "data", data)
    env = {"HPCLAB_DATA": str(data)}
    folder = run_dir(results)
    launch(*RUN, "train.max_steps=30", cwd=home, env=env)
    (folder / "summary.json").unlink()
    for path in step_checkpoints(folder)[:-1]:
        path.unlink()  # as if killed after step 25
    with h5py.File(data / "digits.h5", "r+") as f:  # the same file name, other pixels
        f["train/images"][...] = 255 - f["train/images"][()]
    line = refused(
        launch(*RUN, "train.max_steps=30", cwd=home, env=env),
        "trained on other data",
        str(data / "digits.h5"),
        "force=true",
    )
    assert "step000000025.pt" in line
    with h5py.File(data / "digits.h5", "r+") as f:  # put back: the resume goes on
        f["train/images"][...] = 255 - f["train/images"][()]
    assert launch(*RUN, "train.max_steps=30", cwd=home, env=env).returncode == 0


def test_smoke_runs_have_their_own_folder_and_never_count_for_the_full_sweep(home, results):
    sweep = ["sweep=ae_latent", "data=digits"]
    launch(*sweep, "preset=smoke", "train.max_steps=4", "train.batch_size=32", cwd=home)
    assert sorted(p.name for p in (results / "ae_latent-smoke").iterdir() if p.is_dir()) == [
        "latent_dim-2",
        "latent_dim-256",
    ]
    assert not (results / "ae_latent").exists()
    status = launch("status", *sweep, cwd=home).stdout
    assert "COMPLETED" not in status and status.count("NOT-SUBMITTED") == 8
    dry = launch(*sweep, "dry_run=true", cwd=home).stdout
    assert dry.count("to run") == 8 and "complete" not in dry
    # a run folder holding a finished run of other overrides is not complete for these
    status = launch("status", *sweep, "preset=smoke", "train.max_steps=5", "train.batch_size=32", cwd=home).stdout
    assert status.count("OTHER-CONFIG") == 2, status


def test_a_sweep_summary_lists_only_the_sweeps_runs(home, results):
    """experiment=ae_latent beside sweep=ae_latent in results/ae_latent/: the single run is left
    out of the sweep's table (named in a note) and a summary.png of earlier runs is removed
    when the table has nothing to plot."""
    group = results / "ae_latent"
    launch(*SHORT, cwd=home)  # results/ae_latent/default
    launch(
        "sweep=ae_latent",
        "data=digits",
        "model.latent_dim=8",
        "model.channels=[8,16]",
        "train.epochs=null",
        "train.max_steps=4",
        "train.batch_size=32",
        cwd=home,
    )
    table = (group / "summary.md").read_text()
    assert "| latent_dim-8 " in table and "| default " not in table and "not runs of the sweep" in table
    (group / "summary.png").write_bytes(b"stale")
    run_main("report.py", str(group), cwd=home)
    assert not (group / "summary.png").exists()


def test_an_analysis_waits_for_no_one_it_stops_when_the_run_is_in_use(home, results):
    folder = run_dir(results)
    launch(*SHORT, cwd=home)
    proc = start(*RUN, "train.max_steps=4000", "force=true", cwd=home)
    try:
        # the finished run's metrics are still in the folder until force=true moves them aside:
        # wait for the new run's lock, not for a step
        wait_for_text(proc, folder / "run.lock", f'"pid": {proc.pid}')
        refused(run_main("analyze.py", str(folder), "examples", cwd=home), "is in use by pid", "run.lock")
    finally:
        proc.kill()
        proc.communicate()


def test_a_run_still_starting_is_in_use_for_analyses_and_running_in_status(home, results):
    """The window where a starting run holds the lock but has not written config.yaml yet: the
    same answers as later in the run, not "not a run folder" or NOT-SUBMITTED. Another process takes the lock as a
    run does (hpclab.rundir.lock.acquire) and holds it until the test ends it."""
    import sys

    folder = run_dir(results)
    take_and_hold = "import sys, time; from pathlib import Path; from hpclab.rundir.lock import acquire; "
    take_and_hold += "acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(3600)"
    holder = subprocess.Popen([sys.executable, "-c", take_and_hold, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused(run_main("analyze.py", str(folder), "examples", cwd=home), f"is in use by pid {holder.pid}", "run.lock")
        assert "RUNNING" in launch("status", *RUN, cwd=home).stdout  # not NOT-SUBMITTED
    finally:
        holder.kill()
        holder.wait()
    refused(run_main("analyze.py", str(folder), "examples", cwd=home), "is not a run folder (no config.yaml)")
    assert "NOT-SUBMITTED" in launch("status", *RUN, cwd=home).stdout  # the holder is gone


# --------------------------------------------------------------------------- work thrown away late


def test_what_the_analyses_need_is_checked_before_step_0(home, results):
    proc = launch(
        "experiment=dcgan_small",
        "data=digits",
        "data.image_size=8",
        "model.channels=16",
        "model.latent_dim=16",
        cwd=home,
    )
    line = refused(proc, "analysis 'fid'", "prepare_data.py weights=[fid_inception]", "or run without it: analysis=[")
    assert "fid" not in line.split("analysis=[")[1]
    proc = launch(*SHORT, "analysis=[{name:fd_classifier,classifier:/nowhere}]", cwd=home)
    refused(proc, "analysis 'fd_classifier'", "/nowhere")
    refused(launch(*SHORT, "analysis=[nope]", cwd=home), "unknown analysis 'nope'")
    refused(launch(*SHORT, "analysis=[{name:examples,colour:red}]", cwd=home), "examples", "colour")
    refused(launch(*SHORT, "analysis=[{name:examples,split:holdout}]", cwd=home), "split 'holdout'")
    assert not results.exists()


def test_a_model_that_does_not_fit_the_data_is_one_line_before_the_folder(home, results):
    proc = launch("experiment=mnist_conv_ae", "data=digits", cwd=home)
    refused(proc, "model 'cnn_ae' cannot run", "digits.h5", "Kernel size")
    assert not results.exists()


def test_a_start_that_never_reached_a_checkpoint_does_not_block_another_config(home, results):
    folder = run_dir(results)
    proc = start(*RUN, "train.checkpoint_every=1000", "train.eval_every=1000", "train.max_steps=3000", cwd=home)
    try:
        wait_for_step(proc, folder, 5)
    finally:
        proc.kill()
        proc.communicate()
    assert (folder / "config.yaml").is_file() and not step_checkpoints(folder)
    # a subprocess: the launcher's own log lines (before the run's log starts) are its output whole
    proc = run_cli("launch.py", *SHORT, "model.latent_dim=4", cwd=home)
    assert "never reached a checkpoint" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- malformed datasets


def _bigger_test_images(f: h5py.File) -> str:
    images = f["test/images"][()]
    del f["test/images"]
    f["test/images"] = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return "/test/images are 1x12x12"


def _no_train(f: h5py.File) -> str:
    del f["train"]
    return "has no train split"


def _no_test(f: h5py.File) -> str:
    del f["test"]
    return "no 'test' split"


def _class_names_of_another_type(f: h5py.File) -> str:
    f.attrs["class_names"] = json.dumps({"0": "zero"})
    return "class_names is a JSON dict"


def _no_class_names(f: h5py.File) -> str:
    del f.attrs["class_names"]
    return "no class_names"


@pytest.mark.parametrize(
    "damage",
    [_bigger_test_images, _no_train, _no_test, _class_names_of_another_type, _no_class_names],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_malformed_dataset_is_one_line_before_any_work(home, results, tmp_path, damage):
    data = tmp_path / "data"
    shutil.copytree(home / "data", data)
    with h5py.File(data / "digits.h5", "r+") as f:
        expected = damage(f)
    refused(launch(*SHORT, cwd=home, env={"HPCLAB_DATA": str(data)}), expected)
    assert not results.exists()


def test_labels_a_classifier_cannot_learn_are_refused(home, results, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(home / "data", data)
    with h5py.File(data / "digits.h5", "r+") as f:
        labels = f["train/labels"][()]
        labels[::7] = -1
        f["train/labels"][...] = labels
    proc = launch(
        "experiment=fmnist_cnn",
        "data=digits",
        "model.channels=[4,8,8]",
        "train.epochs=null",
        "train.max_steps=2",
        "analysis=[]",
        cwd=home,
        env={"HPCLAB_DATA": str(data)},
    )
    refused(proc, "label -1", "unlabelled")


# --------------------------------------------------------------------------- signals and disks


def test_a_stop_signal_during_the_analyses_is_one_line_and_the_same_command_finishes(home, results):
    folder = run_dir(results)
    args = [*SHORT, "analysis=[{name:pixel_probe,epochs:500}]"]  # an analysis that takes a while
    proc = start(*args, cwd=home)
    wait_for_text(proc, folder / "run.log", "analysis pixel_probe")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, out[-2000:] + err[-2000:]
    (line,) = [x for x in err.splitlines() if x.startswith("stopped: ")]
    assert "during the analyses" in line and "run the same command" in line
    assert not (folder / "run.lock").exists() and not (folder / "summary.json").exists()
    proc = launch(*SHORT, "analysis=[{name:pixel_probe,epochs:1}]", cwd=home)
    assert proc.returncode == 0 and json.loads((folder / "summary.json").read_text())["analyses"]["pixel_probe"]


def test_analyses_added_to_a_complete_runs_config_run_without_training_again(home, results):
    """A complete run launched again with an analysis its summary lacks runs that analysis (it
    was 'complete; skipping' before, so the analysis never ran); training is not repeated."""
    folder = run_dir(results)
    launch(*SHORT, "analysis=[]", cwd=home)
    metrics, attempts = ((folder / name).read_text() for name in ("metrics.jsonl", "attempts.json"))
    assert "ANALYSES-TO-RUN" in launch("status", *SHORT, "analysis=[pixel_probe]", cwd=home).stdout
    dry = launch(*SHORT, "analysis=[pixel_probe]", "dry_run=true", cwd=home).stdout
    assert "default analyses" in " ".join(dry.split()), dry
    # A stop signal while they run (the lock is taken inside the stop's scope): one line, exit 3.
    proc = start(*SHORT, "analysis=[{name:pixel_probe,epochs:20000}]", cwd=home)
    wait_for_text(proc, folder / "run.lock", "pid")
    assert "RUNNING" in launch("status", *SHORT, "analysis=[pixel_probe]", cwd=home).stdout
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, out[-2000:] + err[-2000:]
    (line,) = [x for x in err.splitlines() if x.startswith("stopped: ")]
    assert "during the analyses pixel_probe" in line and "run the same command" in line, line
    assert not (folder / "run.lock").exists()
    proc = run_cli("launch.py", *SHORT, "analysis=[{name:pixel_probe,epochs:1}]", cwd=home)  # its log, whole
    assert "complete but for analyses its config lists: running pixel_probe" in proc.stdout + proc.stderr
    assert json.loads((folder / "summary.json").read_text())["analyses"]["pixel_probe"]
    assert ((folder / "metrics.jsonl").read_text(), (folder / "attempts.json").read_text()) == (metrics, attempts)
    proc = run_cli("launch.py", *SHORT, "analysis=[{name:pixel_probe,epochs:1}]", cwd=home)
    assert "is complete; skipping" in proc.stdout + proc.stderr
    assert "COMPLETED" in launch("status", *SHORT, "analysis=[pixel_probe]", cwd=home).stdout


def test_a_stop_signal_with_force_says_how_to_resume(home, results):
    folder = run_dir(results)
    proc = start(*RUN, "force=true", cwd=home)
    wait_for_step(proc, folder, 10)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    (line,) = [x for x in err.splitlines() if x.startswith("stopped: ")]
    assert proc.returncode == 3 and "without force=true" in line, line
    launch(*RUN, cwd=home)  # without force: resumed, not started over
    assert "resumed from" in (folder / "run.log").read_text()


def test_a_full_disk_while_the_best_weights_are_written_is_one_line(home, tmpfs, monkeypatch):
    """The best weights are written at an evaluation; the disk fills before it (the step
    checkpoints are kept small by a tiny model, the best file is the first write that fails)."""
    results = tmpfs / "results"
    monkeypatch.setenv("HPCLAB_RESULTS", str(results))
    folder = run_dir(results)
    proc = start(*RUN, "train.checkpoint_every=1000", "train.eval_every=40", cwd=home)
    wait_for_step(proc, folder, 5)
    filler = tmpfs / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # until ENOSPC
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-2000:] + err[-2000:]
    line = error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert "could not write" in line and "free space" in line and "Traceback" not in err
    filler.unlink()


def test_a_results_path_with_a_space_keeps_its_log_path_whole():
    from hpclab.launch.slurm import scontrol_field

    line = (
        "JobId=7 JobName=hpclab-x UserId=root(0) WorkDir=/scratch/My results StdErr=/scratch/My results/x.err "
        "StdIn=/dev/null StdOut=/scratch/My results/hpclab-x-7.out Power= TresPerNode=gres:gpu:0"
    )
    assert scontrol_field(line, "StdOut") == "/scratch/My results/hpclab-x-7.out"
    assert scontrol_field(line, "WorkDir") == "/scratch/My results"
    assert scontrol_field(line, "Power") is None


def test_every_collective_failure_reads_as_a_lost_rank():
    from hpclab.engine.trainer import lost_peer

    for message in (
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Application timeout caused pair closure",
        "Connection closed by peer [127.0.0.1]:23456",
        "Timed out waiting 20000ms for recv operation",
        "NCCL error in: ProcessGroupNCCL.cpp:1234, remote process exited",
    ):
        assert lost_peer(RuntimeError(message)), message
    assert not lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))


def test_the_cli_of_each_job_script_gives_one_line_for_a_missing_run(home, tmp_path):
    for script, args in (
        ("analyze.py", [str(tmp_path / "none"), "examples"]),
        ("report.py", [str(tmp_path / "none")]),
        ("activations.py", [str(tmp_path / "none")]),
    ):
        proc = run_main(script, *args, cwd=home)
        assert proc.returncode == 2 and error_line(proc), (script, proc.stderr)
