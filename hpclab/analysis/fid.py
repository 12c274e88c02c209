"""Fréchet distances between generated and real images, offline.

``fid``: the Fréchet Inception Distance (pytorch-fid). pytorch-fid would download its Inception
weights on first use; compute nodes have no internet, so the weights come from the staged cache
(``python jobs/prepare_data.py weights=[fid_inception]``), checked against their sha256 prefix,
and a missing file is a one-line error naming that command. The network is pytorch-fid's own
(``InceptionV3``, FID variant); only where its state dict comes from is changed. Activations of
the chosen block are average-pooled to ``dims`` features, and
``pytorch_fid.fid_score.calculate_frechet_distance`` compares their Gaussians. Grey images are
repeated to three channels.

``fd_classifier``: the same distance in the feature space of a classifier the suite trained
itself (e.g. experiment=fmnist_cnn), the usual practice for MNIST-like data where Inception
features mean little and its weights may not be at hand. It is reported as "FD (<data> CNN
features)", never as FID: the numbers are not comparable with published FIDs, only with each
other (same classifier, same sample counts). The table holds the real test set (the floor),
the generative model (GAN or diffusion) at every kept checkpoint (epoch), and uniform noise.
``fd_sampling_steps``: the same table for a diffusion model's final weights sampled with each
number of DDIM steps. Both are built by :class:`FrechetTable`, so their floor and ceiling rows
are the same numbers as every other run's with the same classifier, data and image count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from hpclab.analysis import ANALYSES, requires
from hpclab.engine.evaluation import TrainedRun
from hpclab.errors import ConfigError
from hpclab.rundir import CONFIG, read_weights, run_of, run_weights
from hpclab.utils import write_json
from hpclab.weights import WeightsMissing, weight_path

if TYPE_CHECKING:
    from hpclab.analysis.figures import Panel

log = logging.getLogger("hpclab")


def inception(
    dims: int = 2048,
    cache: str | Path | None = None,
    weights: str = "fid_inception",
    device: torch.device | str = "cpu",
    resize: bool = True,
) -> torch.nn.Module:
    """pytorch-fid's InceptionV3 up to the block giving ``dims`` features, with the staged
    weights ``weights`` (a name in hpclab.weights.WEIGHTS) from ``cache``. ``resize``: bilinear
    to 299x299 first, as FID is defined (off only to test the arithmetic cheaply)."""
    import pytorch_fid.inception as fid_inception

    blocks = fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM
    if dims not in blocks:
        raise ValueError(f"fid dims must be one of {sorted(blocks)}, got {dims}")
    path = weight_path(weights, cache)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:  # pytorch-fid builds the network, then loads this state dict instead of downloading one
        with mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state):
            model = fid_inception.InceptionV3([blocks[dims]], resize_input=resize, normalize_input=True)
    except RuntimeError as exc:  # wrong keys or shapes
        raise WeightsMissing(f"{path} is not pytorch-fid's Inception state dict ({str(exc).splitlines()[0]})") from None
    return model.eval().to(device)


@torch.no_grad()
def activations(model: torch.nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str) -> np.ndarray:
    """Pooled Inception features (float64, N x dims) of image batches in [0, 1]."""
    features = []
    for images in batches:
        x = images.to(device).float()
        out = model(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)[0]  # grey: the same value in R, G, B
        if out.shape[2:] != (1, 1):
            out = F.adaptive_avg_pool2d(out, (1, 1))
        features.append(out.flatten(1).double().cpu())
    return torch.cat(features).numpy()


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set (N x dims)."""
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_to(reference: tuple[np.ndarray, np.ndarray], features: np.ndarray) -> float:
    """Fréchet distance between a reference Gaussian (mean, covariance) and a feature set's
    (pytorch-fid's ``calculate_frechet_distance``: scipy's sqrtm with its stabilisation)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    mu, sigma = gaussian(features)
    return float(calculate_frechet_distance(reference[0], reference[1], mu, sigma))


def frechet(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two sets of Inception features (their means and covariances)."""
    return frechet_to(gaussian(features_a), features_b)


