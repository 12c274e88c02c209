"""The PatchGAN discriminator of pix2pix (Isola et al. 2017, arXiv:1611.07004), conditioned on the
generator's input: it sees the input and an output image concatenated on channels and gives one
logit per overlapping patch, "real pair" or "generated pair".

The layout is pix2pix's ``NLayerDiscriminator``: a 4x4 stride-2 conv (no normalisation), then
``layers - 1`` more 4x4 stride-2 convs doubling the width (at most 8x), one 4x4 stride-1 conv,
and a 4x4 stride-1 conv to one logit; LeakyReLU(0.2) after every conv but the last. Its
``layers=3`` is the paper's 70x70 PatchGAN for 256 px images. On 28-32 px images ``layers=1``
(three convs: stride 2, 1, 1) sees 16x16 patches and gives a 12x12 (28 px) or 14x14 (32 px)
grid; ``layers=2`` sees 34x34, more than a 28 px image.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from hpclab.models import MODELS
from hpclab.models.dcgan import init_dcgan_weights

NORMS = ("batch", "spectral", "none")


def receptive_field(convs: list[nn.Conv2d]) -> int:
    """Side in pixels of the input patch that one output of a chain of convs sees."""
    field = 1
    for conv in reversed(convs):
        field = (field - 1) * conv.stride[0] + conv.kernel_size[0]
    return field


@MODELS.register("patchgan")
class PatchDiscriminator(nn.Module):
    """``in_channels`` (condition + image) -> N x 1 x G x G patch logits. ``norm``: ``batch``
    (the paper's BatchNorm after every inner conv), ``spectral`` (spectral normalisation of
    every conv weight instead) or ``none``. Weights N(0, 0.02) as in pix2pix and DCGAN."""

    def __init__(
        self,
        in_channels: int = 2,
        channels: int = 64,
        layers: int = 1,
        norm: str = "batch",
        image_size: int | None = None,
        leaky_slope: float = 0.2,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"discriminator norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if layers < 1:
            raise ValueError(f"discriminator layers must be >= 1, got {layers}")
        self.layers = layers
        wrap = spectral_norm if norm == "spectral" else (lambda m: m)
        convs = [nn.Conv2d(in_channels, channels, 4, 2, 1)]
        widths = [channels * min(2**n, 8) for n in range(layers + 1)]
        convs += [
            nn.Conv2d(widths[n - 1], widths[n], 4, 2 if n < layers else 1, 1, bias=norm != "batch")
            for n in range(1, layers + 1)
        ]
        convs.append(nn.Conv2d(widths[-1], 1, 4, 1, 1))
        self.receptive_field = receptive_field(convs)
        body: list[nn.Module] = [wrap(convs[0]), nn.LeakyReLU(leaky_slope, inplace=True)]
        for conv in convs[1:-1]:
            body += [wrap(conv)] + ([nn.BatchNorm2d(conv.out_channels)] if norm == "batch" else [])
            body.append(nn.LeakyReLU(leaky_slope, inplace=True))
        self.features = nn.Sequential(*body)
        self.head = wrap(convs[-1])
        if image_size is not None and self.grid(image_size) < 1:
            raise ValueError(
                f"discriminator layers={layers} leave no patch of a {image_size} px image; use fewer layers"
            )
        init_dcgan_weights(self, init_std)

    def grid(self, image_size: int) -> int:
        """Side of the logit grid for ``image_size``: each stride-2 conv halves it, each
        4x4 stride-1 conv (padding 1) takes one off."""
        return (image_size >> self.layers) - 2

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        """Condition and image, concatenated on channels -> patch logits (float32)."""
        return self.head(self.features(pair)).float()
