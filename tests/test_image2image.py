"""Image-to-image networks: own conv vs torch, Dice formula, palette, sizes, and every
experiment's smoke run through the CLI on small files in the real formats (CIFAR-10 python
batches; Fashion-MNIST IDX files; brain-MRI phantom PNG/TIFF folders)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from formats.cifar import write_cifar10

from hpclab.models.conv import Conv2d, unfold_conv2d
from hpclab.tasks.image2image import dice_loss, overlap_scores

CIFAR_EXPERIMENTS = [
    "colourize_cnn",
    "colourize_classes",
    "colourize_unet",
    "superres_cnn",
    "superres_unet",
    "denoise_ae",
    "inpaint_ae",
]
SEG_EXPERIMENTS = ["brain_seg", "brain_seg_mse", "brain_seg_bce", "brain_seg_unet"]
TINY = [
    "preset=smoke",
    "sweep.subset=0",
    "train.max_steps=2",
    "train.eval_every=2",
    "train.batch_size=8",
    "train.eval_batch_size=64",
    "data.limit=32",
    "train.progress=log",
]


def _env(root: Path) -> dict[str, str]:
    # one thread: the machine's cores are shared, and oversubscribed BLAS threads crawl
    return {"HPCLAB_DATA": str(root / "data"), "HPCLAB_RESULTS": str(root / "results"), "OMP_NUM_THREADS": "1"}


def _summary(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert all(math.isfinite(v) for v in summary["metrics"].values()), summary["metrics"]
    return summary


# --------------------------------------------------------------------------- fixtures: CLI runs


@pytest.fixture(scope="module")
def cifar_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10 batches in the real pickle layout, staged by prepare_data, then every CIFAR
    image-to-image experiment for 2 steps in one launch (the experiment axis); denoise_ae and
    inpaint_ae default to Fashion-MNIST and run on CIFAR-10 through data=cifar10."""
    root = tmp_path_factory.mktemp("i2i_cifar")
    write_cifar10(root / "mirror", n_train=300, n_test=60, seed=0)
    env = _env(root)
    run_cli(
        "prepare_data.py", "data=cifar10", f"data.mirrors=[{root / 'mirror'}]", "data.download=false", cwd=root, env=env
    )
    proc = run_cli("launch.py", "experiment=" + ",".join(CIFAR_EXPERIMENTS), "data=cifar10", *TINY, cwd=root, env=env)
    (root / "launch.log").write_text(proc.stdout + proc.stderr)
    return root


@pytest.fixture(scope="module")
def fmnist_runs(tmp_path_factory: pytest.TempPathFactory, fmnist_mirror: Path) -> Path:
    """Fashion-MNIST IDX files staged by prepare_data, then sweep=denoise_skips (all three skip
    variants) and inpaint_ae as they ship (Fashion-MNIST is their default data)."""
    root = tmp_path_factory.mktemp("i2i_fmnist")
    env = _env(root)
    run_cli(
        "prepare_data.py",
        "data=fashion_mnist",
        f"data.mirrors=[{fmnist_mirror}]",
        "data.download=false",
        cwd=root,
        env=env,
    )
    run_cli("launch.py", "sweep=denoise_skips", *TINY, cwd=root, env=env)
    run_cli("launch.py", "experiment=inpaint_ae", *TINY, cwd=root, env=env)
    return root


