"""The training engine: resume equivalence, corrupt checkpoints, safety of loading, early stop,
non-finite losses, and multi-process data parallelism on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_RUN, REPO, run_cli
from torch import nn

from hpclab.config import compose
from hpclab.errors import NonFiniteLoss
from hpclab.launch.job import run_dir_of, train_run
from hpclab.models import MODELS
from hpclab.rundir import step_checkpoints


def final_metrics(results: Path, group: str = "ae_latent", run: str = "default") -> dict:
    return json.loads((results / group / run / "summary.json").read_text())["metrics"]


def test_resume_after_kill_ends_with_the_same_metrics(digits):
    args = DIGITS_RUN + ["train.max_steps=240", "train.eval_every=40", "train.checkpoint_every=20"]
    run_cli("launch.py", *args, cwd=digits, env={"HPCLAB_RESULTS": str(digits / "straight")})
    reference = final_metrics(digits / "straight")

    env = {**os.environ, "HPCLAB_RESULTS": str(digits / "killed"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "launch.py"), *args],
        cwd=digits,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt_dir = digits / "killed" / "ae_latent" / "default" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not step_checkpoints(ckpt_dir.parent) and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = step_checkpoints(ckpt_dir.parent)
    assert saved, "no checkpoint was written before the kill"
    killed_at = int(saved[0].stem.removeprefix("step"))
    assert 0 < killed_at < 240
    assert not (ckpt_dir.parent / "summary.json").exists()

    run_cli("launch.py", *args, cwd=digits, env={"HPCLAB_RESULTS": str(digits / "killed")})
    log = (ckpt_dir.parent / "run.log").read_text()
    assert f"at step {killed_at}" in log and "resumed from" in log
    assert final_metrics(digits / "killed") == reference
    steps = [json.loads(line)["step"] for line in (ckpt_dir.parent / "metrics.jsonl").read_text().splitlines()]
    fit_steps = [
        json.loads(line)["step"]
        for line in (ckpt_dir.parent / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["split"] == "fit"
    ]
    assert fit_steps == sorted(set(fit_steps)) and steps[-1] == 240


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(digits, capsys):
    cfg = compose(DIGITS_RUN + ["train.max_steps=40", "train.checkpoint_every=10", "train.keep_checkpoints=3"])
    train_run(cfg)
    run_dir = run_dir_of(cfg)
    newest, previous = step_checkpoints(run_dir)[:2]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated by a crash
    (run_dir / "summary.json").unlink()
    from hpclab.engine import Trainer

    trainer = Trainer(cfg, run_dir)
    assert trainer.checkpoints.resume()
    assert trainer.state.step == int(previous.stem.removeprefix("step"))
    out = capsys.readouterr().out
    assert "unusable" in out and newest.name in out
    assert not newest.exists() and list(newest.parent.glob(newest.name + ".unusable-*"))  # never tried again
    trainer.close()


def test_runs_of_different_precision_in_one_process(digits):
    """A local sweep trains its runs in one process; accelerate's per-process state must not
    pin the first run's precision (it raises for a second Accelerator with another one)."""
    for precision in ("no", "bf16", "no"):
        cfg = compose(
            DIGITS_RUN
            + ["train.max_steps=4", f"train.mixed_precision={precision}", f"run_name={precision}", "force=true"]
        )
        summary = train_run(cfg)
        assert summary["steps"] == 4 and summary["metrics"]["test/mse"] > 0
        log = (run_dir_of(cfg) / "run.log").read_text()
        assert f"mixed precision {precision}" in log


def test_a_metrics_line_cut_short_by_a_kill_does_not_stop_the_resume(digits):
    cfg = compose(DIGITS_RUN + ["train.max_steps=20", "train.checkpoint_every=10"])
    train_run(cfg)
    run_dir = run_dir_of(cfg)
    (run_dir / "summary.json").unlink()  # as if killed after the last checkpoint
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 21, "epoch": 1.3, "spl')  # a write cut short
    summary = train_run(cfg)
    assert summary["steps"] == 20
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records and all(r["step"] <= 20 for r in records)


def test_a_run_trained_with_resume_never_can_be_analysed_again(digits):
    cfg = compose(DIGITS_RUN + ["train.max_steps=10", "train.resume=never", "analysis=[]"])
    train_run(cfg)
    run_dir = run_dir_of(cfg)
    run_cli("analyze.py", str(run_dir), "examples", "count=3", cwd=digits)
    assert (run_dir / "figures" / "examples_test.png").is_file()
    assert "examples" in json.loads((run_dir / "summary.json").read_text())["analyses"]


def test_cpu_runs_tell_malloc_to_keep_freed_memory():
    """Without it glibc hands every step's activation buffers back to the OS (page faults each
    step); the engine's mallopt call must succeed wherever glibc is the C library."""
    import ctypes.util
    import platform

    from hpclab.engine.build import keep_freed_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or not ctypes.util.find_library("c"):
        pytest.skip("not glibc")
    assert keep_freed_memory()


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_loading_never_executes_pickled_code(digits):
    cfg = compose(DIGITS_RUN + ["train.max_steps=10"])
    ckpt_dir = run_dir_of(cfg) / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.save({"step": 5, "payload": _Boom()}, ckpt_dir / "step000000005.pt")
    assert b"system" in (ckpt_dir / "step000000005.pt").read_bytes()  # the file really holds the payload
    summary = train_run(cfg)
    assert not (digits / "pwned").exists()
    assert summary["steps"] == 10  # started from scratch after reporting the bad file


def test_analyses_read_each_kept_checkpoints_weights_checked_oldest_first(digits, caplog):
    """model_states: the weights of every kept step checkpoint, checked against the live models
    before they are handed out; a file cut short, or weights of another model, are left out with
    a warning instead of failing in load_state_dict."""
    import logging

    from hpclab.engine import load_trained
    from hpclab.engine.checkpoints import model_states

    cfg = compose(DIGITS_RUN + ["train.max_steps=30", "train.eval_every=10", "train.keep_checkpoints=3"])
    train_run(cfg)
    run_dir = run_dir_of(cfg)
    newest, middle, _ = step_checkpoints(run_dir)
    logging.getLogger("hpclab").addHandler(caplog.handler)
    try:
        with load_trained(cfg, run_dir) as run:
            model = run.unwrap()
            states = list(model_states(run_dir, {"model": model}))
            assert [step for step, _ in states] == [10, 20, 30]
            key = next(iter(model.state_dict()))
            assert torch.equal(
                states[-1][1]["model"][key], torch.load(newest, weights_only=True)["models"]["model"][key]
            )
            middle.write_bytes(middle.read_bytes()[:200])  # cut short by a kill
            assert [step for step, _ in model_states(run_dir, {"model": model})] == [10, 30]
            assert f"{middle} is left out" in caplog.text
            assert list(model_states(run_dir, {"model": nn.Conv2d(1, 1, 3)})) == []  # another model's weights
            assert "model model: missing" in caplog.text
            assert list(model_states(run_dir, {"generator": model})) == []
            assert "no weights of generator" in caplog.text
    finally:
        logging.getLogger("hpclab").removeHandler(caplog.handler)


def test_early_stop_when_metric_crosses_threshold(digits):
    cfg = compose(
        DIGITS_RUN
        + [
            "train.max_steps=400",
            "train.eval_every=20",
            "train.eval_splits=[train,val]",
            "train.stop.metric=train/mse",
            "train.stop.threshold=0.09",
        ]
    )
    summary = train_run(cfg)
    assert summary["stopped_early"] and "train/mse" in summary["stopped_early"]
    assert summary["steps"] < 400 and summary["steps"] % 20 == 0
    lines = [json.loads(x) for x in (run_dir_of(cfg) / "metrics.jsonl").read_text().splitlines()]
    last_train_eval = [x for x in lines if x["split"] == "train"][-1]
    assert last_train_eval["mse"] < 0.09


def test_image_grids_follow_image_every_and_default_to_each_evaluation(digits):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def image_steps(*extra: str) -> list[int]:
        cfg = compose(DIGITS_RUN + ["train.max_steps=30", "train.eval_every=10", *extra])
        train_run(cfg)
        events = EventAccumulator(str(run_dir_of(cfg) / "tb"), size_guidance={"images": 0}).Reload()  # 0: keep all
        return [e.step for e in events.Images("images/output")]

    assert image_steps("run_name=every_eval") == [10, 20, 30]
    assert image_steps("run_name=every_4", "train.image_every=4") == [4, 8, 12, 16, 20, 24, 28, 30]


