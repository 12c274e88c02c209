"""The noise-prediction U-Net of a DDPM (Ho, Jain & Abbeel 2020, arXiv:2006.11239).

Taken from Hugging Face ``diffusers``: ``UNet2DModel`` itself (residual blocks with GroupNorm
and SiLU, the sinusoidal timestep embedding added in every block, self-attention blocks,
strided-conv down- and upsampling). Written here: the choice of its blocks from a few config
keys (one level per entry of ``channels``; the maps halve between levels, not after the last;
``attention`` marks the levels with self-attention), and a ``forward(x, t)`` that returns the
predicted noise as a plain tensor, so the engine and the task see an ordinary module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hpclab.models import MODELS


@MODELS.register("ddpm_unet")
class DDPMUNet(nn.Module):
    """eps_theta(x_t, t): images in [-1, 1] and integer timesteps in, noise of the same shape out."""

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128),
        attention: Sequence[bool] = (False, False, True),
        layers_per_block: int = 2,
        attention_head_dim: int = 32,
        norm_groups: int = 8,
        dropout: float = 0.0,
        in_channels: int = 1,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        channels, attention = [int(c) for c in channels], [bool(a) for a in attention]
        if len(attention) != len(channels):
            raise ValueError(
                f"model.attention has {len(attention)} entries, model.channels {len(channels)}: one per level"
            )
        if any(c % norm_groups for c in channels):
            raise ValueError(f"model.norm_groups={norm_groups} must divide every entry of model.channels {channels}")
        if image_size % 2 ** (len(channels) - 1):
            raise ValueError(
                f"image_size {image_size} cannot be halved {len(channels) - 1} times "
                f"({len(channels)} levels in model.channels)"
            )
        self.image_size, self.in_channels = image_size, in_channels
        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=in_channels,
            out_channels=in_channels,
            block_out_channels=tuple(channels),
            layers_per_block=layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_groups,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample
