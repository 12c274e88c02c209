"""Classifiers built on an autoencoder's encoder, for the AE pre-training study.

``ae_encoder_classifier`` builds the autoencoder named in ``ae`` (same registry, same arguments, hence
the same parameter names), optionally loads a trained AE run's ``best_model.safetensors`` into
it (safetensors only: no pickle), keeps the parts its ``encode`` uses and puts a head on the
latent. With ``pretrained: false`` the same network starts from scratch: the only difference
between the two arms of the study is the initialisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from hpclab.errors import ConfigError
from hpclab.models import MODELS
from hpclab.models.layers import mlp
from hpclab.registry import check_kwargs
from hpclab.weights import WeightsMissing


def encoder_parts(ae: nn.Module, in_channels: int, image_size: int) -> list[str]:
    """Names of the top-level submodules that ``ae.encode`` runs (found with hooks)."""
    used: list[str] = []
    hooks = [child.register_forward_hook(lambda *_, name=name: used.append(name))
             for name, child in ae.named_children()]
    try:
        with torch.no_grad():
            ae.encode(torch.zeros(2, in_channels, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(used))


def load_ae_weights(ae: nn.Module, path: str | Path) -> None:
    """Load a trained AE's safetensors file into ``ae`` (all keys must match)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsMissing(f"model.encoder_weights: {path} does not exist; train the autoencoder run first "
                             f"(e.g. python jobs/launch.py experiment=ae_latent run_group=ae_latent run_name=latent_dim-32) "
                             f"or point model.encoder_weights at results/<group>/<run>/checkpoints/best_model.safetensors")
    state = load_file(str(path))
    own = ae.state_dict()
    missing = sorted(set(own) - set(state))
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or mismatched:
        what = f"missing {missing[:3]}" if missing else f"shape of {mismatched[0]} {tuple(state[mismatched[0]].shape)} != {tuple(own[mismatched[0]].shape)}"
        raise ConfigError(f"model.encoder_weights: {path} does not fit model.ae ({what}); "
                          f"model.ae must repeat the autoencoder's name and arguments")
    ae.load_state_dict({k: state[k] for k in own})


@MODELS.register("ae_encoder_classifier")
class AEClassifier(nn.Module):
    """Encoder of the AE ``ae`` ({name: ..., **arguments}) + an MLP head (``head_hidden``)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 ae: Optional[dict[str, Any]] = None, pretrained: bool = False,
                 encoder_weights: Optional[str] = None, freeze_encoder: bool = False,
                 head_hidden: Sequence[int] = (128,)) -> None:
        super().__init__()
        spec = dict(ae or {"name": "conv_ae"})
        check_kwargs("model.ae", spec, MODELS)
        name = spec.pop("name")
        autoencoder = MODELS.build(name, spec, in_channels=in_channels, image_size=image_size)
        if pretrained:
            if not encoder_weights:
                raise ConfigError("model.encoder_weights: set it (results/<group>/<run>/checkpoints/best_model.safetensors) "
                                  "when model.pretrained=true")
            load_ae_weights(autoencoder, encoder_weights)
        for part in [n for n, _ in autoencoder.named_children() if n not in encoder_parts(autoencoder, in_channels, image_size)]:
            delattr(autoencoder, part)  # the decoder: unused parameters would only confuse DDP
        self.autoencoder = autoencoder
        if freeze_encoder:
            self.autoencoder.requires_grad_(False)
        with torch.no_grad():
            dim = autoencoder.encode(torch.zeros(2, in_channels, image_size, image_size)).flatten(1).shape[1]
        self.head = mlp(dim, head_hidden, num_classes)
        self.pretrained = pretrained

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))
