"""Contrastive pretraining of an autoencoder's encoder, SimCLR style (Chen, Kornblith, Norouzi &
Hinton 2020, arXiv:2002.05709): two random views of every image, the encoder, an MLP projection
head, and the NT-Xent loss over the 2N views of a batch.

The network is the configured autoencoder's encoder (what its ``encode`` runs; the decoder is
dropped) with the projection head on its code: an ``ae_encoder_classifier`` whose "classes" are
the projection's dimensions. So its weights file holds the encoder under the keys that
``ae_encoder_classifier`` loads with ``model.encoder_from``, and its ``encode`` gives the code
that the latent analyses (``latent_probe``, ``latent_scatter``) read; the head serves only here.

Views are made on the device, per image: random resized crop with a left-right flip, then
brightness/contrast jitter (``hpclab.data.transforms``); no blur, which SimCLR also leaves out on
32 px CIFAR-10 and which would wipe out most of a 28 px image. Training draws them from the
global torch RNG (saved in every checkpoint, so a resumed run draws the same views); evaluation
from the engine's per-batch seeded generator, so every evaluation sees the same views.

Metrics: ``loss`` (NT-Xent) and ``pair_acc``, the fraction of views whose most similar other
view of the batch is their partner (chance: 1 in 2N - 1, so it depends on the batch size:
evaluations use ``train.eval_batch_size``). Under data parallelism each rank contrasts its own
batch (negatives are not gathered across ranks, as SimCLR does on TPUs): the number of negatives
is set by the per-rank batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpclab.data.transforms import jitter_brightness_contrast, random_resized_crop, to_float
from hpclab.errors import ConfigError
from hpclab.models import MODELS
from hpclab.tasks import TASKS
from hpclab.tasks.base import Task, batch_count


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's loss for projections of N images' two views (N x D each): for each of the 2N
    views, cross-entropy of its cosine similarities to the 2N - 1 others (divided by
    ``temperature``) against its partner; mean over views. Also whether each view's most
    similar other view is its partner (2N booleans)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    similarity = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.arange(2 * n, device=z.device).add(n).remainder(2 * n)
    return F.cross_entropy(similarity, partner), similarity.argmax(1) == partner


@TASKS.register("contrastive")
class Contrastive(Task):
    """NT-Xent at ``temperature`` over two views per image; a projection head with one hidden
    layer of ``projection_hidden`` units to ``projection_dim``; views cropped to an area fraction
    in ``crop_scale`` (flipped when ``flip``) and jittered by ``jitter`` with probability
    ``jitter_p``."""

    def __init__(
        self,
        temperature: float = 0.5,
        projection_hidden: int = 128,
        projection_dim: int = 64,
        crop_scale: Sequence[float] = (0.3, 1.0),
        flip: bool = True,
        jitter: float = 0.4,
        jitter_p: float = 0.8,
    ) -> None:
        if temperature <= 0:
            raise ConfigError(f"config key 'task.temperature': must be > 0, got {temperature}")
        if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ConfigError(
                f"config key 'task.crop_scale': two area fractions 0 < low <= high <= 1, got {list(crop_scale)}"
            )
        if not 0 <= jitter < 1 or not 0 <= jitter_p <= 1:
            raise ConfigError(
                f"config keys 'task.jitter' (in [0, 1)) and 'task.jitter_p' (in [0, 1]): got {jitter} and {jitter_p}"
            )
        self.temperature = temperature
        self.projection_hidden, self.projection_dim = projection_hidden, projection_dim
        self.crop_scale = tuple(float(s) for s in crop_scale)
        self.flip, self.jitter, self.jitter_p = flip, jitter, jitter_p

    def build_models(self, model_cfg: dict[str, Any], info: Any) -> dict[str, nn.Module]:
        name = model_cfg.get("name")
        if not callable(getattr(MODELS[name], "encode", None)):
            raise ConfigError(f"task 'contrastive' trains an autoencoder's encoder; model '{name}' has no encode()")
        network = MODELS.build(
            "ae_encoder_classifier",
            {"ae": model_cfg, "hidden": [self.projection_hidden]},
            in_channels=info.in_channels,
            image_size=info.image_size,
            num_classes=self.projection_dim,
        )
        return {"model": network}

    def views(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Two random views of every image of ``x`` (N x C x H x W in [0, 1]): 2N images, the
        first views then the second ones."""
        both = random_resized_crop(torch.cat([x, x]), self.crop_scale, flip=self.flip, generator=generator)
        return jitter_brightness_contrast(both, self.jitter, self.jitter_p, generator=generator)

    def loss(self, models, batch, train, generator=None):
        x = to_float(batch["images"])
        z = models["model"](self.views(x, generator)).float()
        n = len(x)
        loss, found = nt_xent(z[:n], z[n:], self.temperature)
        count = batch_count(n, z)
        return loss, {"loss": loss.detach() * count, "pair_acc": found.float().sum() / 2, "count": count}

    @torch.no_grad()
    def images(self, models, batch, generator):
        x = to_float(batch["images"])
        views = self.views(x, generator)
        return {"image": x, "view_1": views[: len(x)], "view_2": views[len(x) :]}
