"""Fréchet Inception Distance (pytorch-fid) between generated and real images, offline.

pytorch-fid would download its Inception weights on first use; compute nodes have no internet,
so the weights come from the staged cache (``python jobs/prepare_data.py weights=[fid_inception]``),
checked against their sha256 prefix, and a missing file is a one-line error naming that command.
The network is pytorch-fid's own (``InceptionV3``, FID variant); only where its state dict comes
from is changed. Activations of the chosen block are average-pooled to ``dims`` features, and
``pytorch_fid.fid_score.calculate_frechet_distance`` compares their Gaussians.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Optional
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from hpclab.analysis import ANALYSES
from hpclab.utils import write_json
from hpclab.weights import WeightsMissing, weight_path

log = logging.getLogger("hpclab")


def inception(dims: int = 2048, cache: Optional[str | Path] = None, weights: str = "fid_inception",
              device: torch.device | str = "cpu", resize: bool = True) -> torch.nn.Module:
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
        out = model(images.to(device).float())[0]
        if out.shape[2:] != (1, 1):
            out = F.adaptive_avg_pool2d(out, (1, 1))
        features.append(out.flatten(1).double().cpu())
    return torch.cat(features).numpy()


def frechet(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two sets of Inception features (their means and covariances)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    sigma_a, sigma_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    return float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


def _chunks(images: torch.Tensor, size: int) -> Iterable[torch.Tensor]:
    for i in range(0, len(images), size):
        yield images[i : i + size]


def fid_of_images(a: torch.Tensor, b: torch.Tensor, model: torch.nn.Module, device: torch.device | str = "cpu",
                  batch_size: int = 50) -> float:
    """FID between two image tensors (N x 3 x H x W in [0, 1])."""
    return frechet(activations(model, _chunks(a, batch_size), device), activations(model, _chunks(b, batch_size), device))


@ANALYSES.register("fid")
def fid(trainer: Any, out_dir: Path, split: str = "train", num_images: Optional[int] = None, batch_size: int = 100,
        dims: int = 2048, weights: str = "fid_inception", seed: int = 99) -> dict[str, Any]:
    """FID of generated images (eval mode, seeded latents) against the real images of ``split``
    (all of them unless ``num_images``; as many generated as real). ``weights`` names the staged
    Inception file: the real pytorch-fid weights in production, a stand-in in tests."""
    from hpclab.analysis.gan import gan_task, generate
    from hpclab.data.transforms import to_float

    task = gan_task(trainer)
    device = trainer.device
    model = inception(dims, trainer.cfg.paths.cache, weights, device)

    def real_batches() -> Iterable[torch.Tensor]:
        left = num_images
        for batch in trainer.data.batches(split, train=False).epoch(0):
            images = batch["images"] if left is None else batch["images"][:left]
            for chunk in _chunks(images, batch_size):
                yield to_float(chunk)
            if left is not None:
                left -= len(images)
                if left <= 0:
                    return

    real = activations(model, real_batches(), device)
    n = len(real)
    z = task.fixed_latents(torch.device("cpu"), n=n, seed=seed)

    def fake_batches() -> Iterable[torch.Tensor]:
        for chunk in _chunks(z, batch_size):
            yield generate(trainer, chunk.to(device), batch_size)

    fake = activations(model, fake_batches(), device)
    if n <= dims:
        log.warning("FID from %d images with %d features: the covariances are singular and the value is biased "
                    "upwards; compare only runs with the same count", n, dims)
    result = {"fid": frechet(real, fake), "real_images": n, "generated_images": len(fake), "split": split,
              "dims": dims, "weights": weights, "seed": seed}
    write_json(Path(out_dir) / "fid.json", result)
    log.info("FID (%s, %d real vs %d generated, %d dims): %.3f", split, n, len(fake), dims, result["fid"])
    return result
