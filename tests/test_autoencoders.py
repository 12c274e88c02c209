"""Autoencoder experiments (the AE design studies, the MNIST, Fashion-MNIST 3-d and notMNIST
briefs): model specs, and every experiment's smoke run through the CLI on small datasets
written in the real IDX format (MNIST, notMNIST, Fashion-MNIST)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from formats.idx import write_idx_dataset
from torch import nn

from hpclab.launch.sweep import plan
from hpclab.models import MODELS

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summary_of(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["metrics"] and all(math.isfinite(v) for v in summary["metrics"].values()), summary["metrics"]
    return summary


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def ae_datadir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MNIST, notMNIST and Fashion-MNIST staged once through prepare_data from IDX mirrors."""
    root = tmp_path_factory.mktemp("ae_data")
    mirror = root / "idx"
    write_idx_dataset(mirror, n_train=400, n_test=120, seed=3)
    data = root / "data"
    for name in ("mnist", "notmnist", "fashion_mnist"):
        run_cli(
            "prepare_data.py",
            f"data={name}",
            f"data.mirrors=[{mirror}]",
            "data.download=false",
            cwd=root,
            env={"HPCLAB_DATA": str(data)},
        )
    return data


@pytest.fixture
def ae_work(workdir: Path, ae_datadir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HPCLAB_DATA", str(ae_datadir))
    return workdir


def smoke(steps: int = 12, every: int = 6) -> list[str]:
    """A few steps and evaluations: enough to exercise training, evaluation and analyses."""
    return [
        "preset=smoke",
        f"train.max_steps={steps}",
        f"train.eval_every={every}",
        "train.log_every=6",
        "train.progress=log",
    ]


# --------------------------------------------------------------------------- model specs


def test_linear_autoencoder_is_the_briefs_784_128_64_32_15():
    model = MODELS.build("linear_ae", {})
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 128),
        (128, 64),
        (64, 32),
        (32, 15),
        (15, 32),
        (32, 64),
        (64, 128),
        (128, 784),
    ]
    kinds = [type(m).__name__ for m in model.encoder]
    assert kinds == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear", "ReLU", "Linear", "Identity"]
    assert [type(m).__name__ for m in model.decoder][-3:] == ["Linear", "Sigmoid", "Unflatten"]
    assert sum(isinstance(m, nn.ReLU) for m in model.decoder) == 3
    out = model(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 1, 28, 28) and 0 <= out.min() and out.max() <= 1
    assert params(model) < 500_000


def test_cnn_autoencoder_spec_and_at_most_35000_parameters():
    model = MODELS.build("cnn_ae", {})
    assert params(model) <= 35_000
    convs = [m for m in model.encoder if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.padding) for c in convs] == [
        ((3, 3), (2, 2), (1, 1)),
        ((3, 3), (2, 2), (1, 1)),
        ((5, 5), (1, 1), (0, 0)),
    ]
    assert model.pool.return_indices and isinstance(model.unpool, nn.MaxUnpool2d)
    tconvs = [m for m in model.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert [c.kernel_size for c in tconvs] == [(5, 5), (3, 3), (3, 3)]
    assert [c.output_padding for c in tconvs[1:]] == [(1, 1), (1, 1)] and all(c.stride == (2, 2) for c in tconvs[1:])
    assert isinstance(model.decoder[-1], nn.Sigmoid)
    x = torch.rand(3, 1, 28, 28)
    assert model(x).shape == x.shape


def test_fmnist_3d_and_notmnist_denoiser_layer_specs():
    ae3d = MODELS.build("strided_ae", {})
    convs = [m for m in ae3d.encoder if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.stride[0], c.kernel_size, c.padding) for c in convs] == [
        (64, 2, (3, 3), (1, 1)),
        (32, 2, (3, 3), (1, 1)),
        (16, 1, (3, 3), (1, 1)),
        (2, 1, (3, 3), (1, 1)),
    ]
    tconvs = [m for m in ae3d.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.out_channels, c.stride[0]) for c in tconvs] == [(16, 1), (32, 1), (64, 2), (1, 2)]
    z = ae3d.encode(torch.rand(4, 1, 28, 28))
    assert z.shape == (4, 3) and ae3d.decode(z).shape == (4, 1, 28, 28)
    assert params(ae3d) == 48_724

    dae = MODELS.build("pool_upsample_ae", {})
    layers = [
        (type(m).__name__, getattr(m, "out_channels", None))
        for m in [*dae.encoder, *dae.decoder]
        if not isinstance(m, nn.ReLU)
    ]
    assert layers == [
        ("Conv2d", 32),
        ("MaxPool2d", None),
        ("Conv2d", 64),
        ("MaxPool2d", None),
        ("Conv2d", 128),
        ("Conv2d", 128),
        ("Upsample", None),
        ("Conv2d", 64),
        ("Upsample", None),
        ("Conv2d", 1),
        ("Sigmoid", None),
    ]
    x = torch.rand(2, 1, 28, 28)
    code = dae.encode(x)
    assert code.shape == (2, 128 * 7 * 7) and torch.equal(dae.decode(code), dae(x))