@pytest.fixture(scope="module")
def seg_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240x240 phantoms written by make_phantoms, staged by prepare_data, then the three
    segmentation experiments with tiny widths."""
    root = tmp_path_factory.mktemp("i2i_seg")
    env = _env(root)
    out = run_cli("make_phantoms.py", str(root / "phantoms"), "--count", "10", cwd=root, env=env)
    assert "wrote 10 phantom slices (240x240" in out.stdout
    run_cli("prepare_data.py", "data=brain_mri", f"data.mirrors=[{root / 'phantoms'}]", cwd=root, env=env)
    run_cli(
        "launch.py",
        "experiment=" + ",".join(SEG_EXPERIMENTS),
        *TINY,
        "train.batch_size=2",
        "train.eval_batch_size=4",
        "model.channels=[4,8]",
        cwd=root,
        env=env,
    )
    return root


# --------------------------------------------------------------------------- own convolution


@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,bias,size",
    [
        (3, 1, 1, 1, True, (9, 9)),
        (3, 2, 1, 1, True, (10, 13)),
        (5, 1, 2, 2, False, (12, 11)),
        (1, 1, 0, 1, True, (7, 5)),
        ((3, 5), (2, 1), (0, 2), (1, 3), True, (11, 14)),
    ],
)
def test_own_conv_matches_torch_conv2d(kernel, stride, padding, dilation, bias, size):
    gen = torch.Generator().manual_seed(0)
    conv = Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias).double()
    x = torch.randn(2, 3, *size, generator=gen, dtype=torch.float64, requires_grad=True)
    ours = conv(x)
    ref = F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=padding, dilation=dilation)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref)
    grad = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    g_ours = torch.autograd.grad(ours, [x, conv.weight], grad)
    g_ref = torch.autograd.grad(
        F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=padding, dilation=dilation), [x, conv.weight], grad
    )
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b)


def test_own_conv_same_padding_and_errors():
    conv = Conv2d(2, 3, 5, padding=None, dilation=2)
    assert conv(torch.zeros(1, 2, 16, 16)).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="expects 3 input channels"):
        unfold_conv2d(torch.zeros(1, 2, 8, 8), torch.zeros(4, 3, 3, 3))
    with pytest.raises(ValueError, match="too small"):
        unfold_conv2d(torch.zeros(1, 3, 2, 2), torch.zeros(4, 3, 3, 3))


# --------------------------------------------------------------------------- Dice, IoU


def test_dice_loss_formula_on_known_inputs():
    eps = 1e-6
    p = torch.tensor([0.5, 0.5, 1.0, 0.0], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    # 2*sum(p t) = 2 * 1.5 = 3; sum p^2 = 1.5; sum t^2 = 2
    assert dice_loss(p, t, eps).item() == pytest.approx(1 - (3 + eps) / (3.5 + eps), abs=1e-12)
    assert dice_loss(t, t, eps).item() == pytest.approx(0.0, abs=1e-12)
    assert dice_loss(p.float(), t.float(), eps).dtype == torch.float32
    zeros, ones = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    assert dice_loss(zeros, zeros, eps).item() == pytest.approx(0.0, abs=1e-12)  # eps / eps
    assert dice_loss(zeros, ones, eps).item() == pytest.approx(1 - eps / (4 + eps), abs=1e-12)
    # sums run over the whole batch, not per image
    batch_p, batch_t = torch.stack([p, zeros]), torch.stack([t, ones])
    assert dice_loss(batch_p, batch_t, eps).item() == pytest.approx(1 - (3 + eps) / (1.5 + 6 + eps), abs=1e-12)


def test_binarized_dice_and_iou_per_image():
    pred = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    truth = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.float32)
    dice, iou = overlap_scores(pred, truth)
    assert dice.tolist() == pytest.approx([2 / 3, 1.0, 0.0], abs=1e-5)  # empty vs empty counts as perfect
    assert iou.tolist() == pytest.approx([1 / 2, 1.0, 0.0], abs=1e-5)


# --------------------------------------------------------------------------- models and sizes


@pytest.mark.parametrize("skips", ["none", "add", "concat"])
def test_encoder_decoder_runs_on_any_size(skips):
    from hpclab.models import MODELS

    model = MODELS.build("fcn_ae", {"channels": [4, 8, 8], "skips": skips}, in_channels=3).eval()
    for size in [(32, 32), (27, 45), (64, 48)]:
        out = model(torch.rand(1, 3, *size))
        assert out.shape == (1, 3, *size) and 0 <= out.min() and out.max() <= 1


def test_segmentation_nets_keep_240_and_only_the_unet_has_skips():
    from hpclab.config import compose
    from hpclab.models import MODELS
    from hpclab.registry import kwargs_of

    nets = {}
    for name in ("brain_seg", "brain_seg_unet"):
        cfg = compose([f"experiment={name}"])
        nets[name] = MODELS.build(cfg.model.name, kwargs_of(cfg.model), in_channels=1).eval()
        with torch.no_grad():
            assert nets[name](torch.rand(1, 1, 240, 240)).shape == (1, 1, 240, 240)
    assert [m.mode for m in nets["brain_seg"].merge] == ["none"] * 3  # the autoencoder of docs/briefs.md
    assert [m.mode for m in nets["brain_seg_unet"].merge] == ["concat"] * 3
    counts = {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}
    assert counts == {"brain_seg": 434_769, "brain_seg_unet": 445_633}  # the U-Net's 1x1 fuse convs


def test_colour_unet_concatenates_skips_and_input():
    from hpclab.models import MODELS

    unet = MODELS.build("colour_unet", {"num_filters": 8}, in_channels=1, out_channels=24)
    cnn = MODELS.build("colour_cnn", {"num_filters": 8}, in_channels=1, out_channels=24)
    assert unet.upconv1[0].in_channels == 2 * 16 and cnn.upconv1[0].in_channels == 16
    assert unet.upconv2[0].in_channels == 2 * 8 and unet.finalconv.in_channels == 24 + 1
    assert isinstance(unet.finalconv, Conv2d)  # the project's own conv by default
    assert unet(torch.rand(2, 1, 32, 32)).shape == (2, 24, 32, 32)


def test_tasks_reject_data_they_cannot_use():
    from hpclab.config import ConfigError
    from hpclab.data.loader import DataInfo
    from hpclab.tasks import TASKS

    grey = DataInfo(in_channels=1, image_size=28, num_classes=10, class_names=[], path=Path("fashion_mnist.h5"))
    with pytest.raises(ConfigError, match="needs RGB images"):
        TASKS["colourize"]().build_models({"name": "colour_cnn"}, grey)
    with pytest.raises(ConfigError, match="not divisible by 3"):
        TASKS["super_resolve"](factor=3, upsample="bilinear").build_models({"name": "colour_cnn"}, grey)
    with pytest.raises(ConfigError, match="'masks' array"):
        TASKS["segment"]().model_input({"images": torch.zeros(1, 1, 8, 8, dtype=torch.uint8)})
    with pytest.raises(ConfigError, match="task.loss"):
        TASKS["segment"](loss="hinge")


def test_residual_super_resolution_starts_at_its_input():
    from hpclab.config import compose
    from hpclab.data.loader import DataInfo
    from hpclab.registry import kwargs_of
    from hpclab.tasks import TASKS

    rgb = DataInfo(in_channels=3, image_size=32, num_classes=10, class_names=[], path=Path("cifar10.h5"))
    named = compose(["experiment=superres_cnn", "task=super_resolve_residual", "task.factor=4"]).task
    task = TASKS.build(named.name, kwargs_of(named))
    assert (task.upsample, task.residual, task.factor) == ("bilinear", True, 4)
    model = task.build_models({"name": "colour_cnn", "num_filters": 4}, rgb)["model"].eval()
    x = torch.rand(2, 3, 32, 32)
    inp = task.make_input(x, None)
    assert inp.shape == x.shape and torch.equal(task.predict(model, inp), inp)  # zero-initialised last conv
    _, metrics = task.loss({"model": model}, {"images": x}, train=False)
    assert metrics["psnr"].item() == pytest.approx(metrics["bilinear_psnr"].item())


@pytest.mark.parametrize("factor", [2, 4])
def test_plain_super_resolution_cnn_sees_low_resolution_and_learns_the_upsampling(factor):
    """The plain CNN of docs/briefs.md (the default): low-resolution input, transposed convs up, no
    residual and no zeroed conv, so at step 0 it is not bilinear interpolation."""
    from hpclab.config import ConfigError, compose
    from hpclab.data.loader import DataInfo
    from hpclab.models.image2image import LearnedUpsampling
    from hpclab.registry import kwargs_of
    from hpclab.tasks import TASKS

    rgb = DataInfo(in_channels=3, image_size=32, num_classes=10, class_names=[], path=Path("cifar10.h5"))
    cfg = compose(["experiment=superres_cnn", f"task.factor={factor}"])
    task = TASKS.build(cfg.task.name, kwargs_of(cfg.task))
    assert (task.upsample, task.residual) == ("learned", False)
    model = task.build_models(dict(kwargs_of(cfg.model), name=cfg.model.name), rgb)["model"].eval()
    assert isinstance(model, LearnedUpsampling)
    ups = [m for m in model.upsample if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(ups) == {2: 1, 4: 2}[factor] and all(m.stride == (2, 2) for m in ups)
    x = torch.rand(2, 3, 32, 32)
    inp = task.make_input(x, None)
    assert inp.shape == (2, 3, 32 // factor, 32 // factor)
    with torch.no_grad():
        out = task.predict(model, inp)
        bilinear = task.baseline(x, inp)
    assert out.shape == x.shape and bilinear.shape == x.shape and not torch.allclose(out, bilinear, atol=1e-2)
    with pytest.raises(ConfigError, match="task.residual"):
        TASKS["super_resolve"](upsample="learned", residual=True)
    with pytest.raises(ConfigError, match="power of two"):
        TASKS["super_resolve"](factor=3)


# --------------------------------------------------------------------------- CIFAR experiments


def test_cifar_experiments_smoke(cifar_runs: Path):
    group = cifar_runs / "results" / "default-smoke"
    expect = {
        "colourize_cnn": ["test/grey_psnr"],
        "colourize_classes": ["test/acc", "test/palette_psnr"],
        "colourize_unet": ["test/acc"],
        "superres_cnn": ["test/bilinear_psnr"],
        "superres_unet": ["test/bilinear_psnr"],
        "denoise_ae": ["test/noisy_psnr"],
        "inpaint_ae": ["test/hole_psnr", "test/masked_psnr"],
    }
    for name, keys in expect.items():
        run = group / f"experiment-{name}"
        summary = _summary(run)
        assert summary["experiment"] == name
        assert {"test/mse", "test/psnr", *keys} <= set(summary["metrics"]), (name, summary["metrics"])
        assert (run / "figures" / "examples_test.png").is_file()
        assert (run / "figures" / "metrics_test.md").is_file()
        assert (run / "figures" / "curves.png").is_file()
    # the layer table of the colourization CNN: 6 convs, filters NF, 2NF, 2NF, NF, out, out
    cnn = _summary(group / "experiment-colourize_cnn")["analyses"]["layer_table"]
    assert cnn["conv_layers"] == 6 and cnn["filters"] == [32, 64, 64, 32, 3, 3] and cnn["kernels"] == ["3x3"]
    classes = _summary(group / "experiment-colourize_classes")["analyses"]["layer_table"]
    assert classes["filters"] == [32, 64, 64, 32, 24, 24]
    table = (group / "experiment-colourize_unet" / "figures" / "layers_model.md").read_text()
    assert "Conv2d (own, unfold/matmul)" in table and "| finalconv | Conv2d (own, unfold/matmul) | 25 | 24 |" in table
    # bilinear is the super-resolution baseline; PSNR table holds both rows
    sr = (group / "experiment-superres_cnn" / "figures" / "metrics_test.md").read_text()
    assert "| network |" in sr and "| bilinear |" in sr
    layers = ["downconv1", "downconv2", "rfconv", "upconv1", "upconv2", "finalconv"]
    for name in ("colourize_cnn", "colourize_classes", "colourize_unet", "superres_cnn", "superres_unet"):
        grids = sorted((group / f"experiment-{name}" / "figures" / "activations").glob("*.png"))
        if name.startswith("superres"):  # the CNN at low resolution, then the learned upsampling
            expected = [f"{i:02d}_body.{n}.png" for i, n in enumerate(layers, 1)] + ["07_upsample.1.png", "08_head.png"]
        else:
            expected = [f"{i:02d}_{n}.png" for i, n in enumerate(layers, 1)]
        assert [g.name for g in grids] == expected


def test_palette_saved_with_the_data_and_reused(cifar_runs: Path):
    from hpclab.data.palette import load_or_compute_palette, palette_path

    h5 = cifar_runs / "data" / "cifar10.h5"
    sidecar = palette_path(h5, 24, ["horse"])
    assert sidecar.name == "cifar10.h5.palette24-horse.npy" and sidecar.is_file()
    saved = np.load(sidecar)
    assert saved.shape == (24, 3) and saved.min() >= 0 and saved.max() <= 1
    # computed once, when the runs are checked before the first starts; every run reuses it
    assert (cifar_runs / "launch.log").read_text().count("saved a 24-colour k-means palette") == 1
    mtime = sidecar.stat().st_mtime_ns
    np.testing.assert_array_equal(load_or_compute_palette(h5, 24, ["horse"]), saved)
    assert sidecar.stat().st_mtime_ns == mtime
    # quantizing the truth with the palette is near-lossless: the palette fits the pixels
    summary = _summary(cifar_runs / "results" / "default-smoke" / "experiment-colourize_classes")
    assert summary["metrics"]["test/palette_psnr"] > 25
    # re-staged data (a newer HDF5 file) gets a fresh palette
    os.utime(h5, ns=(mtime + 10**9, mtime + 10**9))
    np.testing.assert_allclose(load_or_compute_palette(h5, 24, ["horse"]), saved, atol=1e-6)
    assert sidecar.stat().st_mtime_ns != mtime


def test_autoencoder_trained_at_32_runs_at_other_sizes(cifar_runs: Path):
    for name in ("denoise_ae", "inpaint_ae"):
        run = cifar_runs / "results" / "default-smoke" / f"experiment-{name}"
        assert "name: cifar10" in (run / "config.yaml").read_text()
        sizes = _summary(run)["analyses"]["other_sizes"]["sizes"]
        assert set(sizes) == {"32", "14", "42", "56"}
        assert all(math.isfinite(m["psnr"]) and m["psnr"] > 0 for m in sizes.values())
        assert (run / "figures" / "other_sizes_test_examples.png").is_file()


def test_denoising_and_inpainting_on_fashion_mnist(fmnist_runs: Path):
    """denoise_ae / inpaint_ae / denoise_skips as shipped: grey 28 px Fashion-MNIST, 1-channel
    network, evaluated at 28 px and at the other sizes too."""
    group = fmnist_runs / "results" / "denoise_skips-smoke"
    with open(group / "summary.csv") as fh:
        rows = {r["model.skips"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"none", "add", "concat"}
    assert all(float(r["test/psnr"]) > 0 and float(r["test/noisy_psnr"]) > 0 for r in rows.values())
    runs = [group / f"skips-{skips}" for skips in ("none", "add", "concat")]
    runs.append(fmnist_runs / "results" / "inpaint_ae-smoke" / "default")
    for run in runs:
        summary = _summary(run)
        assert "name: fashion_mnist" in (run / "config.yaml").read_text()
        assert set(summary["analyses"]["other_sizes"]["sizes"]) == {"28", "14", "42", "56"}
        assert (run / "figures" / "examples_test.png").is_file() and (run / "figures" / "metrics_test.md").is_file()
    assert "test/hole_psnr" in _summary(runs[-1])["metrics"]
    from safetensors.torch import load_file

    weights = load_file(str(runs[0] / "checkpoints" / "best_model.safetensors"))
    assert weights["encoder.0.0.weight"].shape[1] == 1 and weights["head.weight"].shape[0] == 1  # grey in, grey out


def test_activations_and_compare_commands(cifar_runs: Path):
    env = _env(cifar_runs)
    run = cifar_runs / "results" / "default-smoke" / "experiment-colourize_unet"
    out = run_cli(
        "activations.py", str(run), "--count", "2", "--out", str(cifar_runs / "acts"), cwd=cifar_runs, env=env
    )
    assert "6 layer grids (downconv1, downconv2, rfconv, upconv1, upconv2, finalconv)" in out.stdout
    assert len(list((cifar_runs / "acts" / "activations").glob("*.png"))) == 6
    other = cifar_runs / "results" / "default-smoke" / "experiment-colourize_classes"
    out = run_cli("compare_runs.py", str(other), str(run), "--metrics", "loss,val/acc", cwd=cifar_runs, env=env)
    assert Path(out.stdout.strip()).name == "compare.png" and Path(out.stdout.strip()).is_file()
    bad = run_cli("activations.py", str(cifar_runs / "nowhere"), cwd=cifar_runs, env=env, check=False)
    assert bad.returncode == 2 and "is not a run folder (no config.yaml)" in bad.stderr


def test_super_resolution_factor_4_from_config(cifar_runs: Path, monkeypatch: pytest.MonkeyPatch):
    from hpclab.config import compose
    from hpclab.launch.job import train_run

    for key, value in _env(cifar_runs).items():
        monkeypatch.setenv(key, value)
    cfg = compose(["experiment=superres_unet", "task.factor=4", "run_name=x4", "analysis=[image_metrics]", *TINY])
    summary = train_run(cfg)
    assert summary["status"] == "completed" and cfg.task.factor == 4
    # 8x8 inputs: bilinear loses more than at factor 2
    x2 = _summary(cifar_runs / "results" / "default-smoke" / "experiment-superres_unet")["metrics"][
        "test/bilinear_psnr"
    ]
    assert summary["metrics"]["test/bilinear_psnr"] < x2
    # the residual design, trained from config the same way: same bilinear baseline on the same images
    residual = train_run(
        compose(
            [
                "experiment=superres_unet",
                "task=super_resolve_residual",
                "task.factor=4",
                "run_name=x4_residual",
                "analysis=[image_metrics]",
                *TINY,
            ]
        )
    )
    assert residual["status"] == "completed"
    assert residual["metrics"]["test/bilinear_psnr"] == pytest.approx(summary["metrics"]["test/bilinear_psnr"])


# --------------------------------------------------------------------------- segmentation


def test_brain_segmentation_experiments_smoke(seg_runs: Path):
    with h5py.File(seg_runs / "data" / "brain_mri_240px.h5", "r") as f:
        assert set(f) == {"train", "test"} and len(f["train"]["images"]) + len(f["test"]["images"]) == 10
        masks, labels = f["train"]["masks"][()], f["train"]["labels"][()]
        assert f["train"]["images"].shape[1:] == (1, 240, 240) and masks.shape[1:] == (1, 240, 240)
        assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
        np.testing.assert_array_equal(labels, masks.reshape(len(masks), -1).max(1))
    losses = {}
    for name in SEG_EXPERIMENTS:
        run = seg_runs / "results" / "default-smoke" / f"experiment-{name}"
        summary = _summary(run)
        m = summary["metrics"]
        assert 0 <= m["test/dice"] <= 1 and 0 <= m["test/iou"] <= m["test/dice"] + 1e-6
        assert (run / "figures" / "segmentation_test.png").is_file()
        losses[name] = (m["test/loss"], m["test/dice_loss"], m["test/mse"], m["test/bce"])
    assert losses["brain_seg"][0] == pytest.approx(losses["brain_seg"][1])  # trained on the Dice loss
    assert losses["brain_seg_mse"][0] == pytest.approx(losses["brain_seg_mse"][2])
    assert losses["brain_seg_bce"][0] == pytest.approx(losses["brain_seg_bce"][3])


def test_brain_mri_case_folder_layout_splits_by_patient(tmp_path: Path):
    from omegaconf import OmegaConf

    from hpclab.data.phantoms import write_phantoms
    from hpclab.data.sources.segmentation import read_brain_mri

    write_phantoms(tmp_path / "lgg", count=12, size=48, layout="cases", slices_per_case=3)
    cfg = OmegaConf.create({"image_size": 32, "options": {"test_fraction": 0.25, "channels": 3}})
    staged = read_brain_mri(tmp_path / "lgg", cfg)
    train, test = staged.splits["train"], staged.splits["test"]
    assert len(train["images"]) == 9 and len(test["images"]) == 3  # one of four patients
    assert train["images"].shape[1:] == (3, 32, 32) and test["masks"].shape[1:] == (1, 32, 32)
    assert staged.class_names == ["no tumour", "tumour"]


def test_brain_mri_without_files_says_where_to_get_them(workdir: Path):
    from hpclab.config import compose
    from hpclab.data.prepare import DataMissing, stage

    (workdir / "empty").mkdir()
    with pytest.raises(DataMissing, match="make_phantoms"):
        stage(compose(["data=brain_mri", f"data.mirrors=[{workdir / 'empty'}]"]))


# --------------------------------------------------------------------------- sweeps


def test_sweeps_expand_as_documented():
    from hpclab.config import compose
    from hpclab.launch.sweep import plan

    grids = {
        name: dict(compose([f"sweep={name}"]).sweep.grid)
        for name in (
            "colourize_epochs",
            "colourize_batch",
            "colourize_compare",
            "superres_factor",
            "denoise_skips",
            "seg_loss",
            "seg_arch",
        )
    }
    assert grids["colourize_epochs"] == {"train.epochs": [1, 2, 5, 10, 25, 50]}
    assert grids["colourize_compare"] == {"model.name": ["colour_cnn", "colour_unet"]}
    assert grids["denoise_skips"] == {"model.skips": ["none", "add", "concat"]}
    assert grids["seg_loss"] == {"task.loss": ["dice", "mse", "bce"]}
    assert grids["seg_arch"] == {"experiment": ["brain_seg", "brain_seg_unet"]}
    assert [c.model.name for c in plan(["sweep=seg_arch"]).runs] == ["seg_ae", "seg_unet"]
    assert {c.model.name for c in plan(["sweep=seg_loss"]).runs} == {"seg_ae"}  # the model docs/briefs.md names
    batch = plan(["sweep=colourize_batch", "sweep.subset=3"]).runs  # mini-batch sizes at fixed epochs
    assert [c.train.batch_size for c in batch] == [10, 50, 500]
    assert {c.train.epochs for c in batch} == {25} and {c.model.name for c in batch} == {"colour_unet"}
    from hpclab.registry import kwargs_of
    from hpclab.tasks import TASKS

    sr = plan(["sweep=superres_factor"]).runs  # both designs x both networks x factors 2 and 4
    built = [TASKS.build(c.task.name, kwargs_of(c.task)) for c in sr]  # residual: null -> the natural pairing
    assert sorted((t.upsample, t.residual, c.model.name, t.factor) for t, c in zip(built, sr)) == [
        (up, up == "bilinear", net, f)
        for up in ("bilinear", "learned")
        for net in ("colour_cnn", "colour_unet")
        for f in (2, 4)
    ]
