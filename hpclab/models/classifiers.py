"""CNN classifiers built from stages of blocks: plain (VGG-like), multi-path (inception-like,
parallel kernels concatenated) or residual (skip connections).

One class covers the course's CIFAR-10 CNN, its non-sequential variants and the STL-10 CNN, so
an architecture is a row of config values (``configs/model/cifar_*.yaml``, ``stl_cnn.yaml``)
rather than another copy of the forward pass. Each stage is ``block -> MaxPool(2) ->
Dropout2d``; the head pools (global average, or flatten) and ends in an MLP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hpclab.models import MODELS
from hpclab.models.layers import conv_bn, mlp, pool_flatten, pooled_features


class PlainBlock(nn.Sequential):
    """``convs`` conv-BN-ReLU layers in sequence."""

    def __init__(self, c_in: int, c_out: int, convs: int = 2, kernel: int = 3) -> None:
        super().__init__(*[conv_bn(c_in if i == 0 else c_out, c_out, kernel) for i in range(convs)])


class ResidualBlock(nn.Module):
    """conv-BN-ReLU to ``c_out``, then ``convs - 1`` conv-BN layers added back onto it (an
    identity skip around the block's body, as in ResNet-9 style CIFAR nets)."""

    def __init__(self, c_in: int, c_out: int, convs: int = 3, kernel: int = 3) -> None:
        super().__init__()
        if convs < 2:
            raise ValueError("a residual block needs convs >= 2 (one entry conv plus a skipped body)")
        self.entry = conv_bn(c_in, c_out, kernel)
        body: list[nn.Module] = []
        for i in range(convs - 1):
            body += [nn.Conv2d(c_out, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)]
            if i < convs - 2:
                body.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*body)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        return self.act(x + self.body(x))


class MultiPathLayer(nn.Module):
    """Parallel conv-BN-ReLU branches with different kernel sizes, concatenated on channels
    (``c_out`` is split evenly; the first branch takes the remainder)."""

    def __init__(self, c_in: int, c_out: int, kernels: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        share = c_out // len(kernels)
        widths = [c_out - share * (len(kernels) - 1)] + [share] * (len(kernels) - 1)
        self.branches = nn.ModuleList(conv_bn(c_in, w, k) for w, k in zip(widths, kernels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class MultiPathBlock(nn.Sequential):
    """``convs`` multi-path layers in sequence."""

    def __init__(self, c_in: int, c_out: int, convs: int = 2, kernels: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__(*[MultiPathLayer(c_in if i == 0 else c_out, c_out, kernels) for i in range(convs)])


@MODELS.register("cnn_classifier")
class CNNClassifier(nn.Module):
    """Stages of ``block`` (plain | multipath | residual), each followed by 2x2 max pooling and
    spatial dropout, then pooling and an MLP head."""

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64, 128),
        block: str = "plain",
        convs: int = 2,
        kernel_size: int = 3,
        kernels: Sequence[int] = (1, 3, 5),
        conv_dropout: float = 0.1,
        pool: str = "avg",
        hidden: Sequence[int] = (128,),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if block not in ("plain", "multipath", "residual"):
            raise ValueError(f"model.block must be plain, multipath or residual, got {block!r}")
        stages: list[nn.Module] = []
        c = in_channels
        for width in channels:
            if block == "plain":
                body: nn.Module = PlainBlock(c, width, convs, kernel_size)
            elif block == "residual":
                body = ResidualBlock(c, width, convs, kernel_size)
            else:
                body = MultiPathBlock(c, width, convs, kernels)
            stages.append(nn.Sequential(body, nn.MaxPool2d(2), nn.Dropout2d(conv_dropout)))
            c = width
        self.features = nn.Sequential(*stages)
        side = image_size // 2 ** len(channels)
        if side < 1:
            raise ValueError(
                f"{len(channels)} pooling stages shrink {image_size}px images below 1px; use fewer channels"
            )
        flat = pooled_features(pool, c, side)
        self.pool = pool_flatten(pool)
        self.head = mlp(flat, hidden, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))
