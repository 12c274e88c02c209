"""STL-10 autoencoder pretraining (brief Part 2) and the classifier that reuses its encoder.

``stl_ae``: 4-5 strided conv layers (BatchNorm, ReLU) down to a 6x6 feature map, mirrored by
transposed convs back to 3 x 96 x 96 with a Sigmoid output; about 200,000 parameters with
the shipped channels (a test holds it within 10%).

``stl_ae_classifier``: that encoder plus an MLP head. ``encoder_from`` names a finished
``stl_ae`` run (its folder, or its ``checkpoints/best_model.safetensors``); the encoder is
rebuilt from that run's own config and loaded from the safetensors file, then frozen or
fine-tuned. With ``encoder_from: null`` the same network trains from scratch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from torch import nn

from hpclab.models import MODELS
from hpclab.models.autoencoders import SequentialAutoEncoder
from hpclab.models.layers import conv_bn, pool_flatten, pooled_features
from hpclab.models.transfer import FeatureClassifier
from hpclab.weights import WeightsMissing


class PretrainedMissing(WeightsMissing):
    """The autoencoder run whose encoder a classifier needs has not produced its weights."""


def deconv_layer(c_in: int, c_out: int, stride: int, last: bool) -> nn.Sequential:
    """Transposed conv that doubles the size (stride 2) or keeps it (stride 1); the last one has
    no BatchNorm and ends in Sigmoid (pixels in [0, 1])."""
    conv = nn.ConvTranspose2d(c_in, c_out, 3, stride=stride, padding=1, output_padding=stride - 1, bias=last)
    return nn.Sequential(conv, nn.Sigmoid()) if last else nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


@MODELS.register("stl_ae")
class STLAutoEncoder(SequentialAutoEncoder):
    """Encoder: one stride-2 conv per entry of ``channels`` (plus ``extra_conv`` stride-1 convs
    at the bottom); decoder: the mirror image in transposed convs."""

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (32, 48, 64, 96), extra_conv: bool = False) -> None:
        super().__init__()
        widths = list(channels) + ([channels[-1]] if extra_conv else [])
        strides = [2] * len(channels) + ([1] if extra_conv else [])
        enc, c = [], in_channels
        for width, stride in zip(widths, strides):
            enc.append(conv_bn(c, width, 3, stride))
            c = width
        self.encoder = nn.Sequential(*enc)
        outs = widths[::-1][1:] + [in_channels]
        dec = [deconv_layer(a, b, s, last=i == len(outs) - 1)
               for i, (a, b, s) in enumerate(zip(widths[::-1], outs, strides[::-1]))]
        self.decoder = nn.Sequential(*dec)
        self.code_channels = widths[-1]
        self.downsampling = 2 ** len(channels)



def pretrained_run(encoder_from: str) -> tuple[Path, dict[str, Any]]:
    """The safetensors file and the ``stl_ae`` kwargs of a finished autoencoder run."""
    from omegaconf import OmegaConf

    path = Path(encoder_from)
    weights = path if path.suffix == ".safetensors" else path / "checkpoints" / "best_model.safetensors"
    run_dir = weights.parent.parent
    fix = "train it first: python jobs/launch.py experiment=ae_pretrain (or point model.encoder_from at a finished stl_ae run)"
    if not weights.is_file():
        raise PretrainedMissing(f"autoencoder weights {weights} not found; {fix}")
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise PretrainedMissing(f"{config} (the autoencoder run's config) not found next to {weights}; {fix}")
    model_cfg = OmegaConf.to_container(OmegaConf.load(config).model, resolve=True)
    assert isinstance(model_cfg, dict)
    if model_cfg.pop("name", None) != "stl_ae":
        raise PretrainedMissing(f"{run_dir} is not an stl_ae run (model.name is not stl_ae); {fix}")
    return weights, model_cfg


@MODELS.register("stl_ae_classifier")
class STLAEClassifier(FeatureClassifier):
    """The ``stl_ae`` encoder (pretrained and frozen, pretrained and fine-tuned, or from
    scratch) followed by pooling and an MLP head."""

    def __init__(self, in_channels: int = 3, image_size: int = 96, num_classes: int = 10,
                 encoder_from: Optional[str] = None, freeze: bool = True, channels: Sequence[int] = (32, 48, 64, 96),
                 extra_conv: bool = False, pool: str = "avg3", hidden: Sequence[int] = (256,),
                 dropout: float = 0.3) -> None:
        from safetensors.torch import load_file

        ae_kwargs: dict[str, Any] = {"channels": list(channels), "extra_conv": extra_conv}
        state = None
        if encoder_from:
            weights, ae_kwargs = pretrained_run(encoder_from)
            state = load_file(str(weights))
        elif freeze:
            raise ValueError("model.freeze=true needs model.encoder_from (a frozen random encoder learns nothing)")
        ae = STLAutoEncoder(in_channels, **ae_kwargs)
        if state is not None:
            try:
                ae.load_state_dict(state)
            except RuntimeError as exc:
                raise PretrainedMissing(f"{encoder_from}: weights do not fit stl_ae{ae_kwargs}: "
                                        f"{str(exc).splitlines()[0]}") from None
        side = image_size // ae.downsampling
        width = pooled_features(pool, ae.code_channels, side)
        features = nn.Sequential(ae.encoder, pool_flatten(pool))
        super().__init__(features, width, num_classes, hidden, dropout, freeze=bool(encoder_from) and freeze)
