"""Autoencoders. ``conv_ae`` is the configurable one of the latent-size and upsampling studies;
the course briefs' exact models follow it: ``linear_ae`` (MNIST LinearAutoEncoder, notMNIST dense
AE), ``cnn_ae`` (MNIST AutoEncoder_CNN), ``strided_ae`` (Fashion-MNIST 3-d latent AE),
``pool_upsample_ae`` (notMNIST denoising AE) and ``stl_ae`` (STL-10 pretraining AE, LUMS
Part 2). Classifiers on their encoders are in ``ae_classifiers``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from hpclab.models import MODELS
from hpclab.models.layers import conv_bn, mlp

UPSAMPLING = ("transpose", "transpose3", "bilinear")


def upsample_block(c_in: int, c_out: int, mode: str) -> nn.Module:
    """Double the spatial size: ``transpose`` a 4x4 stride-2 transposed conv (the DCGAN-style
    default), ``transpose3`` a 3x3 stride-2 transposed conv (output_padding 1), or ``bilinear``
    resize + 3x3 conv. ``transpose3`` and ``bilinear`` have weights of the same shapes, so
    decoders built with them have exactly the same parameter count (like-for-like comparison)."""
    if mode == "transpose":
        return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)
    if mode == "transpose3":
        return nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)
    if mode == "bilinear":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(c_in, c_out, 3, padding=1)
        )
    raise ValueError(f"model.upsampling must be one of {', '.join(UPSAMPLING)}, got {mode!r}")


class SequentialAutoEncoder(nn.Module):
    """An autoencoder built as ``self.encoder`` and ``self.decoder`` modules, usable separately."""

    encoder: nn.Module
    decoder: nn.Module

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@MODELS.register("conv_ae")
class ConvAutoEncoder(nn.Module):
    """Conv + pool encoder -> dense latent of size ``latent_dim`` -> dense + reshape (e.g.
    128 x 4 x 4) -> upsampling back to the input size and channels, Sigmoid output.

    Pooling uses ``ceil_mode`` so odd sizes work (28 -> 14 -> 7 -> 4); the decoder doubles from
    there and centre-crops the few extra pixels (32 -> 28).
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        latent_dim: int = 32,
        channels: Sequence[int] = (32, 64, 128),
        upsampling: str = "transpose",
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.latent_dim = latent_dim
        layers: list[nn.Module] = []
        c = in_channels
        for width in channels:
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            c = width
        self.features = nn.Sequential(*layers)
        self.start = math.ceil(image_size / 2 ** len(channels))
        flat = channels[-1] * self.start**2
        self.to_latent = nn.Sequential(nn.Flatten(), nn.Linear(flat, latent_dim))
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, flat), nn.ReLU(inplace=True))
        ups: list[nn.Module] = []
        widths = list(channels[::-1]) + [channels[0]]
        for a, b in zip(widths[:-1], widths[1:]):
            ups += [upsample_block(a, b, upsampling), nn.ReLU(inplace=True)]
        ups += [nn.Conv2d(widths[-1], in_channels, 3, padding=1), nn.Sigmoid()]
        self.decoder_convs = nn.Sequential(*ups)
        self.top_channels = channels[-1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.features(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).view(-1, self.top_channels, self.start, self.start)
        out = self.decoder_convs(h)
        extra = out.shape[-1] - self.image_size
        if extra:
            lo = extra // 2
            out = out[..., lo : lo + self.image_size, lo : lo + self.image_size]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# --------------------------------------------------------------------------- course-brief models


def _activation(name: str) -> nn.Module:
    """``relu`` | ``sigmoid`` | ``none`` as a module (for configurable latent activations)."""
    table = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "none": nn.Identity}
    if name not in table:
        raise ValueError(f"activation must be one of {', '.join(table)}, got {name!r}")
    return table[name]()


