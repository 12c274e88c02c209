"""Transfer learning: a pretrained feature extractor plus a new MLP head, frozen or fine-tuned.

``FeatureClassifier`` is shared by the ImageNet backbones here and by the classifier on an
autoencoder's encoder (``hpclab.models.ae_classifiers``). A frozen extractor has
``requires_grad=False`` (so the engine's optimizer only sees the head) and stays in eval mode,
so its BatchNorm statistics are the pretrained ones even while the head trains.

Pretrained ImageNet weights are never downloaded here: they are read from the staged cache
(``python jobs/prepare_data.py weights=[resnet18]``), checked against their sha256 prefix, and
loaded with ``weights_only=True``; a missing or corrupt file is a one-line error naming that
command. Models expect inputs in [0, 1] (set ``task.normalize: false``) and apply ImageNet's
mean/std themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hpclab.models import MODELS
from hpclab.models.layers import mlp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureClassifier(nn.Module):
    """``features`` (N x C x H x W -> N x F) then an MLP head with ``hidden`` widths."""

    def __init__(
        self,
        features: nn.Module,
        num_features: int,
        num_classes: int,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        freeze: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        resize: int | None = None,
    ) -> None:
        super().__init__()
        self.features = features
        self.head = mlp(num_features, hidden, num_classes, dropout)
        self.freeze = freeze
        self.resize = resize
        if mean is not None:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        else:
            self.mean = self.std = None
        if freeze:
            self.features.requires_grad_(False)
            self.features.eval()

    def train(self, mode: bool = True) -> FeatureClassifier:
        super().train(mode)
        if self.freeze:
            self.features.eval()  # keep pretrained BatchNorm statistics and no dropout
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The features the head sees, flattened (what latent analyses plot and probe)."""
        if self.resize:  # no shape test: keeps the forward traceable by torch.fx
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False, antialias=True)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        if self.freeze:
            with torch.no_grad():
                return self.features(x).flatten(1)
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))


def strip_classifier(model: nn.Module) -> int:
    """Replace the backbone's last Linear layer (its ImageNet classifier) by Identity; return
    the feature width. Works for torchvision's ResNets, EfficientNets, MobileNets, ConvNeXts,
    VGGs, DenseNets and ViTs, whose final module is a Linear (possibly inside a Sequential)."""
    last = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not last:
        raise ValueError(f"{type(model).__name__} has no Linear classifier to replace")
    name, linear = last[-1]
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.Identity())
    return linear.in_features


def imagenet_backbone(backbone: str, weights: str | None, cache: str | None) -> tuple[nn.Module, int]:
    """A torchvision classification model with ``weights`` (a hpclab.weights entry name, or None
    for random initialisation) loaded offline; its classifier stripped."""
    import torchvision

    from hpclab.weights import WeightsMissing, load_state_dict

    try:
        model = torchvision.models.get_model(backbone, weights=None)
    except ValueError:
        raise ValueError(f"model.backbone: unknown torchvision model '{backbone}'") from None
    if weights:
        state = load_state_dict(weights, cache)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsMissing(
                f"weights '{weights}' do not fit backbone '{backbone}': {str(exc).splitlines()[0]}"
            ) from None
    return model, strip_classifier(model)


@MODELS.register("transfer")
class TransferClassifier(FeatureClassifier):
    """An ImageNet-pretrained torchvision backbone with a new head of 0, 1 or 2 hidden layers.

    ``weights``: "imagenet" (the staged entry named like the backbone, e.g. resnet18), another
    entry of ``hpclab.weights.WEIGHTS``, or null (random init: training from scratch).
    ``cache``: the staged cache (configs pass ``${paths.cache}``; None means $TORCH_HOME).
    """

    def __init__(
        self,
        num_classes: int = 10,
        backbone: str = "resnet18",
        weights: str | None = "imagenet",
        cache: str | None = None,
        freeze: bool = True,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        resize: int | None = None,
    ) -> None:
        entry = backbone if weights == "imagenet" else weights
        features, width = imagenet_backbone(backbone, entry, cache)
        super().__init__(features, width, num_classes, hidden, dropout, freeze, IMAGENET_MEAN, IMAGENET_STD, resize)
