"""DCGAN ("DCGAN for Flowers102" in docs/briefs.md) with a spectrally normalised discriminator.

Generator: z ~ N(0, I) of size ``latent_dim`` -> 4x4 transposed conv to ``channels`` maps at
4x4 -> blocks of (4x4 stride-2 transposed conv -> BatchNorm -> ReLU) that halve the channels while
the maps double, 8x8, 16x16, ... -> a last transposed conv to the image channels with Tanh and no
BatchNorm, at ``image_size`` (256 for the experiment; any power of two >= 8, so smoke runs use 32).

Discriminator: the mirror image: 4x4 stride-2 convs doubling the channels from
``channels / 2**(n-1)`` up to ``channels`` at 4x4, LeakyReLU, BatchNorm on every layer but the
input one, spectral normalisation on every conv weight, then a 4x4 conv to one logit and a
Sigmoid (computed in float32: a bf16 sigmoid saturates at 1 for logits above ~5.5).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from hpclab.models import MODELS


def _levels(image_size: int, channels: int) -> int:
    """Number of stride-2 layers between 4x4 and ``image_size``; checks the spec's shape rules."""
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"DCGAN image_size must be a power of two >= 8, got {image_size}")
    if channels & (channels - 1):
        raise ValueError(f"model.channels (CHANNEL_NUM) must be a power of two, got {channels}")
    levels = int(math.log2(image_size // 4))
    if channels >> (levels - 1) < 1:
        raise ValueError(
            f"model.channels={channels} is too small for {image_size} px: "
            f"it halves {levels - 1} times (use at least {2 ** (levels - 1)})"
        )
    return levels


def init_dcgan_weights(module: nn.Module, std: float = 0.02) -> None:
    """The DCGAN paper's initialisation: conv weights N(0, std), BatchNorm scale N(1, std), bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(
        self,
        latent_dim: int = 128,
        channels: int = 512,
        image_size: int = 256,
        out_channels: int = 3,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        levels = _levels(image_size, channels)
        self.latent_dim, self.image_size = latent_dim, image_size
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, channels, 4, 1, 0, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        ]
        c = channels
        for _ in range(levels - 1):
            layers += [
                nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c // 2),
                nn.ReLU(inplace=True),
            ]
            c //= 2
        layers += [nn.ConvTranspose2d(c, out_channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self, init_std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z``: N x latent_dim (or N x latent_dim x 1 x 1) -> images in [-1, 1]."""
        return self.net(z.reshape(len(z), self.latent_dim, 1, 1))


class Discriminator(nn.Module):
    def __init__(
        self,
        channels: int = 512,
        image_size: int = 256,
        in_channels: int = 3,
        leaky_slope: float = 0.2,
        spectral: bool = True,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        levels = _levels(image_size, channels)
        sn = spectral_norm if spectral else (lambda m: m)
        c = channels >> (levels - 1)
        layers: list[nn.Module] = [sn(nn.Conv2d(in_channels, c, 4, 2, 1)), nn.LeakyReLU(leaky_slope, inplace=True)]
        for _ in range(levels - 1):
            layers += [
                sn(nn.Conv2d(c, c * 2, 4, 2, 1, bias=False)),
                nn.BatchNorm2d(c * 2),
                nn.LeakyReLU(leaky_slope, inplace=True),
            ]
            c *= 2
        self.features = nn.Sequential(*layers)
        self.head = sn(nn.Conv2d(c, 1, 4, 1, 0))  # 4x4 -> 1x1 logit
        self.sigmoid = nn.Sigmoid()
        init_dcgan_weights(self, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> probability of 'real', shape N."""
        return self.sigmoid(self.head(self.features(x)).float()).flatten()


@MODELS.register("dcgan")
class DCGAN(nn.Module):
    """The pair, built from one config section; the ``gan`` task trains its two parts with
    their own optimizers. ``channels`` is CHANNEL_NUM, ``latent_dim`` is LATENT_DIM."""

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 256,
        latent_dim: int = 128,
        channels: int = 512,
        leaky_slope: float = 0.2,
        spectral_norm: bool = True,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.generator = Generator(latent_dim, channels, image_size, in_channels, init_std)
        self.discriminator = Discriminator(channels, image_size, in_channels, leaky_slope, spectral_norm, init_std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)