def _chunks(images: torch.Tensor, size: int) -> Iterable[torch.Tensor]:
    for i in range(0, len(images), size):
        yield images[i : i + size]


def split_images(run: TrainedRun, split: str, limit: int | None, size: int) -> Iterable[torch.Tensor]:
    """The run's real images of ``split`` (uint8, in order), the first ``limit`` of them (None:
    all), in chunks of ``size``."""
    left = limit
    for batch in run.data.batches(split, train=False).epoch(0):
        images = batch["images"] if left is None else batch["images"][:left]
        yield from _chunks(images, size)
        if left is not None:
            left -= len(images)
            if left <= 0:
                return


def _weights_staged(cfg: Any, weights: str = "fid_inception", **_: Any) -> None:
    weight_path(weights, cfg.paths.cache)


@ANALYSES.register("fid")
@requires(_weights_staged)
def fid(
    run: TrainedRun,
    out_dir: Path,
    split: str = "train",
    num_images: int | None = None,
    batch_size: int = 100,
    dims: int = 2048,
    weights: str = "fid_inception",
    seed: int = 99,
) -> dict[str, Any]:
    """FID of generated images (eval mode, the task's seeded inputs: GAN latents, or a diffusion
    model's initial noise sampled with its DDIM steps) against the real images of ``split``
    (all of them unless ``num_images``; as many generated as real). ``weights`` names the staged
    Inception file: the real pytorch-fid weights in production, a stand-in in tests."""
    from hpclab.analysis.samples import generate, generative_task
    from hpclab.data.transforms import to_float

    task = generative_task(run)
    device = run.device
    model = inception(dims, run.cfg.paths.cache, weights, device)

    real = activations(model, (to_float(c) for c in split_images(run, split, num_images, batch_size)), device)
    n = len(real)
    z = task.fixed_inputs(torch.device("cpu"), n=n, seed=seed)

    def fake_batches() -> Iterable[torch.Tensor]:
        for chunk in _chunks(z, batch_size):
            yield generate(run, chunk.to(device), batch_size)

    fake = activations(model, fake_batches(), device)
    if n <= dims:
        log.warning(
            "FID from %d images with %d features: the covariances are singular and the value is biased "
            "upwards; compare only runs with the same count",
            n,
            dims,
        )
    result = {
        "fid": frechet(real, fake),
        "real_images": n,
        "generated_images": len(fake),
        "split": split,
        "dims": dims,
        "weights": weights,
        "seed": seed,
    }
    write_json(Path(out_dir) / "fid.json", result)
    log.info("FID (%s, %d real vs %d generated, %d dims): %.3f", split, n, len(fake), dims, result["fid"])
    return result


# --------------------------------------------------------------------------- FD in a classifier's features

DATA_TITLES = {
    "fashion_mnist": "Fashion-MNIST",
    "mnist": "MNIST",
    "notmnist": "notMNIST",
    "cifar10": "CIFAR-10",
    "digits": "digits",
    "stl10": "STL-10",
}