def test_dense_ae_encoder_and_decoder_work_alone():
    model = MODELS.build("linear_ae", {"hidden": [], "latent_dim": 32, "latent_activation": "relu"})
    x = torch.rand(6, 1, 28, 28)
    code = model.encoder(x)
    assert code.shape == (6, 32) and code.min() >= 0
    assert torch.equal(model.decoder(code), model(x))


# --------------------------------------------------------------------------- experiments


def test_fmnist_ae3d_stops_at_the_threshold_and_writes_every_figure(ae_work):
    """The stop criterion is the full-train-split MSE in eval mode; 0.9 is crossed at the first
    evaluation, so the run stops there, long before max_steps."""
    proc = run_cli("launch.py", "experiment=fmnist_ae3d", *smoke(60), "train.stop.threshold=0.9", cwd=ae_work)
    run = ae_work / "results" / "fmnist_ae3d-smoke" / "default"
    summary = summary_of(run)
    assert summary["steps"] == 6 and "train/mse" in summary["stopped_early"]
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_evals = [r for r in evals if r["split"] == "train"]
    assert [r["step"] for r in train_evals] == [6] and train_evals[0]["mse"] < 0.9
    assert "Total params: 48,724" in proc.stdout and "[-1, 3]" in proc.stdout  # printed layer table
    assert summary["parameters"]["model"] == 48_724 == summary["analyses"]["layer_summary"]["trainable"]
    assert "Total params: 48,724" in (run / "figures" / "layer_summary.txt").read_text()
    figures = run / "figures"
    grids = sorted(figures.glob("latent_grid_*.png"))
    assert len(grids) == 12 and all(is_png(p) for p in grids)
    assert is_png(figures / "latent_3d.png") and is_png(figures / "class_reconstructions_test.png")
    assert summary["analyses"]["latent_scatter"]["points"] == 400  # the whole training split
    assert len(summary["analyses"]["class_reconstructions"]["mse"]) == 10
    assert (run / "checkpoints" / "best_model.safetensors").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(run / "tb")).Reload().Tags()["images"]
    assert "latent_grid/00" in tags and "class_reconstructions" in tags


def test_mnist_comparison_table_of_both_models_for_both_tasks(ae_work):
    run_cli("launch.py", "sweep=mnist_ae_compare", *smoke(), "sweep.subset=null", cwd=ae_work)
    group = ae_work / "results" / "mnist_ae_compare-smoke"
    rows = {r["experiment"]: r for r in read_csv(group / "summary.csv")}
    assert set(rows) == {"mnist_linear_ae", "mnist_linear_dae", "mnist_conv_ae", "mnist_conv_dae"}
    assert rows["mnist_linear_ae"]["parameters"] == "223391" and rows["mnist_conv_dae"]["parameters"] == "34297"
    assert all(0 < float(r["test/mse"]) < 1 for r in rows.values())
    dae = summary_of(group / "experiment-mnist_conv_dae")
    assert is_png(Path(dae["analyses"]["examples"]["figure"]))
    config = (group / "experiment-mnist_conv_dae" / "config.yaml").read_text()
    assert "noise_std: 0.2" in config and "name: mnist" in config


def test_upsampling_study_compares_decoders_of_equal_size(ae_work):
    """3x3 transposed convs and bilinear + 3x3 conv have weights of the same shapes: the sweep's
    matched pair has exactly the same parameter count, and the summary table says so."""
    counts = {
        mode: params(MODELS.build("conv_ae", {"upsampling": mode})) for mode in ("transpose3", "bilinear", "transpose")
    }
    assert counts == {"transpose3": 327_617, "bilinear": 327_617, "transpose": 406_465}
    run_cli("launch.py", "sweep=ae_upsampling", *smoke(), cwd=ae_work)
    group = ae_work / "results" / "ae_upsampling-smoke"
    rows = {r["model.upsampling"]: r for r in read_csv(group / "summary.csv")}
    assert set(rows) == {"transpose3", "bilinear"}
    assert rows["transpose3"]["parameters"] == rows["bilinear"]["parameters"] == "327617"
    assert "| parameters |" in (group / "summary.md").read_text()


