"""Contrastive (SimCLR-style) pretraining: the NT-Xent loss against hand-computed cases, the
seeded per-image views, a run on real data through the CLI (retrieval above chance, exact
resume), and the downstream code reading the run: latent probes, the classifier that loads its
encoder, and the three-arm fine-tuning sweep."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli

from hpclab.errors import ConfigError
from hpclab.launch.sweep import plan
from hpclab.models import MODELS
from hpclab.rundir import step_checkpoints
from hpclab.tasks import TASKS
from hpclab.tasks.contrastive import nt_xent

# the contrastive experiment on scikit-learn's 8x8 digits, small enough for seconds per run
DIGITS_SIMCLR = [
    "experiment=simclr",
    "data=digits",
    "model.channels=[8,16]",
    "train.epochs=null",
    "train.batch_size=64",
    "train.log_every=10",
    "train.progress=log",
    "analysis=[]",
]


# --------------------------------------------------------------------------- the loss


def test_nt_xent_of_two_images_whose_views_match_exactly():
    e1, e2 = torch.eye(2)
    loss, found = nt_xent(torch.stack([e1, e2]), 3 * torch.stack([e1, e2]), temperature=1.0)
    # each view: partner at cosine 1, the two others at 0 -> -log(e / (e + 2)); lengths do not count
    assert loss.item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)
    assert found.tolist() == [True] * 4


def test_nt_xent_when_every_view_is_closer_to_a_stranger():
    # views a = e1, b = e2 | u = (0.6, 0.8), v = (0.8, 0.6); partners a-u, b-v; temperature 0.5:
    # a: b 0, u 1.2, v 1.6 | b: a 0, u 1.6, v 1.2 | u: a 1.2, b 1.6, v 1.92 | v: a 1.6, b 1.2, u 1.92
    z1, z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    loss, found = nt_xent(z1, z2, temperature=0.5)
    e = math.exp
    expected = -1.2 + (math.log(1 + e(1.2) + e(1.6)) + math.log(e(1.2) + e(1.6) + e(1.92))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert not found.any()


def test_nt_xent_gradient_pulls_partners_together():
    z1 = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    z2 = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    nt_xent(z1, z2, 0.5)[0].backward()
    with torch.no_grad():
        moved = z1 - 0.5 * z1.grad
        before = torch.nn.functional.cosine_similarity(z1, z2).mean()
        assert torch.nn.functional.cosine_similarity(moved, z2).mean() > before


# --------------------------------------------------------------------------- the views


def test_two_views_differ_per_image_and_repeat_with_the_seed():
    task = TASKS.build("contrastive", {})
    x = torch.rand(1, 1, 28, 28).expand(6, 1, 28, 28).contiguous()  # one image six times

    def views(seed: int) -> torch.Tensor:
        return task.views(x, torch.Generator().manual_seed(seed))

    first = views(7)
    assert first.shape == (12, 1, 28, 28) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, views(7))  # reproducible given the generator's seed
    assert not torch.equal(first, views(8))
    assert not torch.allclose(first[:6], first[6:])  # the two views of an image differ
    assert len({v.sum().item() for v in first}) == 12  # and every image draws its own


def test_a_full_crop_without_flip_or_jitter_keeps_the_image():
    from hpclab.data.transforms import jitter_brightness_contrast, random_resized_crop

    x = torch.rand(4, 1, 28, 28)
    same = random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    assert torch.allclose(same, x, atol=1e-5)
    assert torch.allclose(jitter_brightness_contrast(x, 0.4, p=0.0), x, atol=1e-6)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"temperature": 0}, "task.temperature"),
        ({"crop_scale": [0.5, 0.2]}, "task.crop_scale"),
        ({"jitter": 1.5}, "task.jitter"),
    ],
)
def test_bad_task_settings_name_their_key(override, message):
    with pytest.raises(ConfigError, match=message):
        TASKS.build("contrastive", override)


# --------------------------------------------------------------------------- configs


def test_the_sweeps_expand_to_readable_runs_on_the_same_footing(workdir):
    temperature = plan(["sweep=simclr_temperature"])
    assert temperature.run_names[0] == "temperature-0.1__batch_size-128" and len(temperature) == 6
    assert {(c.task.temperature, c.train.batch_size, c.train.epochs) for c in temperature.runs} == {
        (t, b, 10) for t in (0.1, 0.5, 1.0) for b in (128, 512)
    }
    simclr = temperature.runs[0]
    assert (simclr.model.name, simclr.model.latent_dim, list(simclr.model.channels)) == ("conv_ae", 32, [32, 64, 128])

    compare = plan(["sweep=pretrain_compare"])
    assert len(compare) == 27 and compare.run_names[0] == "encoder-scratch__train_fraction-0.01__seed-0"
    arms = {
        name.split("__")[0]: (c.model.pretrained, c.model.encoder_from)
        for name, c in zip(compare.run_names, compare.runs)
    }
    assert arms["encoder-scratch"] == (False, None)
    assert arms["encoder-ae"][0] and arms["encoder-ae"][1].endswith("results/ae_latent/latent_dim-32")
    assert arms["encoder-simclr"][0] and arms["encoder-simclr"][1].endswith("results/simclr/default")
    assert len({(c.train.max_steps, str(c.model.ae)) for c in compare.runs}) == 1  # same steps, same network


# --------------------------------------------------------------------------- runs


def final_metrics(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())["metrics"]


def records(folder: Path) -> list[dict]:
    """metrics.jsonl without the timing column (the only one that may differ between runs)."""
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


@pytest.mark.slow
def test_contrastive_run_feeds_the_probes_and_the_classifier(digits):
    run_cli(
        "launch.py",
        *DIGITS_SIMCLR,
        "train.max_steps=60",
        "train.eval_every=30",
        "analysis=[examples,{name:latent_probe,epochs:3}]",
        cwd=digits,
    )
    run = digits / "results" / "simclr" / "default"
    metrics = final_metrics(run)
    chance = 1 / (2 * 360 - 1)  # the digits' 360 test images are one evaluation batch: 719 candidates
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["test/pair_acc"] > 10 * chance
    fit = [r for r in records(run) if r["split"] == "fit"]
    assert fit[-1]["loss"] < fit[0]["loss"]
    probe = json.loads((run / "summary.json").read_text())["analyses"]["latent_probe"]
    assert probe["latent_dim"] == 32 and 0 <= probe["linear_test_acc"] <= 1 and probe["mlp_test_acc"] > 0.2

    from safetensors.torch import load_file

    state = load_file(str(run / "checkpoints" / "best_model.safetensors"))
    ae = {"name": "conv_ae", "latent_dim": 32, "channels": [8, 16]}
    clf = MODELS.build(
        "ae_encoder_classifier",
        {"ae": ae, "pretrained": True, "encoder_from": str(run)},
        in_channels=1,
        image_size=8,
        num_classes=10,
    )
    encoder = clf.features.autoencoder
    assert torch.equal(encoder.features[0].weight, state["features.autoencoder.features.0.weight"])
    assert torch.equal(encoder.to_latent[1].weight, state["features.autoencoder.to_latent.1.weight"])
    assert any(k.startswith("head.") for k in state)  # the projection head is there, and not taken

    # the three-arm sweep's scratch and simclr arms (sweep.subset=2 keeps the first and last encoder)
    run_cli(
        "launch.py",
        "sweep=pretrain_compare",
        "sweep.subset=2",
        "train.batch_size=64",
        "data=digits",
        "model.ae.channels=[8,16]",
        "train.max_steps=20",
        "train.eval_every=10",
        "seed=0",
        "data.train_fraction=1.0",
        cwd=digits,
    )
    rows = (digits / "results" / "pretrain_compare" / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("run,data.train_fraction,encoder,seed,test/acc")
    assert sorted(r.split(",")[2] for r in rows[1:]) == ["scratch", "simclr"]


@pytest.mark.slow
def test_resume_after_kill_draws_the_same_views(digits):
    args = [*DIGITS_SIMCLR, "train.max_steps=120", "train.eval_every=40", "train.checkpoint_every=20"]
    run_cli("launch.py", *args, cwd=digits, env={"HPCLAB_RESULTS": str(digits / "straight")})
    env = {**os.environ, "HPCLAB_RESULTS": str(digits / "killed"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / "launch.py"), *args],
        cwd=digits,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = digits / "killed" / "simclr" / "default"
    deadline = time.time() + 180
    while time.time() < deadline and not step_checkpoints(run) and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = step_checkpoints(run)
    assert saved and 0 < int(saved[0].stem.removeprefix("step")) < 120, "killed before a checkpoint or after the end"

    run_cli("launch.py", *args, cwd=digits, env={"HPCLAB_RESULTS": str(digits / "killed")})
    assert "resumed from" in (run / "run.log").read_text()
    straight = digits / "straight" / "simclr" / "default"
    assert final_metrics(run) == final_metrics(straight)
    assert records(run) == records(straight)
