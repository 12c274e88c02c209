"""The project's own 2-d convolution: explicit im2col (``unfold``) followed by one matrix product.

The colourization brief asks for a hand-written convolution layer. ``Conv2d`` here computes
exactly what ``torch.nn.functional.conv2d`` computes (stride, zero padding, dilation, bias;
tests/test_image2image.py checks outputs and gradients against it) but spells the operation
out: every receptive field becomes a column, and the filters are one ``(out, in*k*k)`` matrix.
``make_conv`` lets the image-to-image models switch between it and ``nn.Conv2d`` by config.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

IntPair = int | tuple[int, int]


def _pair(value: IntPair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """floor((size + 2p - d(k-1) - 1) / s) + 1, the output length of one spatial axis."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def unfold_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> torch.Tensor:
    """Convolution (cross-correlation, like torch) of ``x`` (N, C, H, W) with ``weight``
    (O, C, kh, kw) as ``weight_matrix @ unfold(x)``."""
    n, c, h, w = x.shape
    out_channels, in_channels, kh, kw = weight.shape
    if c != in_channels:
        raise ValueError(f"conv expects {in_channels} input channels, got {c} (input shape {tuple(x.shape)})")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    out_h, out_w = conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"input {h}x{w} is too small for a {kh}x{kw} kernel (dilation {dilation}, padding {padding})")
    # columns: (N, C*kh*kw, L) with L = out_h*out_w receptive fields, ordered like weight's C, kh, kw
    columns = F.unfold(x, kernel_size=(kh, kw), dilation=(dh, dw), padding=(ph, pw), stride=(sh, sw))
    out = weight.reshape(out_channels, -1) @ columns  # (O, CK) @ (N, CK, L) -> (N, O, L)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(n, out_channels, out_h, out_w)


class Conv2d(nn.Module):
    """A drop-in for ``nn.Conv2d`` (groups=1, zero padding) computed by ``unfold_conv2d``.

    ``padding=None`` means "same" for stride 1: ``dilation * (kernel - 1) // 2`` (odd kernels).
    Parameters are initialised like ``nn.Conv2d`` so both choices train alike.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair | None = 0,
        dilation: IntPair = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        if padding is None:
            padding = tuple(d * (k - 1) // 2 for d, k in zip(self.dilation, self.kernel_size))
        self.padding = _pair(padding)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unfold_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}"
        )


CONV_IMPLEMENTATIONS = ("own", "torch")


def make_conv(
    impl: str,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | None = None,
    dilation: int = 1,
) -> nn.Module:
    """A conv layer of the chosen implementation: ``own`` (unfold/matmul above) or ``torch``."""
    if padding is None:
        padding = dilation * (kernel_size - 1) // 2
    if impl == "own":
        return Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation)
    if impl == "torch":
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation)
    raise ValueError(f"model.conv must be one of {', '.join(CONV_IMPLEMENTATIONS)}, got {impl!r}")


def is_conv(module: nn.Module) -> bool:
    """Conv layers of either implementation (and transposed convs), for layer tables and hooks."""
    return isinstance(module, (Conv2d, nn.Conv2d, nn.ConvTranspose2d))
