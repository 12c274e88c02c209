"""DCGAN on Flowers-102 (its staging: test_data_sources.py): the model spec, a 32 px smoke run
through the CLI with its analyses (on the briefs' category subset, docs/briefs.md), FID with a
stand-in Inception; and the DCGAN on Fashion-MNIST resized to 32 px with the Fréchet distance in
the features of the suite's own Fashion-MNIST classifier."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from unittest import mock

import h5py
import numpy as np
import pytest
import torch
from conftest import run_cli
from formats.flowers102 import flower_image

SMOKE = [
    "experiment=dcgan_small",
    "preset=smoke",
    "data.image_size=32",
    "model.channels=32",
    "model.latent_dim=16",
    "train.batch_size=16",
    "train.max_steps=12",
    "train.eval_every=null",
    "train.log_every=1",
    "analysis=[gan_curves,gan_epoch_grids,gan_categories,gan_batch_vs_single,gan_favourites]",
]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, flowers: dict) -> dict:
    """prepare_data + a 12-step, two-epoch DCGAN run at 32 px, both through the CLI."""
    work = tmp_path_factory.mktemp("gan_smoke")
    env = {"HPCLAB_DATA": str(work / "data"), "HPCLAB_RESULTS": str(work / "results")}
    run_cli(
        "prepare_data.py",
        "experiment=dcgan_small",
        "data.image_size=32",
        f"data.mirrors=[{flowers['root']}]",
        "data.download=false",
        cwd=work,
        env=env,
    )
    proc = run_cli("launch.py", *SMOKE, cwd=work, env=env)
    return {"work": work, "env": env, "run_dir": work / "results" / "dcgan_small-smoke" / "default", "log": proc.stdout}


# --------------------------------------------------------------------------- model


def test_dcgan_follows_the_spec_at_full_size():
    from torch import nn
    from torch.nn.utils import parametrize

    from hpclab.models.dcgan import DCGAN

    model = DCGAN(in_channels=3, image_size=256, latent_dim=128, channels=512)
    G, D = model.generator, model.discriminator
    convs = [m for m in G.net if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (128, 512),
        (512, 256),
        (256, 128),
        (128, 64),
        (64, 32),
        (32, 16),
        (16, 3),
    ]
    assert all(isinstance(G.net[i + 1], nn.BatchNorm2d) for i, m in enumerate(G.net) if m in convs[:-1])
    assert isinstance(G.net[-1], nn.Tanh) and G.net[-2] is convs[-1]

    d_convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert len(d_convs) == 7 and all(parametrize.is_parametrized(c, "weight") for c in d_convs)
    assert all(type(c.parametrizations.weight[0]).__name__ == "_SpectralNorm" for c in d_convs)
    assert not isinstance(D.features[1], nn.BatchNorm2d)  # none on the input layer
    assert [c.out_channels for c in d_convs] == [16, 32, 64, 128, 256, 512, 1]
    assert isinstance(D.sigmoid, nn.Sigmoid)

    with torch.no_grad():
        images = G.eval()(torch.randn(2, 128))
        prob = D.eval()(images)
    assert images.shape == (2, 3, 256, 256) and images.abs().max() <= 1
    assert prob.shape == (2,) and ((prob >= 0) & (prob <= 1)).all() and prob.dtype == torch.float32
    with pytest.raises(ValueError, match="power of two"):
        DCGAN(image_size=256, channels=500)


def test_fixed_latents_do_not_depend_on_how_many_are_drawn():
    from hpclab.tasks.gan import GAN

    task = GAN(samples=16)
    task.latent_dim = 8
    first = task.fixed_latents(torch.device("cpu"))
    assert torch.equal(task.fixed_latents(torch.device("cpu"), n=64)[:16], first)
    other = GAN(samples=4)
    other.latent_dim = 8
    assert torch.equal(other.fixed_latents(torch.device("cpu")), first[:4])
    assert not torch.equal(task.fixed_latents(torch.device("cpu"), seed=5), first)


# --------------------------------------------------------------------------- smoke run


def test_smoke_run_trains_and_writes_every_figure(smoke_run):
    run_dir = smoke_run["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 12
    assert set(summary["parameters"]) == {"generator", "discriminator"}
    fit = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    fit = [r for r in fit if r["split"] == "fit"]
    assert [r["step"] for r in fit] == list(range(1, 13))  # every step
    for r in fit:
        assert {"d_loss", "g_loss", "d_real", "d_fake", "images_per_s"} <= set(r)
        assert 0 < r["d_real"] < 1 and 0 < r["d_fake"] < 1

    figures = run_dir / "figures"
    pngs = [
        "gan_curves.png",
        "samples_final.png",
        "samples_by_epoch.png",
        "epochs/epoch_001.png",
        "epochs/epoch_002.png",
        "categories.png",
        "batch_vs_single.png",
        "candidates.png",
        "favourites.png",
        "interpolation.png",
    ]
    for name in pngs:
        assert (figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    analyses = summary["analyses"]
    # the shipped subset: of the mirror's five categories, petunia and passion flower are in it
    assert analyses["gan_categories"]["per_category"] == {"petunia": 20, "passion flower": 20}
    bn = analyses["gan_batch_vs_single"]
    assert bn["mean_abs_diff_eval_mode"] < 1e-5 < bn["mean_abs_diff_train_mode"]
    assert "BatchNorm" in (figures / "batch_vs_single.md").read_text()
    from hpclab.tasks.gan import GAN

    z_bn = np.load(figures / "batch_vs_single_z.npy")  # the latent vectors of the figure, saved
    task = GAN()
    task.latent_dim = 16
    assert z_bn.shape == (16, 16) and bn["latents"].endswith("batch_vs_single_z.npy")
    np.testing.assert_array_equal(z_bn, task.fixed_latents(torch.device("cpu"), n=16, seed=bn["seed"]).numpy())

    fav = json.loads((figures / "favourites.json").read_text())
    z_fav = np.load(figures / "favourites_z.npy")
    z_line = np.load(figures / "interpolation_z.npy")
    assert z_fav.shape == (8, 16) and z_line.shape == (11, 16)
    assert fav["alphas"] == [round(0.1 * i, 4) for i in range(11)]
    np.testing.assert_allclose(z_line[0], z_fav[1], atol=1e-6)  # a=0: z2
    np.testing.assert_allclose(z_line[-1], z_fav[0], atol=1e-6)  # a=1: z1
    np.testing.assert_allclose(z_line[5], 0.5 * (z_fav[0] + z_fav[1]), atol=1e-6)


def test_chosen_favourites_through_the_analyze_command(smoke_run):
    run_dir, work, env = smoke_run["run_dir"], smoke_run["work"], smoke_run["env"]
    proc = run_cli("analyze.py", str(run_dir), "gan_favourites", "indices=[5,9,2]", "pair=[2,0]", cwd=work, env=env)
    fav = json.loads((run_dir / "figures" / "favourites.json").read_text())
    assert fav["indices"] == [5, 9, 2] and fav["pair"] == [2, 5] and fav["selection"] == "chosen"
    assert '"selection": "chosen"' in proc.stdout
    assert json.loads((run_dir / "summary.json").read_text())["analyses"]["gan_favourites"]["indices"] == [5, 9, 2]
    assert np.load(run_dir / "figures" / "favourites_z.npy").shape == (3, 16)


# --------------------------------------------------------------------------- FID


@pytest.fixture(scope="module")
def standin_inception(tmp_path_factory: pytest.TempPathFactory):
    """A random-initialised state dict of pytorch-fid's FID Inception, saved in a cache under a
    torch.hub-style name and registered as weights 'fid_inception_standin' (the real file's
    sha256 prefix cannot match, and the production check stays as it is)."""
    import pytorch_fid.inception as fid_inception
    import torchvision.models.inception as tv_inception

    from hpclab.weights import WEIGHTS, WeightFile, cache_dir, register_weights

    with (
        mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(tv_inception.Inception3, "load_state_dict", lambda self, *a, **k: None),
    ):
        state = fid_inception.fid_inception_v3().state_dict()  # the architecture, random weights
    cache = tmp_path_factory.mktemp("fid_cache")
    staging = cache / "standin.pth"
    torch.save(state, staging)
    prefix = hashlib.sha256(staging.read_bytes()).hexdigest()[:8]
    cache_dir(cache).mkdir(parents=True)
    staging.rename(cache_dir(cache) / f"pt_inception-standin-{prefix}.pth")
    register_weights(
        WeightFile("fid_inception_standin", "file:///nonexistent", f"pt_inception-standin-{prefix}.pth", prefix)
    )
    yield cache
    WEIGHTS.pop("fid_inception_standin", None)


def test_fid_is_zero_for_a_set_with_itself_and_grows_with_noise(standin_inception):
    from hpclab.analysis.fid import activations, frechet, inception

    rng = np.random.default_rng(0)
    images = torch.from_numpy(np.stack([flower_image(i % 7, rng, 48, 48) for i in range(96)])).permute(0, 3, 1, 2) / 255
    model = inception(dims=64, cache=standin_inception, weights="fid_inception_standin", resize=False)
    base = activations(model, images.split(48), "cpu")
    gen = torch.Generator().manual_seed(0)
    noisy = [
        activations(model, (images + s * torch.randn(images.shape, generator=gen)).clamp(0, 1).split(48), "cpu")
        for s in (0.05, 0.2, 0.5)
    ]
    same = frechet(base, base)
    scores = [frechet(base, other) for other in noisy]
    assert abs(same) < 1e-3 * scores[0]
    assert scores[0] < scores[1] < scores[2]


def test_fid_needs_the_staged_weights_and_checks_their_hash(tmp_path):
    from hpclab.analysis.fid import inception
    from hpclab.weights import WeightsMissing, cache_dir

    with pytest.raises(WeightsMissing, match=r"prepare_data.py weights=\[fid_inception\]"):
        inception(cache=tmp_path)
    cache_dir(tmp_path).mkdir(parents=True)
    (cache_dir(tmp_path) / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"not the weights")
    with pytest.raises(WeightsMissing, match="sha256"):
        inception(cache=tmp_path)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 36 images, 64 random-net features
def test_fid_analysis_on_the_smoke_run(smoke_run, standin_inception):
    """The analysis end to end (real images from the run's data, generated ones from its
    generator, 299 px Inception input) on the finished run, via the re-analysis API."""
    import shutil

    from omegaconf import OmegaConf

    from hpclab.analysis.rerun import analyze_run
    from hpclab.weights import WEIGHTS, WeightsMissing, cache_dir

    run_dir = smoke_run["run_dir"]
    with pytest.raises(WeightsMissing, match=r"not staged .*jobs/prepare_data.py weights=\[fid_inception\]"):
        analyze_run(run_dir, "fid")  # the production weights are not in this run's cache
    cache = Path(OmegaConf.load(run_dir / "config.yaml").paths.cache)
    name = WEIGHTS["fid_inception_standin"].filename
    cache_dir(cache).mkdir(parents=True, exist_ok=True)
    shutil.copy(cache_dir(standin_inception) / name, cache_dir(cache) / name)
    result = analyze_run(run_dir, "fid", {"weights": "fid_inception_standin", "dims": 64, "num_images": 36})
    assert result["real_images"] == result["generated_images"] == 36  # of the subset's 40
    assert np.isfinite(result["fid"]) and result["fid"] > 0
    assert json.loads((run_dir / "figures" / "fid.json").read_text())["fid"] == result["fid"]
    assert json.loads((run_dir / "summary.json").read_text())["analyses"]["fid"]["fid"] == result["fid"]


# --------------------------------------------------------------------------- Fashion-MNIST GAN and FD

FMNIST_GAN = [
    "experiment=dcgan_fmnist",
    "preset=smoke",
    "model.channels=32",
    "model.latent_dim=16",
    "train.batch_size=32",
    "train.max_steps=54",
    "train.eval_every=null",
    "train.progress=log",
]  # 600 images: 18 steps an epoch


@pytest.fixture(scope="module")
def fmnist_gan(tmp_path_factory: pytest.TempPathFactory, fmnist_mirror: Path) -> dict:
    """Fashion-MNIST IDX files: the DCGAN at 32 px stopped at its FD analysis (no classifier
    yet), then fmnist_cnn trained, then the same DCGAN command again, all through the CLI."""
    work = tmp_path_factory.mktemp("fmnist_gan")
    env = {"HPCLAB_DATA": str(work / "data"), "HPCLAB_RESULTS": str(work / "results")}
    run_cli(
        "prepare_data.py",
        "experiment=dcgan_fmnist",
        f"data.mirrors=[{fmnist_mirror}]",
        "data.download=false",
        cwd=work,
        env=env,
    )
    run_cli(
        "prepare_data.py",
        "experiment=fmnist_cnn",
        f"data.mirrors=[{fmnist_mirror}]",
        "data.download=false",
        cwd=work,
        env=env,
    )
    at_28 = run_cli(
        "launch.py", *FMNIST_GAN, "data.image_size=null", "run_name=at_28px", cwd=work, env=env, check=False
    )
    first = run_cli("launch.py", *FMNIST_GAN, cwd=work, env=env, check=False)
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
    second = run_cli("launch.py", *FMNIST_GAN, cwd=work, env=env)
    return {
        "work": work,
        "run_dir": work / "results" / "dcgan_fmnist-smoke" / "default",
        "at_28": at_28,
        "first": first,
        "second": second,
    }


def test_fashion_mnist_dcgan_at_32px_with_its_figures(fmnist_gan):
    assert fmnist_gan["at_28"].returncode == 2  # unresized 28 px: one line that says what to add
    line = fmnist_gan["at_28"].stderr.strip().splitlines()[-1]
    assert line.startswith("error: model 'dcgan' on fashion_mnist.h5 (28 px)") and "data.image_size=32" in line
    run_dir = fmnist_gan["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 54
    with h5py.File(fmnist_gan["work"] / "data" / "fashion_mnist_32px.h5") as f:
        assert f["train/images"].shape == (600, 1, 32, 32)
    figures = run_dir / "figures"
    for name in (
        "epochs/epoch_001.png",
        "epochs/epoch_002.png",
        "epochs/epoch_003.png",
        "samples_by_epoch.png",
        "interpolation.png",
        "batch_vs_single.png",
        "favourites.png",
        "categories.png",
        "fd_classifier.png",
    ):
        assert (figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert np.load(figures / "batch_vs_single_z.npy").shape == (32, 16)
    assert summary["analyses"]["gan_categories"]["categories"] == 10
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step*.pt")) == [
        "step000000018.pt",
        "step000000036.pt",
        "step000000054.pt",
    ]  # one per epoch, all kept


def test_fd_in_the_suites_own_classifier_features(fmnist_gan):
    """Without the classifier the run stops before step 0 with one line naming the command (and
    the way out without the analysis); after training the classifier the same command trains
    the DCGAN and runs its analyses. FD: the real test set against the training set is the
    floor, noise is far above, every epoch is scored."""
    line = fmnist_gan["first"].stderr.strip().splitlines()[-1]
    assert fmnist_gan["first"].returncode == 2 and "Traceback" not in fmnist_gan["first"].stderr
    assert line.startswith("error: analysis 'fd_classifier': fd_classifier: no trained classifier at")
    assert "experiment=fmnist_cnn" in line and "or run without it: analysis=[gan_curves," in line
    assert "resumed from" not in fmnist_gan["second"].stdout  # the first launch trained nothing
    assert "step 54" in fmnist_gan["second"].stdout
    fd = json.loads((fmnist_gan["run_dir"] / "figures" / "fd_classifier.json").read_text())
    assert fd["metric"] == "FD (Fashion-MNIST CNN features)" and fd["classifier"].endswith("fmnist_cnn-smoke/default")
    assert fd["reference_images"] == 600 and fd["images_per_set"] == 200
    assert list(fd["by_epoch"]) == ["1.0", "2.0", "3.0"]
    assert 0 <= fd["floor_real"] < min(fd["by_epoch"].values()) and max(fd["by_epoch"].values()) < fd["noise"]
    table = (fmnist_gan["run_dir"] / "figures" / "fd_classifier.md").read_text()
    assert "FID" not in table and "| real test set |" in table and "| uniform noise |" in table


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # dead ReLU units: a singular covariance
def test_classifier_features_are_the_penultimate_layer(fmnist_gan):
    """ClassifierFeatures reproduces the classifier's own preprocessing and takes the input of
    its last linear layer; FD of a set with itself is 0, and resizing to its size is applied."""
    from hpclab.analysis.fid import ClassifierFeatures, frechet
    from hpclab.data.hdf5 import H5Split

    net = ClassifierFeatures(fmnist_gan["work"] / "results" / "fmnist_cnn-smoke" / "default")
    assert (net.channels, net.size, net.label) == (1, 28, "FD (Fashion-MNIST CNN features)")
    images = H5Split(fmnist_gan["work"] / "data" / "fashion_mnist.h5", "test").load()["images"][:64]
    features = net(images)
    assert features.shape == (64, 128)  # the dense 128 before the 10 logits
    x = images.float() / 255
    with torch.no_grad():
        head_in = net.model.pool(net.model.features((x - 0.5) / 0.25))
        expected = net.model.head[:-1](head_in)
    np.testing.assert_allclose(features, expected.double().numpy(), rtol=1e-5, atol=1e-6)
    assert abs(frechet(features, features)) < 1e-6
    upsampled = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
    assert net(upsampled).shape == (64, 128)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_fid_on_grey_images_repeats_them_to_three_channels(fmnist_gan, standin_inception):
    """pytorch-fid stays the metric where its weights are staged, also for the 1-channel GAN."""
    import shutil

    from omegaconf import OmegaConf

    from hpclab.analysis.rerun import analyze_run
    from hpclab.weights import WEIGHTS, cache_dir

    run_dir = fmnist_gan["run_dir"]
    cache = Path(OmegaConf.load(run_dir / "config.yaml").paths.cache)
    name = WEIGHTS["fid_inception_standin"].filename
    cache_dir(cache).mkdir(parents=True, exist_ok=True)
    shutil.copy(cache_dir(standin_inception) / name, cache_dir(cache) / name)
    result = analyze_run(
        run_dir, "fid", {"weights": "fid_inception_standin", "dims": 64, "num_images": 24, "split": "test"}
    )
    assert result["real_images"] == result["generated_images"] == 24 and np.isfinite(result["fid"])
