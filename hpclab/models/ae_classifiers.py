"""Classifiers on an autoencoder's encoder: the autoencoder pre-training studies
(``conv_ae`` on Fashion-MNIST, ``stl_ae`` on STL-10).

``ae_encoder_classifier`` builds the autoencoder ``ae`` ({name: ..., **arguments}, the
autoencoder run's own model config, hence the same parameter names), keeps the parts its
``encode`` runs, pools the code (``pool``) and puts an MLP head on it. With ``pretrained:
true`` the encoder starts from the trained run ``encoder_from`` (its folder, or its
``checkpoints/best_model.safetensors``; safetensors only, no pickle) and may stay frozen
(``freeze``); with ``pretrained: false`` the same network starts from scratch, so the two arms
of a study differ only in the initialisation. That run is an autoencoder run, or any run whose
model is this class on the same autoencoder (``task=contrastive`` pretraining trains one, with
its projection head as the head): only the encoder's weights are taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpclab.errors import ConfigError, WeightsMissing
from hpclab.models import MODELS
from hpclab.models.layers import pool_flatten
from hpclab.models.transfer import FeatureClassifier
from hpclab.registry import check_kwargs
from hpclab.rundir import read_weights, run_of, run_weights


class AutoEncoderFeatures(nn.Module):
    """What ``autoencoder.encode`` computes, pooled and flattened. The parts ``encode`` does not
    run (the decoder) are dropped: unused parameters would only confuse DDP and the counts."""

    def __init__(self, autoencoder: nn.Module, in_channels: int, image_size: int, pool: str) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.pool = pool_flatten(pool)
        used: list[str] = []
        hooks = [
            child.register_forward_hook(lambda *_, name=name: used.append(name))
            for name, child in autoencoder.named_children()
        ]
        try:
            with torch.no_grad():  # in eval mode: the probe must not move BatchNorm statistics
                code = self.eval().autoencoder.encode(torch.zeros(2, in_channels, image_size, image_size))
        finally:
            for hook in hooks:
                hook.remove()
            self.train()
        if code.dim() != 4 and pool != "flatten":
            raise ConfigError(
                f"model.pool: {type(autoencoder).__name__} encodes to a vector; "
                f"pool '{pool}' needs feature maps (use flatten)"
            )
        self.width = self.pool(code).shape[1]
        for name in [n for n, _ in autoencoder.named_children() if n not in used]:
            delattr(autoencoder, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.autoencoder.encode(x))


# where a model built on an autoencoder's encoder (this module's classifier, the contrastive
# task's network) keeps the autoencoder's own parameters
NESTED_ENCODER = "features.autoencoder."


def trained_weights(encoder_from: str | None) -> Path:
    """The best weights of the pretraining run ``encoder_from`` (its folder, or the file itself)."""
    if not encoder_from:
        raise ConfigError(
            "model.encoder_from: set it to a finished autoencoder or contrastive run "
            "(results/<group>/<run>) when model.pretrained=true"
        )
    weights = run_weights(encoder_from)
    if not weights.is_file():
        run_dir = run_of(encoder_from)
        raise WeightsMissing(
            f"model.encoder_from: {weights} does not exist; train the pretraining run first "
            f"(python jobs/launch.py experiment=<its experiment> run_group={run_dir.parent.name} "
            f"run_name={run_dir.name}) or point model.encoder_from at a finished autoencoder or "
            f"contrastive run"
        )
    return weights


def load_encoder(features: AutoEncoderFeatures, weights: Path) -> None:
    """Load a trained autoencoder's safetensors file into ``features``: every key of the kept
    encoder must be there with its shape (the decoder's keys are not used). The file may also hold
    the weights of a model built on that encoder (under ``features.autoencoder.``; its head is
    not used): a contrastive run's, or a classifier's. A file cut short is one line."""
    state = read_weights(
        weights, fix="train the pretraining run again (force=true), or point model.encoder_from at another finished run"
    )
    nested = {k.removeprefix(NESTED_ENCODER): v for k, v in state.items() if k.startswith(NESTED_ENCODER)}
    state = nested or state
    own = features.autoencoder.state_dict()
    missing = sorted(set(own) - set(state))
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or mismatched:
        what = (
            f"missing {missing[:3]}"
            if missing
            else f"shape of {mismatched[0]} {tuple(state[mismatched[0]].shape)} != {tuple(own[mismatched[0]].shape)}"
        )
        raise ConfigError(
            f"model.encoder_from: {weights} does not fit model.ae ({what}); "
            f"model.ae must repeat the autoencoder's name and arguments"
        )
    features.autoencoder.load_state_dict({k: state[k] for k in own})


@MODELS.register("ae_encoder_classifier")
class AEEncoderClassifier(FeatureClassifier):
    """The encoder of the autoencoder ``ae`` (pretrained and frozen, pretrained and fine-tuned,
    or from scratch), ``pool``, then an MLP head with ``hidden`` widths and ``dropout``."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int = 10,
        ae: dict[str, Any] | None = None,
        pretrained: bool = False,
        encoder_from: str | None = None,
        freeze: bool = False,
        pool: str = "flatten",
        hidden: Sequence[int] = (128,),
        dropout: float = 0.0,
    ) -> None:
        if freeze and not pretrained:
            raise ConfigError("model.freeze=true needs model.pretrained=true (a frozen random encoder learns nothing)")
        spec = dict(ae or {"name": "conv_ae"})
        check_kwargs("model.ae", spec, MODELS)
        weights = trained_weights(encoder_from) if pretrained else None
        autoencoder = MODELS.build(spec.pop("name"), spec, in_channels=in_channels, image_size=image_size)
        features = AutoEncoderFeatures(autoencoder, in_channels, image_size, pool)
        if weights is not None:
            load_encoder(features, weights)
        super().__init__(features, features.width, num_classes, hidden, dropout, freeze)
