"""pix2pix on top of the image-to-image tasks: the PatchGAN's grid, the wrapped task's inputs and
metrics, a resume after a stop, and (through the CLI, on the tiny Fashion-MNIST IDX mirror) the
shipped pix2pix_inpaint run next to the inpaint_ae L2 run with the FD-of-outputs analysis and the
comparison figure against a tiny classifier run."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import run_cli
from omegaconf import OmegaConf

from hpclab.config import compose
from hpclab.data.loader import DataInfo
from hpclab.errors import ConfigError, Preempted
from hpclab.models import MODELS
from hpclab.tasks import TASKS
from hpclab.tasks.pix2pix import Pix2Pix

# --------------------------------------------------------------------------- the discriminator


@pytest.mark.parametrize(
    "size, layers, grid, field", [(28, 1, 12, 16), (32, 1, 14, 16), (28, 2, 5, 34), (256, 3, 30, 70)]
)  # the last: the paper's 70x70
def test_patch_discriminator_gives_one_logit_per_patch(size, layers, grid, field):
    net = MODELS.build("patchgan", {"layers": layers}, in_channels=2, image_size=size)
    out = net(torch.rand(2, 2, size, size))
    assert out.shape == (2, 1, grid, grid) and out.dtype == torch.float32
    assert net.receptive_field == field
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2] * layers + [1, 1] and {c.kernel_size for c in convs} == {(4, 4)}
    # a logit sees its patch only: the bottom-right pixel changes the last logit, not the first
    net.eval()
    x = torch.rand(1, 2, size, size)
    y = x.clone()
    y[..., -1, -1] += 1
    with torch.no_grad():
        before, after = net(x)[0, 0], net(y)[0, 0]
    assert before[0, 0] == after[0, 0] and before[-1, -1] != after[-1, -1]


def test_patch_discriminator_refuses_an_image_too_small_for_its_layers():
    with pytest.raises(ValueError, match="leave no patch of a 8 px image"):
        MODELS.build("patchgan", {"layers": 2}, in_channels=2, image_size=8)
    spectral = MODELS.build("patchgan", {"norm": "spectral"}, in_channels=4, image_size=32)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in spectral.modules())
    assert all(hasattr(m, "parametrizations") for m in spectral.modules() if isinstance(m, torch.nn.Conv2d))


# --------------------------------------------------------------------------- the wrapped task

INFO = DataInfo(
    in_channels=1, image_size=28, num_classes=10, class_names=[str(i) for i in range(10)], path=Path("fashion_mnist.h5")
)
GENERATOR = {"name": "fcn_ae", "channels": [8, 16], "skips": "concat"}


@pytest.mark.parametrize("base", [{"name": "inpaint", "fraction": 0.25}, {"name": "denoise", "noise_std": 0.3}])
def test_metrics_and_inputs_are_the_wrapped_tasks_on_the_same_batch_and_seed(base):
    """The L2 task and its pix2pix version, the same generator weights, one batch, one seed:
    the same network input (mask, seeded noise), the same metrics and the same image rows."""
    kwargs = {k: v for k, v in base.items() if k != "name"}
    l2 = TASKS.build(base["name"], kwargs)
    gan = TASKS.build("pix2pix", {"base": base})
    torch.manual_seed(0)
    models = gan.build_models(dict(GENERATOR), INFO)
    assert set(models) == {"model", "discriminator"}
    batch = {"images": torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)}

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(1234)

    mine, theirs = gan.eval_step(models, batch, seeded()), l2.eval_step(models, batch, seeded())
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert ("hole_psnr" in mine) == (base["name"] == "inpaint")
    assert torch.equal(gan.model_input(batch, seeded()), l2.model_input(batch, seeded()))
    rows, expected = gan.images(models, batch, seeded()), l2.images(models, batch, seeded())
    assert rows.keys() == expected.keys() and all(torch.equal(rows[k], expected[k]) for k in rows)
    assert gan.baseline_name == l2.baseline_name and gan.row_names == l2.row_names


def test_discriminator_sees_the_input_and_an_image_concatenated():
    colour = TASKS.build("pix2pix", {"base": {"name": "colourize"}, "discriminator": {"name": "patchgan", "layers": 1}})
    rgb = DataInfo(in_channels=3, image_size=32, num_classes=10, class_names=list("abcdefghij"), path=Path("c.h5"))
    models = colour.build_models({"name": "colour_unet", "num_filters": 8}, rgb)
    assert models["discriminator"].features[0].in_channels == 1 + 3  # grey input + RGB output
    inpaint = TASKS.build("pix2pix", {"base": {"name": "inpaint"}})
    assert inpaint.build_models(dict(GENERATOR), INFO)["discriminator"].features[0].in_channels == 1 + 1


@pytest.mark.parametrize(
    "task, message",
    [
        ({"base": {"name": "classify"}}, "pix2pix wraps an image-to-image task"),
        ({"base": {"name": "inpaint", "size": 3}}, "'task.base.size': not a parameter of task.base 'inpaint'"),
        ({"base": {}}, "'task.base.name': missing"),
        ({"base": {"name": "inpaint"}, "l1_weight": -1}, "must be >= 0"),
    ],
)
def test_bad_pix2pix_settings_are_one_line_errors(task, message):
    with pytest.raises(ConfigError, match=message):
        TASKS.build("pix2pix", task)


def test_a_base_task_that_predicts_no_image_is_refused(tmp_path):
    classes = Pix2Pix(base={"name": "colourize_classes"})
    classes.base.build_models = lambda cfg, info: {"model": torch.nn.Identity()}  # no palette file needed
    rgb = DataInfo(in_channels=3, image_size=32, num_classes=10, class_names=list("abcdefghij"), path=tmp_path / "c.h5")
    with pytest.raises(ConfigError, match="predicts 24 maps, not an image of 3 channel"):
        classes.build_models({"name": "colour_unet"}, rgb)


def test_pix2pix_experiments_keep_the_l2_runs_data_network_masks_and_budget():
    """The comparison differs in the loss (and the paper's optimizer), nothing else."""
    pairs = [
        (compose(["experiment=pix2pix_inpaint"]), compose(["experiment=inpaint_ae"])),
        (
            compose(["experiment=pix2pix_colourize"]),
            compose(["experiment=colourize_cnn", "model=colour_unet", "run_name=colour_unet"]),
        ),
    ]
    for gan, l2 in pairs:
        assert OmegaConf.to_container(gan.task.base) == OmegaConf.to_container(l2.task)
        for key in ("data", "model"):
            assert OmegaConf.to_container(gan[key]) == OmegaConf.to_container(l2[key]), key
        assert (gan.train.epochs, gan.train.batch_size, gan.seed) == (l2.train.epochs, l2.train.batch_size, l2.seed)
        assert gan.task.l1_weight == 100 and list(gan.train.optimizer.betas) == [0.5, 0.999]
        assert gan.train.optimizer.lr == 2e-4 and gan.train.optimizer.name == "adam"
    smoke = compose(["experiment=pix2pix_inpaint", "preset=smoke", "task.base.fraction=0.5"])
    assert smoke.train.max_steps == 200 and smoke.task.base.fraction == 0.5


# --------------------------------------------------------------------------- training, stop and resume

DIGITS_PIX2PIX = [
    "experiment=pix2pix_inpaint",
    "data=digits",
    "model.channels=[8,16]",
    "task.discriminator.channels=8",
    "train.epochs=null",
    "train.batch_size=64",
    "train.progress=log",
    "train.max_steps=12",
    "train.eval_every=6",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "analysis=[]",
]


def test_pix2pix_trains_both_nets_and_resumes_after_a_stop_with_the_same_metrics(digits):
    """A stop at step 5 (as SIGUSR2 would: checkpoint at the step boundary, then Preempted), the
    same command again: the final metrics equal an uninterrupted run's, exactly."""
    from hpclab.engine.signals import StopSignals
    from hpclab.launch.job import run_dir_of, train_run

    straight = compose(DIGITS_PIX2PIX + ["run_name=straight"])
    reference = train_run(straight)
    records = [json.loads(x) for x in (run_dir_of(straight) / "metrics.jsonl").read_text().splitlines()]
    fit = [r for r in records if r["split"] == "fit"]
    assert len(fit) == 12 and all(math.isfinite(r[k]) for r in fit for k in ("d_loss", "g_loss", "g_adv", "l1"))
    assert fit[0]["g_loss"] == pytest.approx(fit[0]["g_adv"] + 100 * fit[0]["l1"], rel=1e-5)
    assert set(reference["parameters"]) == {"model", "discriminator"}
    assert "test/hole_psnr" in reference["metrics"] and reference["weights"] == "last"

    def stop_at_step_5(self, accelerator=None, step=0):
        if step == 5:
            self.received = signal.SIGUSR2
        return self.received is not None

    stopped = compose(DIGITS_PIX2PIX + ["run_name=stopped"])
    with mock.patch.object(StopSignals, "pending", stop_at_step_5), pytest.raises(Preempted, match="step 5"):
        train_run(stopped)
    assert not (run_dir_of(stopped) / "summary.json").exists()
    resumed = train_run(stopped)
    assert "resumed from" in (run_dir_of(stopped) / "run.log").read_text()
    assert resumed["steps"] == 12 and resumed["metrics"] == reference["metrics"]


# --------------------------------------------------------------------------- the comparison, through the CLI

TINY = [
    "preset=smoke",
    "train.max_steps=6",
    "train.eval_every=3",
    "train.batch_size=16",
    "train.progress=log",
    "model.channels=[8,16]",
]


@pytest.fixture(scope="module")
def fmnist_pair(tmp_path_factory: pytest.TempPathFactory, fmnist_mirror: Path) -> dict:
    """The tiny Fashion-MNIST mirror staged; a tiny fmnist_cnn and inpaint_ae, fd_outputs on the
    L2 run through jobs/analyze.py, then pix2pix_inpaint with its shipped analyses (FD of
    outputs and the comparison with the inpaint_ae run), in the order of docs/drafts/pix2pix.md."""
    work = tmp_path_factory.mktemp("pix2pix_fmnist")
    env = {"HPCLAB_DATA": str(work / "data"), "HPCLAB_RESULTS": str(work / "results"), "OMP_NUM_THREADS": "1"}
    run_cli(
        "prepare_data.py",
        "data=fashion_mnist",
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
    run_cli("launch.py", "experiment=inpaint_ae", *TINY, cwd=work, env=env)
    results = work / "results"
    analyzed = run_cli(
        "analyze.py",
        str(results / "inpaint_ae-smoke" / "default"),
        "fd_outputs",
        f"classifier={results / 'fmnist_cnn-smoke' / 'default'}",
        cwd=work,
        env=env,
    )
    run_cli("launch.py", "experiment=pix2pix_inpaint", *TINY, "task.discriminator.channels=8", cwd=work, env=env)
    return {
        "work": work,
        "env": env,
        "results": results,
        "l2": results / "inpaint_ae-smoke" / "default",
        "gan": results / "pix2pix_inpaint-smoke" / "default",
        "analyzed": analyzed.stdout,
    }


@pytest.mark.slow
def test_fd_of_outputs_on_the_pix2pix_and_the_l2_run(fmnist_pair):
    """The same analysis on both runs: the same real reference and baseline (same images, same
    masks), each its own network's FD; the classifier's features, never called FID."""
    l2, gan = (json.loads((fmnist_pair[name] / "figures" / "fd_outputs.json").read_text()) for name in ("l2", "gan"))
    for record in (l2, gan):
        assert record["metric"] == "FD (Fashion-MNIST CNN features)" and record["images"] == 200
        assert record["classifier"].endswith("fmnist_cnn-smoke/default") and record["split"] == "test"
        assert record["floor_split"] == "train" and record["baseline_name"] == "masked"
        assert all(np.isfinite(record[k]) and record[k] >= 0 for k in ("fd", "baseline", "floor"))
    assert gan["baseline"] == pytest.approx(l2["baseline"]) and gan["floor"] == pytest.approx(l2["floor"])
    assert gan["fd"] != l2["fd"]
    table = (fmnist_pair["gan"] / "figures" / "fd_outputs.md").read_text()
    assert "FID" not in table.replace("not FID", "") and "| masked input (no learning) |" in table
    assert json.loads((fmnist_pair["l2"] / "summary.json").read_text())["analyses"]["fd_outputs"]["fd"] == l2["fd"]
    assert '"fd":' in fmnist_pair["analyzed"]


@pytest.mark.slow
def test_pix2pix_run_and_its_comparison_with_the_l2_run(fmnist_pair):
    gan = fmnist_pair["gan"]
    summary = json.loads((gan / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert all(math.isfinite(v) for v in summary["metrics"].values())
    figures = gan / "figures"
    for name in ("examples_test.png", "compare_test.png", "compare_metrics_test.png", "curves.png", "metrics_test.md"):
        assert (figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" or name.endswith(".md"), name
    compare = summary["analyses"]["compare_examples"]
    assert compare["images"] == 10 and compare["other"].endswith("inpaint_ae-smoke/default")
    assert compare["figure"] == str(figures / "compare_test.png") != compare["png"]
    lines = (figures / "compare_metrics_test.md").read_text().splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    assert list(rows)[:1] == ["method"] and set(rows) == {
        "method",
        "masked input (no learning)",
        "inpaint_ae-smoke",  # rows name runs by group (run_label), here the smoke groups
        "pix2pix_inpaint-smoke",
    }
    assert "hole_psnr" in rows["method"]
    for run, label in ((fmnist_pair["l2"], "inpaint_ae-smoke"), (gan, "pix2pix_inpaint-smoke")):
        final = json.loads((run / "summary.json").read_text())["metrics"]
        fd = json.loads((run / "figures" / "fd_outputs.json").read_text())["fd"]
        for value in (final["test/psnr"], final["test/hole_psnr"], fd):
            assert f" {float(f'{value:.6g}')} |" in rows[label], (label, value)


@pytest.mark.slow
def test_comparison_refuses_a_run_with_other_inputs(fmnist_pair):
    """Another mask size in the other run, or no run there: one line, not a figure of
    incomparable outputs."""
    env = fmnist_pair["env"]
    run_cli(
        "launch.py",
        "experiment=inpaint_ae",
        *TINY,
        "task.fraction=0.5",
        "run_name=half",
        cwd=fmnist_pair["work"],
        env=env,
    )
    proc = run_cli(
        "analyze.py",
        str(fmnist_pair["gan"]),
        "compare_examples",
        f"other={fmnist_pair['results'] / 'inpaint_ae-smoke' / 'half'}",
        cwd=fmnist_pair["work"],
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: analysis compare_examples: ")
    assert "makes other network inputs from the same images" in proc.stderr
    missing = run_cli(
        "analyze.py",
        str(fmnist_pair["gan"]),
        "compare_examples",
        f"other={fmnist_pair['results'] / 'inpaint_ae-smoke' / 'nothing'}",
        cwd=fmnist_pair["work"],
        env=env,
        check=False,
    )
    assert missing.returncode == 2 and "no run at" in missing.stderr.strip().splitlines()[-1]
