"""DDPM (task ``diffusion``, model ``ddpm_unet``): DDIM sampling from fixed noise (determinism,
range, an oracle noise predictor recovers its image), a tiny Fashion-MNIST run at 32 px through
the CLI with its grids and its FD in the suite's classifier features on the DCGAN's footing,
resume equality on digits, and the Flowers-102 cluster config's smoke run (bf16, 64 px)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

TINY = [
    "model.channels=[8,16]",
    "model.attention=[false,true]",
    "model.layers_per_block=1",
    "model.attention_head_dim=8",
    "task.sample_steps=4",
    "train.optimizer.lr=0.002",
    "train.scheduler.warmup_steps=2",
    "train.log_every=1",
    "train.progress=log",
]
PNG = b"\x89PNG\r\n\x1a\n"


def tiny_diffusion(image_size: int = 16, **task_kwargs):
    """The task and its models (trained weights and EMA copy) as the engine builds them."""
    from types import SimpleNamespace

    from hpclab.tasks.diffusion import Diffusion

    task = Diffusion(sample_steps=5, **task_kwargs)
    info = SimpleNamespace(in_channels=1, image_size=image_size, num_classes=10, class_names=[], path=None)
    models = task.build_models(
        {
            "name": "ddpm_unet",
            "channels": [8, 16],
            "attention": [False, True],
            "layers_per_block": 1,
            "attention_head_dim": 8,
        },
        info,
    )
    return task, {k: m.eval() for k, m in models.items()}


def fit_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "fit"]


# --------------------------------------------------------------------------- sampling


def test_ddim_from_fixed_noise_is_deterministic_and_in_range():
    task, models = tiny_diffusion()
    noise = task.fixed_inputs(torch.device("cpu"), n=6)
    assert noise.shape == (6, 1, 16, 16)
    assert torch.equal(task.fixed_inputs(torch.device("cpu"), n=3), noise[:3])  # row i never depends on n
    first, again = task.generate(models, noise), task.generate(models, noise)
    assert first.shape == (6, 1, 16, 16) and torch.equal(first, again)
    assert first.min() >= 0 and first.max() <= 1 and first.std() > 0
    assert not torch.equal(task.generate(models, noise, steps=2), first)  # the step count is used
    # eta > 0 draws fresh noise at every step: reproducible from a seeded generator only
    stochastic = [task.generate(models, noise, torch.Generator().manual_seed(3), eta=1.0) for _ in range(2)]
    assert torch.equal(*stochastic) and not torch.equal(stochastic[0], first)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 5, 50])
def test_ddim_with_the_true_noise_recovers_the_image(schedule, steps):
    """With a model that predicts exactly the noise in x_t of a known image x_0, deterministic
    DDIM must land on x_0 from any starting noise, in any number of steps: the timesteps, the
    training betas and the final alpha of the sampler agree with the forward process."""
    from hpclab.tasks.diffusion import ddim_sample

    task, _ = tiny_diffusion(schedule=schedule)
    x0 = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    abar = task.noise_schedule.alphas_cumprod

    def oracle(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar[int(t)]
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    images = ddim_sample(oracle, torch.randn(3, 1, 16, 16), task.sampler(), steps)
    # one cosine step divides by sqrt(abar_999) = 5e-5: float32 rounding grows 20,000-fold
    torch.testing.assert_close(images, (x0 + 1) / 2, atol=2e-3 if (schedule, steps) == ("cosine", 1) else 1e-4, rtol=0)


def test_the_ema_copy_follows_the_trained_weights_and_has_no_optimizer():
    from omegaconf import OmegaConf

    task, models = tiny_diffusion()
    assert set(task.optimizer_configs(OmegaConf.create({"lr": 1.0}), list(models))) == {"model"}
    assert task.sampling_models == ("ema",) and not any(p.requires_grad for p in models["ema"].parameters())
    # diffusers' warm-up: the n-th update keeps min(decay, (1 + n) / (10 + n)) of the average
    trained = models["model"]
    for step in range(3):
        with torch.no_grad():
            for p in trained.parameters():
                p.add_(1.0)
        before = [p.clone() for p in models["ema"].module.parameters()]
        models["ema"].update_parameters(trained)
        keep = 0.0 if step == 0 else min(task.ema_decay, (1 + step) / (10 + step))  # the first update copies
        for p, old, new in zip(models["ema"].module.parameters(), before, trained.parameters()):
            torch.testing.assert_close(p, keep * old + (1 - keep) * new)
    plain, _ = tiny_diffusion(ema_decay=None)
    assert plain.sampling_models == ("model",)
    with pytest.raises(ValueError, match="task.schedule"):
        tiny_diffusion(schedule="quadratic")


# --------------------------------------------------------------------------- a tiny Fashion-MNIST run

FMNIST_DDPM = [
    "experiment=ddpm_fmnist",
    "preset=smoke",
    *TINY,
    "train.batch_size=32",
    "train.max_steps=36",
    "train.eval_every=null",
    "analysis.2.sample_steps=2",
    "analysis.3.steps=[1,2,4]",
]  # 18 steps an epoch


@pytest.fixture(scope="module")
def fmnist_ddpm(tmp_path_factory: pytest.TempPathFactory, fmnist_mirror: Path) -> dict:
    """Fashion-MNIST IDX files staged at 32 px (the DDPM) and 28 px (the classifier), a tiny
    fmnist_cnn, then two epochs of a tiny ddpm_fmnist with all its analyses, through the CLI."""
    work = tmp_path_factory.mktemp("fmnist_ddpm")
    env = {"HPCLAB_DATA": str(work / "data"), "HPCLAB_RESULTS": str(work / "results")}
    for experiment in ("ddpm_fmnist", "fmnist_cnn"):
        run_cli(
            "prepare_data.py",
            f"experiment={experiment}",
            f"data.mirrors=[{fmnist_mirror}]",
            "data.download=false",
            cwd=work,
            env=env,
        )
    run_cli(
        "launch.py",
        "experiment=fmnist_cnn",
        "preset=smoke",
        "train.max_steps=30",
        "train.eval_every=15",
        "train.batch_size=32",
        "train.progress=log",
        cwd=work,
        env=env,
    )
    proc = run_cli("launch.py", *FMNIST_DDPM, cwd=work, env=env)
    log = proc.stdout + proc.stderr
    return {"work": work, "run_dir": work / "results" / "ddpm_fmnist-smoke" / "default", "log": log}


@pytest.mark.slow
def test_tiny_fashion_mnist_ddpm_trains_and_draws_its_grids(fmnist_ddpm):
    run_dir = fmnist_ddpm["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 36
    assert summary["parameters"]["model"] == summary["parameters"]["ema"] > 0
    losses = [r["loss"] for r in fit_rows(run_dir)]
    assert len(losses) == 36 and all(np.isfinite(losses))
    assert np.mean(losses[-6:]) < 0.7 * np.mean(losses[:6])  # noise MSE starts near 1 and falls
    assert np.isfinite(summary["metrics"]["test/loss"])
    assert summary["analyses"]["sample_grids"]["shown"] == [1.0, 2.0]  # every epoch's grid in the overview
    figures = run_dir / "figures"
    for name in (
        "curves.png",
        "epochs/epoch_001.png",
        "epochs/epoch_002.png",
        "samples_by_epoch.png",
        "samples_final.png",
        "fd_classifier.png",
        "fd_sampling_steps.png",
        "samples_by_steps.png",
    ):
        assert (figures / name).read_bytes()[:8] == PNG, name
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step*.pt")) == [
        "step000000018.pt",
        "step000000036.pt",
    ]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_fd_of_the_ddpm_on_the_dcgans_footing(fmnist_ddpm):
    """fd_classifier scores every epoch with the classifier, reference, image count and floor
    and ceiling rows of the DCGAN; fd_sampling_steps shares them, and its 2-step row is the
    per-epoch table's final row (one sampling function, the same noise)."""
    from hpclab.analysis.fid import ClassifierFeatures, frechet_to, gaussian
    from hpclab.data.hdf5 import H5Split

    figures = fmnist_ddpm["run_dir"] / "figures"
    fd = json.loads((figures / "fd_classifier.json").read_text())
    by_steps = json.loads((figures / "fd_sampling_steps.json").read_text())
    assert fd["metric"] == by_steps["metric"] == "FD (Fashion-MNIST CNN features)"
    assert fd["reference_images"] == 600 and fd["images_per_set"] == by_steps["images_per_set"] == 200
    assert list(fd["by_epoch"]) == ["1.0", "2.0"] and fd["steps"] == 2
    # the config asks for epochs 1, 2 and 5; the 2-epoch run has no epoch 5, and says so
    assert "no kept checkpoint at epoch 5 (kept: 1, 2); those rows are left out" in fmnist_ddpm["log"]
    assert list(by_steps["by_steps"]) == ["1", "2", "4"]
    assert (fd["floor_real"], fd["noise"]) == (by_steps["floor_real"], by_steps["noise"])
    assert by_steps["by_steps"]["2"] == fd["final"]
    assert 0 <= fd["floor_real"] < min(*fd["by_epoch"].values(), *by_steps["by_steps"].values())
    # the floor is the classifier's FD of the real test set against the real training set
    net = ClassifierFeatures(fmnist_ddpm["work"] / "results" / "fmnist_cnn-smoke" / "default")
    data = fmnist_ddpm["work"] / "data" / "fashion_mnist_32px.h5"
    train, test = (H5Split(data, split).load()["images"] for split in ("train", "test"))
    assert frechet_to(gaussian(net(train)), net(test)) == pytest.approx(fd["floor_real"], rel=1e-4)
    for name in ("fd_classifier.md", "fd_sampling_steps.md"):
        table = (figures / name).read_text()
        assert "FID" not in table and "| real test set |" in table and "| uniform noise |" in table
    assert "| generated (final weights) | 4 |" in (figures / "fd_sampling_steps.md").read_text()


# --------------------------------------------------------------------------- resume

DIGITS_DDPM = [
    "experiment=ddpm_fmnist",
    "data=digits",
    "data.image_size=null",
    *TINY,
    "train.batch_size=64",
    "train.epochs=null",
    "train.max_steps=20",
    "train.checkpoint_every=5",
    "train.eval_every=10",
    "analysis=[]",
]


@pytest.mark.slow
def test_a_resumed_ddpm_ends_with_the_uninterrupted_runs_metrics_and_weights(digits):
    """Timesteps and noise come from the engine's generators, the EMA weights are a model of the
    checkpoint: resumed from step 10 (a stop leaves its newest checkpoint), the run ends with the
    same metric rows and bit-identical weights of both models."""
    straight, stopped = digits / "straight", digits / "stopped"
    for results in (straight, stopped):
        run_cli("launch.py", *DIGITS_DDPM, cwd=digits, env={"HPCLAB_RESULTS": str(results)})
    run_dir = stopped / "ddpm_fmnist" / "default"
    for path in (run_dir / "checkpoints").glob("step*.pt"):
        if int(path.stem.removeprefix("step")) > 10:
            path.unlink()
    (run_dir / "summary.json").unlink()
    run_cli("launch.py", *DIGITS_DDPM, cwd=digits, env={"HPCLAB_RESULTS": str(stopped)})
    assert "resumed from" in (run_dir / "run.log").read_text()

    reference = straight / "ddpm_fmnist" / "default"
    drop = ("images_per_s", "time")
    rows = [{k: v for k, v in r.items() if k not in drop} for r in fit_rows(run_dir)]
    assert rows == [{k: v for k, v in r.items() if k not in drop} for r in fit_rows(reference)]
    summaries = [json.loads((d / "summary.json").read_text()) for d in (reference, run_dir)]
    assert summaries[0]["metrics"] == summaries[1]["metrics"]
    final = [
        torch.load(d / "checkpoints" / "step000000020.pt", weights_only=True)["models"] for d in (reference, run_dir)
    ]
    for name in ("model", "ema"):
        assert final[0][name].keys() == final[1][name].keys()
        assert all(torch.equal(final[0][name][k], final[1][name][k]) for k in final[0][name]), name


