"""A few CUDA training steps of a real run (the digits conv AE, trained and evaluated by
``train_run`` as ``jobs/launch.py`` runs it) in each mode the engine offers for a GPU: fp16 with
its loss scaler, bf16 with channels_last, and torch.compile. Each must train on the GPU with
finite losses and resume-ready checkpoints. Skipped without CUDA: ``pytest -m gpu`` on a GPU node.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import DIGITS_RUN, cuda_problem, requires

from hpclab.config import compose
from hpclab.launch.job import run_dir_of, train_run
from hpclab.rundir import read_metrics, step_checkpoints

pytestmark = pytest.mark.gpu

STEPS = 8
MODES = {
    "fp16": ["train.mixed_precision=fp16"],
    "bf16_channels_last": ["train.mixed_precision=bf16", "train.channels_last=true"],
    "compile": ["train.compile=true"],
}


@pytest.fixture(scope="module")
def cuda() -> None:
    """Skip before any data is staged when there is no GPU."""
    requires(cuda_problem)


@pytest.mark.parametrize("mode", MODES)
def test_a_few_cuda_steps_train_with_finite_losses(cuda, digits, mode):
    cfg = compose(
        [
            *DIGITS_RUN,
            f"train.max_steps={STEPS}",
            "train.eval_every=4",
            "train.log_every=2",
            "train.checkpoint_every=4",
            "analysis=[]",
            f"run_name={mode}",
            *MODES[mode],
        ]
    )
    summary = train_run(cfg)
    run_dir = run_dir_of(cfg)
    assert summary["steps"] == STEPS
    log = (run_dir / "run.log").read_text()
    assert re.search(rf"device cuda(:\d+)?, mixed precision {cfg.train.mixed_precision};", log), log
    fit = [record for record in read_metrics(run_dir) if record["split"] == "fit"]
    assert [record["step"] for record in fit] == list(range(2, STEPS + 1, 2))
    assert all(math.isfinite(record["loss"]) for record in fit), fit
    assert summary["metrics"] and all(math.isfinite(value) for value in summary["metrics"].values()), summary
    state = torch.load(step_checkpoints(run_dir)[0], map_location="cpu", weights_only=True)
    assert state["step"] == STEPS
    if mode == "fp16":  # the loss scaler is part of the checkpoint, so a resume continues its scale
        assert isinstance(state["scaler"], dict) and state["scaler"]["scale"] > 0, state["scaler"]
