"""Image-to-image networks: the colourization CNN and a fully convolutional encoder-decoder.

``colour_cnn`` keeps the layer list of the colourization brief (CSC321/CMP 717 "Practical 3"):
two down blocks (conv, 2x2 max-pool, batch norm, ReLU), one conv at the lowest resolution, two
up blocks (conv, 2x nearest upsampling, batch norm, ReLU) and a final conv. Regression and
classification differ only in ``out_channels`` (3 RGB values or 24 colour logits), which the
task sets; the input channels too (1 grey channel, or 3 for super-resolution). Its convs are
the project's own unfold/matmul ``Conv2d`` unless ``conv: torch``. The U-Net version with skip
connections lives in ``unet.py``.

``fcn_ae`` is the denoising / in-painting encoder-decoder: only convolutions, so it runs on any
image size (inputs are padded to a multiple of the total stride and the output cropped back),
with ``skips: none | add | concat`` (concatenation fused by a 1x1 conv).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hpclab.models import MODELS
from hpclab.models.conv import make_conv

# --------------------------------------------------------------------------- colourization CNN


@MODELS.register("colour_cnn")
class ColourCNN(nn.Module):
    """Practical 3's plain CNN (docs/briefs.md): 1 -> NF -> 2NF (down), 2NF (lowest resolution),
    NF -> out (up), out -> out.

    ``skip=True`` (used by the U-Net subclass) widens the up convs and the final conv to take
    the concatenated encoder features / the network input.
    """

    layer_names = ("downconv1", "downconv2", "rfconv", "upconv1", "upconv2", "finalconv")
    skip = False

    def __init__(
        self, in_channels: int = 1, out_channels: int = 3, kernel: int = 3, num_filters: int = 32, conv: str = "own"
    ) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"model.kernel must be odd (same-size convs), got {kernel}")
        nf, k = num_filters, kernel
        skip = self.skip

        def block(c_in: int, c_out: int, resample: nn.Module | None) -> nn.Sequential:
            layers = [make_conv(conv, c_in, c_out, k)]
            layers += [resample] if resample is not None else []
            return nn.Sequential(*layers, nn.BatchNorm2d(c_out), nn.ReLU())

        self.downconv1 = block(in_channels, nf, nn.MaxPool2d(2))
        self.downconv2 = block(nf, 2 * nf, nn.MaxPool2d(2))
        self.rfconv = block(2 * nf, 2 * nf, None)
        self.upconv1 = block(2 * nf + (2 * nf if skip else 0), nf, nn.Upsample(scale_factor=2))
        self.upconv2 = block(nf + (nf if skip else 0), out_channels, nn.Upsample(scale_factor=2))
        self.finalconv = make_conv(conv, out_channels + (in_channels if skip else 0), out_channels, k)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(
                f"{type(self).__name__} needs image sides divisible by 4 (two 2x2 poolings), got {tuple(x.shape[-2:])}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        h = self.rfconv(self.downconv2(self.downconv1(x)))
        return self.finalconv(self.upconv2(self.upconv1(h)))


# --------------------------------------------------------------------------- learned upsampling


class LearnedUpsampling(nn.Module):
    """A network that runs at the low resolution, then learns the upsampling: ``body`` (any
    image-to-image model giving ``channels`` maps at its input's size), one 4x4 stride-2
    transposed conv + ReLU per factor of 2, and a 3x3 conv to ``out_channels``. The plain
    super-resolution CNN: it sees only the low-resolution pixels, no interpolated image."""

    def __init__(self, body: nn.Module, channels: int, out_channels: int, factor: int) -> None:
        super().__init__()
        steps = factor.bit_length() - 1
        if factor < 2 or 2**steps != factor:
            raise ValueError(
                f"learned upsampling doubles the size per step: factor must be a power of two, got {factor}"
            )
        self.body = body
        layers: list[nn.Module] = []
        for _ in range(steps):
            layers += [nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        self.upsample = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, out_channels, 3, padding=1)

    @property
    def layer_names(self) -> list[str]:
        inner = getattr(self.body, "layer_names", None) or [n for n, _ in self.body.named_children()]
        return [f"body.{n}" for n in inner] + [f"upsample.{i}" for i in range(1, len(self.upsample), 2)] + ["head"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.upsample(self.body(x)))


# --------------------------------------------------------------------------- encoder-decoder


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad H and W up to a multiple of ``multiple``; return the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def conv_stack(conv: str, c_in: int, c_out: int, count: int, batch_norm: bool, stride: int = 1) -> nn.Sequential:
    """``count`` 3x3 convs (the first may have a stride), each followed by (BN and) ReLU."""
    layers: list[nn.Module] = []
    for i in range(count):
        layers.append(make_conv(conv, c_in if i == 0 else c_out, c_out, 3, stride=stride if i == 0 else 1, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


SKIPS = ("none", "add", "concat")


class Merge(nn.Module):
    """How a decoder level meets its mirror encoder level: ignore, add, or concat + 1x1 conv."""

    def __init__(self, mode: str, channels: int) -> None:
        super().__init__()
        if mode not in SKIPS:
            raise ValueError(f"model.skips must be one of {', '.join(SKIPS)}, got {mode!r}")
        self.mode = mode
        self.fuse = (
            nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.ReLU(inplace=True)) if mode == "concat" else None
        )

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.mode == "add":
            return up + skip
        if self.fuse is not None:
            return self.fuse(torch.cat([up, skip], dim=1))
        return up


@MODELS.register("fcn_ae")
class EncoderDecoder(nn.Module):
    """Fully convolutional encoder-decoder with optional skips between mirrored levels.

    Level 0 works at full resolution; each further level halves it (stride-2 conv, or max-pool
    with ``down: pool``). The decoder doubles with 2x2 stride-2 transposed convs, merges the
    mirrored encoder features (``skips``) and applies ``convs_per_level`` 3x3 convs. Any input
    size works: it is padded to a multiple of 2^(levels-1) and the output cropped back.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        channels: Sequence[int] = (32, 64, 128),
        skips: str = "none",
        down: str = "stride",
        batch_norm: bool = False,
        convs_per_level: int = 2,
        output: str = "sigmoid",
        conv: str = "torch",
    ) -> None:
        super().__init__()
        if down not in ("stride", "pool"):
            raise ValueError(f"model.down must be stride or pool, got {down!r}")
        if output not in ("sigmoid", "logits"):
            raise ValueError(f"model.output must be sigmoid or logits, got {output!r}")
        if len(channels) < 1:
            raise ValueError("model.channels needs at least one level")
        out_channels = out_channels or in_channels
        self.multiple = 2 ** (len(channels) - 1)
        self.output = output
        self.encoder = nn.ModuleList()
        c_prev = in_channels
        for i, c in enumerate(channels):
            if i == 0:
                self.encoder.append(conv_stack(conv, c_prev, c, convs_per_level, batch_norm))
            elif down == "pool":
                self.encoder.append(
                    nn.Sequential(nn.MaxPool2d(2), conv_stack(conv, c_prev, c, convs_per_level, batch_norm))
                )
            else:
                self.encoder.append(conv_stack(conv, c_prev, c, convs_per_level, batch_norm, stride=2))
            c_prev = c
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for c_high, c_low in zip(channels[::-1][:-1], channels[::-1][1:]):
            self.up.append(nn.Sequential(nn.ConvTranspose2d(c_high, c_low, 2, stride=2), nn.ReLU(inplace=True)))
            self.merge.append(Merge(skips, c_low))
            self.decoder.append(conv_stack(conv, c_low, c_low, convs_per_level, batch_norm))
        self.head = nn.Conv2d(
            channels[0], out_channels, 1 if output == "logits" else 3, padding=0 if output == "logits" else 1
        )

    @property
    def layer_names(self) -> list[str]:
        enc = [f"encoder.{i}" for i in range(len(self.encoder))]
        return enc + [f"decoder.{i}" for i in range(len(self.decoder))] + ["head"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.multiple)
        features = []
        for level in self.encoder:
            x = level(x)
            features.append(x)
        for up, merge, level, skip in zip(self.up, self.merge, self.decoder, features[::-1][1:]):
            x = level(merge(up(x), skip))
        out = self.head(x)[..., :h, :w]
        return torch.sigmoid(out) if self.output == "sigmoid" else out