# --------------------------------------------------------------------------- the cluster config


@pytest.mark.slow
def test_the_flowers_config_smoke_run_in_bf16_at_64px(tmp_path: Path, flowers: dict):
    """Few steps and samples: a CPU without native bf16 convolutions takes the slow path in bf16."""
    env = {"HPCLAB_DATA": str(tmp_path / "data"), "HPCLAB_RESULTS": str(tmp_path / "results")}
    run_cli(
        "prepare_data.py",
        "experiment=ddpm_flowers",
        f"data.mirrors=[{flowers['root']}]",
        "data.download=false",
        cwd=tmp_path,
        env=env,
    )
    proc = run_cli(
        "launch.py",
        "experiment=ddpm_flowers",
        "preset=smoke",
        *TINY,
        "model.attention=[false,false]",
        "task.samples=4",
        "task.sample_steps=2",
        "train.batch_size=8",
        "train.max_steps=2",
        "train.eval_every=1",
        "analysis=[curves,sample_grids]",
        cwd=tmp_path,
        env=env,
    )
    run_dir = tmp_path / "results" / "ddpm_flowers-smoke" / "default"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert "mixed precision bf16" in (run_dir / "run.log").read_text() and "val/loss" in proc.stdout
    assert np.isfinite(summary["metrics"]["val/loss"])
    from PIL import Image

    with Image.open(run_dir / "figures" / "samples_final.png") as grid:  # 4 RGB samples of 64 px in a row
        assert grid.mode == "RGB" and grid.size == (4 * 66 + 2, 66 + 2)
    assert sorted(p.name for p in (run_dir / "figures" / "epochs").iterdir()) == [
        "step_0000001.png",
        "step_0000002.png",
    ]
