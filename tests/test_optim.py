"""Optimizers and learning-rate schedules come from one registry each (hpclab/optim.py): a name
neither has is refused when the config is composed (dry runs and sweeps included), and the
registered names build the same torch objects as always, so checkpoints of earlier runs resume."""

from __future__ import annotations

import pytest
import torch
from conftest import run_main

from hpclab.config import compose
from hpclab.engine.build import build_optimizer, build_scheduler
from hpclab.errors import ConfigError
from hpclab.optim import OPTIMIZERS, SCHEDULERS


@pytest.mark.parametrize(
    "command, key, value, known",
    [
        (["experiment=ae_latent", "dry_run=true"], "train.scheduler.name", "linear", "none, cosine, onecycle, step"),
        (["sweep=ae_latent", "dry_run=true"], "train.scheduler.name", "Cosine", "none, cosine, onecycle, step"),
        (["experiment=fmnist_cnn", "dry_run=true"], "train.optimizer.name", "rmsprop", "adam, adamw, sgd"),
    ],
)
def test_an_unknown_name_is_one_line_at_composition_listing_the_known_names(workdir, command, key, value, known):
    proc = run_main("launch.py", *command, f"{key}={value}", cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: config key '{key}': '{value}' is not one of {known}"]
    assert not (workdir / "results").exists()


def test_the_registries_are_the_names_the_config_accepts():
    for name in SCHEDULERS:
        assert compose([f"train.scheduler.name={name}"]).train.scheduler.name == name
    for name in OPTIMIZERS:
        assert compose([f"train.optimizer.name={name}"]).train.optimizer.name == name
    with pytest.raises(ConfigError, match="'train.scheduler.name': 'cosine_restarts' is not one of"):
        compose(["train.scheduler.name=cosine_restarts"])


def schedule(name: str, warmup_steps: int = 0, total_steps: int = 20) -> tuple[torch.optim.Optimizer, object]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    cfg = compose([f"train.scheduler.name={name}", f"train.scheduler.warmup_steps={warmup_steps}"]).train.scheduler
    return opt, build_scheduler(opt, cfg, 0.1, total_steps)


# The torch schedulers each name builds (checkpoints hold their state_dicts: the same classes
# and keys are what lets a run started before resume exactly).
@pytest.mark.parametrize(
    "name, warmup, expected",
    [
        ("none", 0, ["ConstantLR"]),
        ("none", 5, ["SequentialLR", "LinearLR", "ConstantLR"]),
        ("cosine", 0, ["CosineAnnealingLR"]),
        ("cosine", 5, ["SequentialLR", "LinearLR", "CosineAnnealingLR"]),
        ("step", 5, ["SequentialLR", "LinearLR", "StepLR"]),
        ("onecycle", 5, ["OneCycleLR"]),  # its own warm-up: warmup_steps is not added
    ],
)
def test_each_schedule_builds_its_torch_schedulers(name, warmup, expected):
    _, sched = schedule(name, warmup)
    built = [type(sched).__name__] + [type(s).__name__ for s in getattr(sched, "_schedulers", [])]
    assert built == expected
    state = sched.state_dict()
    assert state["last_epoch"] == 0 and ("_schedulers" in state) == (len(expected) > 1)


def test_warmup_rises_linearly_then_cosine_decays_to_zero():
    opt, sched = schedule("cosine", warmup_steps=4, total_steps=14)
    rates = [opt.param_groups[0]["lr"]]
    for _ in range(14):
        opt.step()
        sched.step()
        rates.append(opt.param_groups[0]["lr"])
    assert rates[0] == pytest.approx(1e-4) and rates[4] == pytest.approx(0.1)
    assert rates[:5] == sorted(rates[:5]) and rates[4:] == sorted(rates[4:], reverse=True)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "name, momentum, expected, nesterov",
    [
        ("adam", 0.9, torch.optim.Adam, None),
        ("adamw", 0.9, torch.optim.AdamW, None),
        ("sgd", 0.9, torch.optim.SGD, True),
        ("sgd", 0.0, torch.optim.SGD, False),
    ],
)
def test_each_optimizer_name_builds_its_torch_optimizer(name, momentum, expected, nesterov):
    cfg = compose(
        [
            f"train.optimizer.name={name}",
            f"train.optimizer.momentum={momentum}",
            "train.optimizer.weight_decay=0.01",
            "train.optimizer.betas=[0.5,0.9]",
        ]
    ).train.optimizer
    opt = build_optimizer(iter([torch.nn.Parameter(torch.zeros(2))]), cfg, fused=False)
    assert type(opt) is expected and opt.defaults["weight_decay"] == 0.01
    if nesterov is None:
        assert opt.defaults["betas"] == (0.5, 0.9)
    else:
        assert opt.defaults["nesterov"] is nesterov and opt.defaults["momentum"] == momentum