class ClassifierFeatures:
    """A finished classification run as a feature extractor: its best weights, its own input
    preprocessing (``task.inputs``), images resized to the size it was trained on, and the input
    of its last linear layer (the penultimate activations) as the features."""

    def __init__(self, run: str | Path, device: torch.device | str = "cpu") -> None:
        from hpclab.config import load_run_config
        from hpclab.data.hdf5 import describe
        from hpclab.data.loader import DataInfo
        from hpclab.data.prepare import hdf5_path
        from hpclab.registry import kwargs_of
        from hpclab.tasks import TASKS

        weights, run_dir = run_weights(run), run_of(run)
        fix = (
            "train the classifier first: python jobs/launch.py experiment=fmnist_cnn (or point classifier= at "
            "results/<group>/<run> of a finished classification run)"
        )
        if not weights.is_file() or not (run_dir / CONFIG).is_file():
            raise WeightsMissing(
                f"fd_classifier: no trained classifier at {run_dir} ({weights.name} or {CONFIG} missing); {fix}"
            )
        cfg = load_run_config(run_dir)
        self.task = TASKS.build(cfg.task.name, kwargs_of(cfg.task))
        if not hasattr(self.task, "inputs"):
            raise ConfigError(f"fd_classifier: {run_dir} is a '{cfg.task.name}' run, not a classification run")
        data_file = hdf5_path(cfg)
        if not data_file.is_file():
            raise WeightsMissing(
                f"fd_classifier: the classifier's data {data_file} is missing (its image size comes "
                f"from there); stage it: python jobs/prepare_data.py data={cfg.data.name}"
            )
        info = describe(data_file)
        channels, size = info["splits"]["train"]["images"][1:3]
        classes = list(cfg.data.classes) if cfg.data.classes else info["class_names"]
        data_info = DataInfo(
            in_channels=channels, image_size=size, num_classes=len(classes), class_names=classes, path=data_file
        )
        model = self.task.build_models(OmegaConf.to_container(cfg.model, resolve=True), data_info)["model"]
        state = read_weights(weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # keys or shapes of another model
            raise ConfigError(
                f"fd_classifier: {weights} does not fit the model of {run_dir} ({str(exc).splitlines()[0][:160]})"
            ) from None
        self.model = model.eval().to(device)
        linears = [m for m in self.model.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise ConfigError(f"fd_classifier: the model of {run_dir} has no linear layer to take features from")
        self.last = linears[-1]
        self.channels, self.size, self.device = channels, size, device
        self.run_dir, self.data_name = run_dir, cfg.data.name
        self.label = f"FD ({DATA_TITLES.get(cfg.data.name, cfg.data.name)} CNN features)"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """Features (float64, N x width) of images in [0, 1] (float) or uint8, any size."""
        x = images.to(self.device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if x.shape[1] != self.channels:
            raise ValueError(
                f"fd_classifier: images have {x.shape[1]} channel(s), the classifier takes {self.channels}"
            )
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        captured: list[torch.Tensor] = []
        handle = self.last.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
        try:
            self.model(self.task.inputs({"images": x.clamp(0, 1)}, train=False))
        finally:
            handle.remove()
        return captured[0].flatten(1).double().cpu().numpy()

    def of_batches(self, batches: Iterable[torch.Tensor]) -> np.ndarray:
        return np.concatenate([self(b) for b in batches])


def classifier_trained(cfg: Any, classifier: str = "", **_: Any) -> None:
    """The prerequisite of the analyses that measure an FD in a classifier's features: the
    classification run ``classifier`` is finished and loads (before the run starts)."""
    ClassifierFeatures(_classifier_run(classifier))


def _classifier_run(classifier: str) -> str:
    if not classifier:
        raise ConfigError("the FD needs classifier=results/<group>/<run> (a finished classification run)")
    return classifier


class FrechetTable:
    """What every FD table of a generative run shares, so the rows of different models and
    studies compare: ``classifier``'s features, the Gaussian of the real ``reference`` images
    (all of them), ``num_images`` per row, the floor row (the real ``real`` images) and the
    ceiling row (as many uniform-noise images). Generated images come from the task's seeded
    inputs (``seed``) and go through the same resizing to the classifier's size."""

    def __init__(
        self, run: TrainedRun, classifier: str, reference: str, real: str, num_images: int, batch_size: int, seed: int
    ) -> None:
        from hpclab.analysis.samples import generative_task

        self.task = generative_task(run)
        self.run, self.reference, self.real, self.batch_size, self.seed = run, reference, real, batch_size, seed
        self.net = ClassifierFeatures(_classifier_run(classifier), run.device)
        self.label = self.net.label
        self.ref = gaussian(self.net.of_batches(split_images(run, reference, None, batch_size)))
        real_features = self.net.of_batches(split_images(run, real, num_images, batch_size))
        self.n = len(real_features)
        self.floor = {"images": f"real {real} set", "fd": frechet_to(self.ref, real_features)}

    def of_models(self, models: dict[str, torch.nn.Module], **options: Any) -> float:
        """FD of the ``n`` images the task generates with ``models`` from its seeded inputs."""
        inputs = self.task.fixed_inputs(torch.device("cpu"), n=self.n, seed=self.seed)
        generator = torch.Generator(self.run.device).manual_seed(self.seed)  # a stochastic sampler's draws
        with torch.no_grad():
            batches = (
                self.task.generate(models, chunk.to(self.run.device), generator=generator, **options)
                for chunk in _chunks(inputs, self.batch_size)
            )
            return frechet_to(self.ref, self.net.of_batches(batches))

    def ceiling(self) -> dict[str, Any]:
        noise = torch.rand(
            (self.n, *self.run.data.split(self.reference).item_shape),
            generator=torch.Generator().manual_seed(self.seed),
        )
        return {
            "images": "uniform noise",
            "fd": frechet_to(self.ref, self.net.of_batches(_chunks(noise, self.batch_size))),
        }

    def write(
        self, out_dir: Path, name: str, rows: list[dict[str, Any]], keys: list[str], panel: Panel
    ) -> dict[str, Any]:
        """``name``.{md,csv} (columns: images, ``keys``, FD), the curve ``panel`` (with the floor and
        the ceiling drawn as levels) as ``name``.png, and the fields every FD record has."""
        from hpclab.analysis.figures import Level, plot_panels
        from hpclab.analysis.report import write_table

        out_dir = Path(out_dir)
        body = [[r["images"], *(r.get(k) for k in keys), round(r["fd"], 4)] for r in rows]
        title = (
            f"{self.label} against the {len(self.run.data.indices[self.reference])} real {self.reference} images; "
            f"{self.n} images per row; classifier {self.net.run_dir}"
        )
        files = write_table(["images", *keys, self.label], body, out_dir / name, title)
        panel.levels = [
            Level(rows[0]["fd"], f"real {self.real} set (floor)", "--", "green"),
            Level(rows[-1]["fd"], "uniform noise", ":", "red"),
        ]
        plot_panels([panel], out_dir / f"{name}.png", panel_size=(6, 3.6))
        return {
            "metric": self.label,
            "classifier": str(self.net.run_dir),
            "reference": self.reference,
            "reference_images": len(self.run.data.indices[self.reference]),
            "images_per_set": self.n,
            "seed": self.seed,
            "floor_real": rows[0]["fd"],
            "noise": rows[-1]["fd"],
            "figure": str(out_dir / f"{name}.png"),
            **files,
        }


@ANALYSES.register("fd_classifier")
@requires(classifier_trained)
def fd_classifier(
    run: TrainedRun,
    out_dir: Path,
    classifier: str = "",
    reference: str = "train",
    real: str = "test",
    num_images: int = 10000,
    batch_size: int = 500,
    epochs: list[float] | None = None,
    seed: int = 99,
    sample_steps: int | None = None,
) -> dict[str, Any]:
    """FD in ``classifier``'s feature space (a classification run folder or its
    best_model.safetensors) against the real images of ``reference`` (all of them), for: the
    real images of ``real`` (the floor), ``num_images`` samples of the generative model (GAN or
    diffusion, ``sample_steps`` DDIM steps; default the task's) at every kept checkpoint
    (``epochs`` picks some; train.keep_checkpoints sets how many are kept) and at the final
    weights, and as many uniform-noise images. Writes fd_classifier.{json,md,png}."""
    from hpclab.analysis.figures import Line, Panel
    from hpclab.analysis.samples import models_over_training

    table = FrechetTable(run, classifier, reference, real, num_images, batch_size, seed)
    steps = sample_steps or getattr(table.task, "sample_steps", None)  # a diffusion model's; a GAN has none
    options = {} if steps is None else {"steps": steps}
    keys = ["epoch", "step"] + (["DDIM steps"] if steps else [])
    rows: list[dict[str, Any]] = [{**table.floor, "epoch": None, "step": None}]
    for what, step, epoch, models in models_over_training(run, epochs):
        rows.append(
            {
                "images": what,
                "epoch": epoch,
                "step": step,
                "DDIM steps": steps,
                "fd": table.of_models(models, **options),
            }
        )
    rows.append({**table.ceiling(), "epoch": None, "step": None})
    gen = [r for r in rows if r["images"].startswith("generated")]
    panel = Panel(
        [Line([r["epoch"] for r in gen], [r["fd"] for r in gen], "generated", "o-")], "epoch", table.label, log_y=True
    )
    result = table.write(Path(out_dir), "fd_classifier", rows, keys, panel)
    result.update(final=gen[-1]["fd"], by_epoch={str(r["epoch"]): r["fd"] for r in gen}, **options)
    write_json(Path(out_dir) / "fd_classifier.json", result)
    log.info(
        "%s: real %s %.3f, final generator %.3f, noise %.3f",
        table.label,
        real,
        result["floor_real"],
        result["final"],
        result["noise"],
    )
    return result


@ANALYSES.register("fd_sampling_steps")
@requires(classifier_trained)
def fd_sampling_steps(
    run: TrainedRun,
    out_dir: Path,
    classifier: str = "",
    steps: Sequence[int] = (5, 10, 20, 50, 100),
    reference: str = "train",
    real: str = "test",
    num_images: int = 10000,
    batch_size: int = 500,
    seed: int = 99,
    show: int = 10,
) -> dict[str, Any]:
    """FD in ``classifier``'s features (as ``fd_classifier``: the same floor, ceiling and image
    count) of a diffusion model's final weights sampled with each number of DDIM ``steps``, as a
    table and a curve (fd_sampling_steps.{json,md,png}), and the first ``show`` samples of every
    step count from the same initial noise (samples_by_steps.png)."""
    from hpclab.analysis.figures import Line, Panel
    from hpclab.analysis.grids import image_rows
    from hpclab.analysis.samples import generate

    if not hasattr(run.task, "sample_steps"):
        raise ValueError(
            f"fd_sampling_steps needs a diffusion run (task=diffusion), the run uses {run.cfg.task.name!r}"
        )
    counts = sorted({int(k) for k in steps})
    if not counts or counts[0] < 1:
        raise ValueError(f"fd_sampling_steps: steps must be positive step counts, got {list(steps)}")
    table = FrechetTable(run, classifier, reference, real, num_images, batch_size, seed)
    models = {n: run.unwrap(n) for n in table.task.sampling_models}
    rows: list[dict[str, Any]] = [{**table.floor, "DDIM steps": None}]
    with run.evaluating():
        rows += [
            {"images": "generated (final weights)", "DDIM steps": k, "fd": table.of_models(models, steps=k)}
            for k in counts
        ]
    rows.append({**table.ceiling(), "DDIM steps": None})
    gen = rows[1:-1]
    panel = Panel(
        [Line(counts, [r["fd"] for r in gen], "generated (final weights)", "o-")],
        "DDIM sampling steps",
        table.label,
        log_y=True,
        log_x_base=10,
    )
    out_dir = Path(out_dir)
    result = table.write(out_dir, "fd_sampling_steps", rows, ["DDIM steps"], panel)
    noise = table.task.fixed_inputs(torch.device("cpu"), n=show, seed=seed)
    strips = {f"{k} steps": generate(run, noise, steps=k) for k in counts}
    result.update(
        epoch=round(run.step / run.steps_per_epoch, 6),
        step=run.step,
        by_steps={str(r["DDIM steps"]): r["fd"] for r in gen},
        samples=str(
            image_rows(
                strips,
                out_dir / "samples_by_steps.png",
                title="the same initial noise, sampled with each number of DDIM steps",
            )
        ),
    )
    write_json(out_dir / "fd_sampling_steps.json", result)
    log.info(
        "%s by DDIM steps: %s (real %s %.3f, noise %.3f)",
        table.label,
        ", ".join(f"{k}: {v:.3f}" for k, v in result["by_steps"].items()),
        real,
        result["floor_real"],
        result["noise"],
    )
    return result
