"""Building blocks shared by the model families: conv-BN-ReLU, the ReLU MLP, and the pooling
that turns feature maps into a classifier head's input."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias: BatchNorm has one) -> BatchNorm -> ReLU, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def mlp(in_features: int, hidden: Sequence[int], out_features: int, dropout: float = 0.0) -> nn.Sequential:
    """[Dropout ->] (Linear -> ReLU [-> Dropout]) per hidden width -> Linear to ``out_features``."""
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if dropout > 0 else [])
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def _grid(pool: str) -> int | None:
    """Side of the average-pooled grid of ``pool``: avg -> 1, avgN -> N, flatten -> None."""
    if pool == "flatten":
        return None
    if pool == "avg":
        return 1
    if pool.startswith("avg") and pool[3:].isdigit() and int(pool[3:]) > 0:
        return int(pool[3:])
    raise ValueError(
        f"model.pool must be 'avg', 'avgN' (an N x N average-pooled grid, e.g. avg3) or 'flatten', got {pool!r}"
    )


def pool_flatten(pool: str) -> nn.Module:
    """``avg``: global average pool; ``avgN``: average pool to an N x N grid (keeps the coarse
    layout at N*N times fewer features than ``flatten``); ``flatten``: keep every position
    (needs a fixed input size)."""
    side = _grid(pool)
    if side is None:
        return nn.Flatten()
    return nn.Sequential(nn.AdaptiveAvgPool2d(side), nn.Flatten())


def pooled_features(pool: str, channels: int, side: int) -> int:
    """Width of ``pool_flatten(pool)``'s output for ``channels`` maps of ``side`` x ``side``."""
    grid = _grid(pool)
    return channels * (side * side if grid is None else grid * grid)