def test_mnist_family_runs_on_fashion_mnist_with_one_override(ae_work):
    """data=fashion_mnist is the one override that moves every MNIST-family experiment (and the
    notMNIST ones) to the real Fashion-MNIST this machine has."""
    for name in (
        "mnist_linear_ae",
        "mnist_linear_dae",
        "mnist_conv_ae",
        "mnist_conv_dae",
        "notmnist_dense_ae",
        "notmnist_conv_dae",
    ):
        assert plan([f"experiment={name}", "data=fashion_mnist"]).runs[0].data.name == "fashion_mnist", name
    run_cli(
        "launch.py",
        "sweep=mnist_ae_compare",
        "data=fashion_mnist",
        "sweep.name=fmnist_ae_compare",
        *smoke(),
        "sweep.subset=null",
        cwd=ae_work,
    )
    group = ae_work / "results" / "fmnist_ae_compare-smoke"
    rows = {r["experiment"]: r for r in read_csv(group / "summary.csv")}
    assert set(rows) == {"mnist_linear_ae", "mnist_linear_dae", "mnist_conv_ae", "mnist_conv_dae"}
    assert rows["mnist_linear_ae"]["parameters"] == "223391" and rows["mnist_conv_dae"]["parameters"] == "34297"
    summary = summary_of(group / "experiment-mnist_conv_dae")
    assert "T-shirt/top" in summary["analyses"]["class_reconstructions"]["mse"]
    assert "name: fashion_mnist" in (group / "experiment-mnist_conv_dae" / "config.yaml").read_text()
    run_cli("launch.py", "experiment=notmnist_conv_dae", "data=fashion_mnist", *smoke(), cwd=ae_work)
    dae = summary_of(ae_work / "results" / "notmnist_conv_dae-smoke" / "default")
    assert set(dae["analyses"]["class_reconstructions"]["mse"]) == {
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    }


def test_notmnist_dense_ae_svm_on_codes_vs_pixels(ae_work):
    run_cli("launch.py", "experiment=notmnist_dense_ae", *smoke(), cwd=ae_work)
    run = ae_work / "results" / "notmnist_dense_ae-smoke" / "default"
    summary = summary_of(run)
    rows = read_csv(run / "figures" / "svm_codes.csv")
    assert [(r["features"], r["dim"]) for r in rows] == [("encodings", "32"), ("raw pixels", "784")]
    assert all(0 <= float(r["test accuracy"]) <= 1 and r["test images"] == "120" for r in rows)
    assert summary["analyses"]["svm_codes"]["pixels_acc"] == pytest.approx(float(rows[1]["test accuracy"]), abs=1e-4)
    assert is_png(run / "figures" / "inputs_over_encodings.png")
    assert summary["parameters"]["model"] == 784 * 32 + 32 + 32 * 784 + 784


def test_notmnist_conv_dae_prints_its_layer_summary(ae_work):
    proc = run_cli("launch.py", "experiment=notmnist_conv_dae", *smoke(), cwd=ae_work)
    assert "Total params: 314,625" in proc.stdout and "Upsample" in proc.stdout and "MaxPool2d" in proc.stdout
    run = ae_work / "results" / "notmnist_conv_dae-smoke" / "default"
    summary = summary_of(run)
    assert "noise_std: 0.5" in (run / "config.yaml").read_text()
    assert is_png(run / "figures" / "examples_test.png") and is_png(run / "figures" / "class_reconstructions_test.png")
    # what the denoiser has to improve on: the corrupted inputs themselves (clamped to [0, 1])
    run_cli("analyze.py", str(run), "noisy_input", cwd=ae_work)
    noisy = summary_of(run)["analyses"]["noisy_input"]
    # mean PSNR >= PSNR of the mean MSE (Jensen): both come from the same per-image errors
    assert 0.01 < noisy["test_mse"] < 0.25 and noisy["test_psnr"] >= 10 * math.log10(1 / noisy["test_mse"]) - 1e-6
    assert summary["analyses"]["class_reconstructions"]["mse"].keys() == set("ABCDEFGHIJ")


def test_ae_probe_sweep_tables_per_latent_size_and_embeddings(ae_work):
    run_cli(
        "launch.py",
        "sweep=ae_probe",
        *smoke(),
        "model.channels=[8,16]",
        "analysis=[{name:latent_probe,epochs:3},{name:latent_scatter,embed_points:150}]",
        cwd=ae_work,
    )
    group = ae_work / "results" / "ae_probe-smoke"
    rows = read_csv(group / "latent_probe.csv")
    assert [r["latent_dim"] for r in rows] == ["2", "128"]
    assert all(0 <= float(r[k]) <= 1 for r in rows for k in ("linear_test_acc", "mlp_test_acc"))
    assert is_png(group / "latent_dim-2" / "figures" / "latent_2d.png")
    assert is_png(group / "latent_dim-128" / "figures" / "latent_tsne.png")
    assert is_png(group / "latent_dim-128" / "figures" / "latent_umap.png")
    assert len(read_csv(group / "summary.csv")) == 2
    # the anchor a code has to beat: the same probes on the raw pixels
    run_cli("analyze.py", str(group / "latent_dim-2"), "pixel_probe", "epochs=2", cwd=ae_work)
    probe = summary_of(group / "latent_dim-2")["analyses"]["pixel_probe"]
    assert probe["features"] == 28 * 28 and all(0 <= probe[f"{m}_test_acc"] <= 1 for m in ("linear", "mlp"))


def test_pretraining_sweep_loads_the_autoencoder_encoder(ae_work):
    # no autoencoder yet: one clear line, nothing trained
    proc = run_cli(
        "launch.py", "experiment=ae_pretrain_clf", "model.pretrained=true", *smoke(), cwd=ae_work, check=False
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: model.encoder_from:") and "does not exist" in last
    assert not (ae_work / "results" / "ae_pretrain_clf-smoke" / "default" / "checkpoints").exists()

    # the smoke preset's autoencoder, where the smoke preset's classifiers look for it (${group:ae_latent})
    run_cli("launch.py", "experiment=ae_latent", "run_name=latent_dim-32", *smoke(), cwd=ae_work)
    weights = ae_work / "results" / "ae_latent-smoke" / "latent_dim-32" / "checkpoints" / "best_model.safetensors"
    from safetensors.torch import load_file

    from hpclab.config import ConfigError

    ae_spec = {"name": "conv_ae", "latent_dim": 32, "channels": [32, 64, 128]}
    clf = MODELS.build(
        "ae_encoder_classifier", {"ae": ae_spec, "pretrained": True, "encoder_from": str(weights)}, num_classes=10
    )
    state = load_file(str(weights))
    encoder = clf.features.autoencoder
    assert torch.equal(encoder.features[0].weight, state["features.0.weight"])
    assert torch.equal(encoder.to_latent[1].weight, state["to_latent.1.weight"])
    assert not hasattr(encoder, "decoder_convs")  # the decoder is dropped
    scratch = MODELS.build("ae_encoder_classifier", {"ae": ae_spec}, num_classes=10)
    assert params(scratch) == params(clf) and not torch.equal(
        scratch.features.autoencoder.features[0].weight, state["features.0.weight"]
    )
    with pytest.raises(ConfigError, match="does not fit"):
        MODELS.build(
            "ae_encoder_classifier",
            {"ae": {**ae_spec, "latent_dim": 8}, "pretrained": True, "encoder_from": str(weights)},
        )

    run_cli("launch.py", "sweep=ae_pretrain_fractions", *smoke(), cwd=ae_work)
    rows = read_csv(ae_work / "results" / "ae_pretrain_fractions-smoke" / "summary.csv")
    assert sorted((r["model.pretrained"], r["data.train_fraction"]) for r in rows) == [
        ("False", "0.01"),
        ("False", "1.0"),
        ("True", "0.01"),
        ("True", "1.0"),
    ]
    assert all(0 <= float(r["test/acc"]) <= 1 for r in rows)


def test_design_study_sweeps_expand_to_their_grids(workdir):
    up = plan(["sweep=ae_upsampling"])
    assert [c.model.upsampling for c in up.runs] == ["transpose3", "transpose", "bilinear"]
    assert up.runs[0].experiment == "ae_latent"
    assert [c.model.upsampling for c in plan(["sweep=ae_upsampling", "preset=smoke"]).runs] == [
        "transpose3",
        "bilinear",
    ]
    noise = plan(["sweep=ae_denoise"])
    assert [c.task.noise_std for c in noise.runs] == [0.1, 0.2, 0.3, 0.5, 0.7]
    fractions = plan(["sweep=ae_pretrain_fractions"])
    assert {(c.model.pretrained, c.data.train_fraction) for c in fractions.runs} == {
        (p, f) for p in (False, True) for f in (0.01, 0.1, 1.0)
    }
    assert all(c.model.encoder_from.endswith("results/ae_latent/latent_dim-32") for c in fractions.runs)
