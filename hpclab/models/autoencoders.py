"""Autoencoders. ``conv_ae`` is the configurable one of the latent-size and upsampling studies."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from hpclab.models import MODELS


def upsample_block(c_in: int, c_out: int, mode: str) -> nn.Module:
    """Double the spatial size: a 4x4 stride-2 transposed conv, or bilinear resize + 3x3 conv."""
    if mode == "transpose":
        return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)
    if mode == "bilinear":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                             nn.Conv2d(c_in, c_out, 3, padding=1))
    raise ValueError(f"model.upsampling must be 'transpose' or 'bilinear', got {mode!r}")


@MODELS.register("conv_ae")
class ConvAutoEncoder(nn.Module):
    """Conv + pool encoder -> dense latent of size ``latent_dim`` -> dense + reshape (e.g.
    128 x 4 x 4) -> upsampling back to the input size and channels, Sigmoid output.

    Pooling uses ``ceil_mode`` so odd sizes work (28 -> 14 -> 7 -> 4); the decoder doubles from
    there and centre-crops the few extra pixels (32 -> 28).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, latent_dim: int = 32,
                 channels: Sequence[int] = (32, 64, 128), upsampling: str = "transpose") -> None:
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
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
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
