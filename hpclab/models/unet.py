"""U-Nets: the colourization U-Net (CMP 717 Practical 3, docs/briefs.md) and the padded segmentation U-Net.

``colour_unet`` is ``colour_cnn`` with skip connections: each encoder output is concatenated
(``torch.cat`` on channels) to the input of its mirrored up block, and the network input (the
grey image, or the upsampled low-resolution image for super-resolution) is concatenated to the
input of the final conv.

``seg_ae`` is the brain-tumour brief's network: a symmetric encoder-decoder (autoencoder)
whose 3x3 convs are zero-padded, so a 240x240 slice gives a 240x240 mask (1 logit channel), and
whose decoder sees only the bottleneck (no skips). ``seg_unet`` is the same network with U-Net
skips: mirrored levels joined by concatenation (fused with a 1x1 conv) unless ``skips: none``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hpclab.models import MODELS
from hpclab.models.image2image import ColourCNN, EncoderDecoder


@MODELS.register("colour_unet")
class ColourUNet(ColourCNN):
    """downconv1 -> downconv2 -> rfconv; upconv1(cat(rf, down2)); upconv2(cat(up1, down1));
    finalconv(cat(up2, x))."""

    skip = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        out1 = self.downconv1(x)
        out2 = self.downconv2(out1)
        out3 = self.rfconv(out2)
        out4 = self.upconv1(torch.cat((out3, out2), dim=1))
        out5 = self.upconv2(torch.cat((out4, out1), dim=1))
        return self.finalconv(torch.cat((out5, x), dim=1))


@MODELS.register("seg_unet")
class SegUNet(EncoderDecoder):
    """Max-pool encoder, transposed-conv decoder, batch norm, padded convs: output size = input
    size (240 -> 120 -> 60 -> 30 and back with the default four levels); logits out."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        skips: str = "concat",
        batch_norm: bool = True,
        conv: str = "torch",
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            channels,
            skips=skips,
            down="pool",
            batch_norm=batch_norm,
            output="logits",
            conv=conv,
        )


@MODELS.register("seg_ae")
class SegAutoEncoder(SegUNet):
    """The symmetric padded encoder-decoder: ``seg_unet``'s layers without skips (the
    decoder reconstructs the mask from the 30x30 bottleneck alone)."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64, 128),
        batch_norm: bool = True,
        conv: str = "torch",
    ) -> None:
        super().__init__(in_channels, out_channels, channels, skips="none", batch_norm=batch_norm, conv=conv)