@MODELS.register("nan_after_steps")
class _NanModel(nn.Module):
    """Test model whose output turns NaN after a few forward passes."""

    def __init__(self, in_channels: int = 1, after: int = 15) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.after = after
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = torch.sigmoid(self.conv(x))
        return out * float("nan") if self.calls > self.after and self.training else out


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_good_checkpoint(digits):
    cfg = compose(
        DIGITS_RUN
        + [
            "model=conv_ae",
            "~model.latent_dim",
            "~model.channels",
            "~model.upsampling",
            "model.name=nan_after_steps",
            "train.max_steps=40",
            "train.checkpoint_every=10",
        ]
    )
    with pytest.raises(NonFiniteLoss, match="non-finite"):
        train_run(cfg)
    saved = step_checkpoints(run_dir_of(cfg))
    assert [p.name for p in saved] == ["step000000010.pt"]


def test_two_process_data_parallel_training_on_cpu(digits):
    proc = run_cli("launch.py", *DIGITS_RUN, "train.max_steps=20", "cluster.processes=2", cwd=digits)
    run_dir = digits / "results" / "ae_latent" / "default"
    log = (run_dir / "run.log").read_text()
    assert "accelerate: 2 process(es)" in log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 20
    assert torch.isfinite(torch.tensor(summary["metrics"]["test/mse"]))
    assert "results:" in proc.stdout


def test_rerun_skips_a_finished_run_and_refuses_a_changed_config(digits):
    run_cli("launch.py", *DIGITS_RUN, "train.max_steps=10", cwd=digits)
    summary = digits / "results/ae_latent/default/summary.json"
    mtime = summary.stat().st_mtime_ns
    proc = run_cli("launch.py", *DIGITS_RUN, "train.max_steps=10", cwd=digits)
    assert summary.stat().st_mtime_ns == mtime and "complete; skipping" in proc.stdout + proc.stderr
    proc = run_cli("launch.py", *DIGITS_RUN, "train.max_steps=12", cwd=digits, check=False)
    assert proc.returncode == 2 and "train.max_steps: 10 -> 12" in proc.stderr
    run_cli("launch.py", *DIGITS_RUN, "train.max_steps=12", "force=true", cwd=digits)
    assert json.loads(summary.read_text())["steps"] == 12
    assert list((digits / "results/ae_latent").glob("default.old-*"))  # the old run was moved aside


def test_a_finished_run_loads_for_analysis_without_optimizers_and_evaluates_as_trained(digits):
    """``load_trained`` rebuilds data, task and models only, with the weights the run finished
    with (the best ones when it kept any): its evaluation equals the run's final metrics."""
    from hpclab.engine import load_trained

    cfg = compose(DIGITS_RUN + ["train.max_steps=20", "train.eval_every=10", "analysis=[]"])
    summary = train_run(cfg)
    with load_trained(cfg, run_dir_of(cfg)) as run:
        assert run.parts.optimizers == {} and run.parts.schedulers == {}
        assert run.step == 20 and run.best == summary["best"]
        again = run.evaluate("test")
    assert {f"test/{k}": v for k, v in again.items()} == summary["metrics"]


def test_loading_weights_for_analysis_refuses_a_run_without_any(digits):
    from hpclab.engine import load_trained
    from hpclab.errors import ConfigError

    cfg = compose(DIGITS_RUN + ["train.max_steps=5"])
    with pytest.raises(ConfigError, match="no trained weights"):
        with load_trained(cfg, run_dir_of(cfg)):
            pass


def test_line_logs_say_elapsed_and_eta_and_status_shows_step_of_total_with_the_rate(digits):
    """Under SLURM or piped, each training line ends with the time since this start and the time
    left; ``launch.py status`` shows the last step of the total and the run's rate."""
    import re

    run = [
        *DIGITS_RUN,
        "model.latent_dim=4",
        "train.max_steps=30",
        "train.eval_every=10",
        "analysis=[]",
        "run_name=progress",
    ]
    proc = run_cli("launch.py", *run, cwd=digits)
    lines = [line for line in proc.stdout.splitlines() if re.search(r"\] step \d+/30 ", line)]
    assert len(lines) == 3, proc.stdout
    assert all(re.search(r" elapsed=\d+:\d\d:\d\d eta=\d+:\d\d:\d\d$", line) for line in lines), lines
    assert lines[-1].endswith(" eta=0:00:00")
    status = run_cli("launch.py", "status", *run, cwd=digits).stdout.splitlines()
    assert status[0].split()[:6] == ["run", "state", "job", "step", "rate", "log"]
    row = next(line for line in status if line.startswith("progress "))
    assert re.search(r" 30/30 +\d[\d.]* (step/s|s/step) ", row), status