@MODELS.register("linear_ae")
class LinearAutoEncoder(SequentialAutoEncoder):
    """Dense AE. Defaults are the MNIST brief's ``LinearAutoEncoder``: Flatten -> 784-128-64-32-15
    (ReLU after every linear layer but the last), decoder 15-32-64-128-784 (ReLU after every
    layer but the last), Sigmoid, reshape to (-1, C, H, W).

    ``hidden=[]`` with ``latent_activation=relu`` is the shallow dense AE of the notMNIST
    practical (784-32-784). ``encoder`` and ``decoder`` are separate modules, usable alone.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: Sequence[int] = (128, 64, 32),
        latent_dim: int = 15,
        latent_activation: str = "none",
    ) -> None:
        super().__init__()
        self.shape = (in_channels, image_size, image_size)
        self.latent_dim = latent_dim
        pixels = in_channels * image_size * image_size
        self.encoder = nn.Sequential(nn.Flatten(), *mlp(pixels, hidden, latent_dim), _activation(latent_activation))
        self.decoder = nn.Sequential(*mlp(latent_dim, hidden[::-1], pixels), nn.Sigmoid(), nn.Unflatten(1, self.shape))


@MODELS.register("cnn_ae")
class AutoEncoderCNN(nn.Module):
    """The MNIST brief's ``AutoEncoder_CNN`` (at most 35,000 parameters with the defaults).

    Encoder: 3x3 stride-2 conv + ReLU, 3x3 stride-2 conv + ReLU (28 -> 14 -> 7), a 5x5 conv
    (7 -> 3), max-pooling that returns its indices (2x2, ceil mode: 3 -> 2, so no row is
    dropped). Decoder: max-unpooling with those indices (2 -> 3), 5x5 transposed conv + ReLU
    (3 -> 7), two 3x3 stride-2 transposed convs with output_padding 1 (7 -> 14 -> 28), ReLU
    between them, Sigmoid. Widths (12, 24, 24) are our choice: 34,297 parameters.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, channels: Sequence[int] = (12, 24, 24)) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c3, 5),
        )
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(c3, c2, 5),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c1, in_channels, 3, stride=2, padding=1, output_padding=1),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled code, flattened (the indices stay behind: decoding needs the forward pass)."""
        return self.pool(self.encoder(x))[0].flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        pooled, indices = self.pool(h)
        return self.decoder(self.unpool(pooled, indices, output_size=h.shape[-2:]))


@MODELS.register("strided_ae")
class StridedConvAutoEncoder(SequentialAutoEncoder):
    """3x3 padding-1 convs with per-layer strides, one linear layer to a small latent, and the
    mirror image back. Defaults are the 3-d latent AE of the Fashion-MNIST brief (docs/briefs.md):
    convs 64, 32, 16, 2 with strides 2, 2, 1, 1 and ReLU, Linear(2*7*7 -> 3); decoder
    Linear(3 -> 2*7*7) + ReLU, transposed convs 16, 32, 64, 1 with strides 1, 1, 2, 2 (stride-2
    ones use output_padding 1 so 7 -> 14 -> 28), ReLU between, Sigmoid output.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = (64, 32, 16, 2),
        strides: Sequence[int] = (2, 2, 1, 1),
        latent_dim: int = 3,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides):
            raise ValueError("model.channels and model.strides must have the same length")
        self.latent_dim = latent_dim
        enc: list[nn.Module] = []
        c, size = in_channels, image_size
        for width, stride in zip(channels, strides):
            enc += [nn.Conv2d(c, width, 3, stride=stride, padding=1), nn.ReLU(inplace=True)]
            c, size = width, (size - 1) // stride + 1
        self.code_shape = (c, size, size)
        flat = c * size * size
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(flat, latent_dim))
        dec: list[nn.Module] = [nn.Linear(latent_dim, flat), nn.ReLU(inplace=True), nn.Unflatten(1, self.code_shape)]
        outs = [*channels[-2::-1], in_channels]
        for i, (width, stride) in enumerate(zip(outs, strides[::-1])):
            dec.append(nn.ConvTranspose2d(c, width, 3, stride=stride, padding=1, output_padding=stride - 1))
            dec.append(nn.ReLU(inplace=True) if i < len(outs) - 1 else nn.Sigmoid())
            c = width
        self.decoder = nn.Sequential(*dec)


@MODELS.register("pool_upsample_ae")
class PoolUpsampleAutoEncoder(SequentialAutoEncoder):
    """Conv + max-pool encoder, conv + upsample decoder ("same" 3x3 convs, ReLU, Sigmoid out).
    Defaults are the notMNIST practical's denoising AE exactly:
    conv 32, maxpool 2, conv 64, maxpool 2, conv 128 | conv 128, up 2, conv 64, up 2, conv 1.
    The code is the encoder's feature maps, flattened by ``encode`` and reshaped by ``decode``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        encoder: Sequence[int] = (32, 64, 128),
        decoder: Sequence[int] = (128, 64),
        upsample_mode: str = "nearest",
    ) -> None:
        super().__init__()
        if image_size % 2 ** (len(encoder) - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2**{len(encoder) - 1} (pooling steps)")
        enc: list[nn.Module] = []
        c = in_channels
        for i, width in enumerate(encoder):
            enc += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
            if i < len(encoder) - 1:
                enc.append(nn.MaxPool2d(2))
            c = width
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        for width in decoder:
            dec += [
                nn.Conv2d(c, width, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=2, mode=upsample_mode),
            ]
            c = width
        dec += [nn.Conv2d(c, in_channels, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)
        side = image_size // 2 ** (len(encoder) - 1)
        self.code_shape = (encoder[-1], side, side)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z.reshape(len(z), *self.code_shape))


def deconv_layer(c_in: int, c_out: int, stride: int, last: bool) -> nn.Sequential:
    """Transposed conv that doubles the size (stride 2) or keeps it (stride 1); the last one has
    no BatchNorm and ends in Sigmoid (pixels in [0, 1])."""
    conv = nn.ConvTranspose2d(c_in, c_out, 3, stride=stride, padding=1, output_padding=stride - 1, bias=last)
    return (
        nn.Sequential(conv, nn.Sigmoid()) if last else nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
    )


@MODELS.register("stl_ae")
class STLAutoEncoder(SequentialAutoEncoder):
    """The STL-10 pretraining AE: one stride-2 conv-BN-ReLU per entry of ``channels`` (plus an
    ``extra_conv`` stride-1 one at the bottom), 96 -> 6 px with the shipped four; the decoder is
    the mirror image in transposed convs, Sigmoid out. 196,035 parameters with the shipped
    channels (docs/briefs.md asks for about 200,000)."""

    def __init__(
        self, in_channels: int = 3, channels: Sequence[int] = (32, 48, 64, 96), extra_conv: bool = False
    ) -> None:
        super().__init__()
        widths = list(channels) + ([channels[-1]] if extra_conv else [])
        strides = [2] * len(channels) + ([1] if extra_conv else [])
        enc, c = [], in_channels
        for width, stride in zip(widths, strides):
            enc.append(conv_bn(c, width, 3, stride))
            c = width
        self.encoder = nn.Sequential(*enc)
        outs = widths[::-1][1:] + [in_channels]
        dec = [
            deconv_layer(a, b, s, last=i == len(outs) - 1)
            for i, (a, b, s) in enumerate(zip(widths[::-1], outs, strides[::-1]))
        ]
        self.decoder = nn.Sequential(*dec)
