"""Batch transforms that run on the device, on whole batches (never per item in Python)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def add_gaussian_noise(x: torch.Tensor, std: float = 0.2, mean: float = 0.0,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x + N(mean, std^2), clamped to [0, 1] (the course brief's noise helper, defaults std 0.2)."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + mean + std * noise).clamp_(0.0, 1.0)


def augment(x: torch.Tensor, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop after reflect padding, and random horizontal flip, per image of the batch."""
    n, _, h, w = x.shape
    if flip:
        mask = torch.rand(n, device=x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    if padding > 0:
        padded = F.pad(x, (padding,) * 4, mode="reflect")
        dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    return x


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """RGB -> one luminance channel (ITU-R BT.601 weights)."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    return (x * weights[None, :, None, None]).sum(1, keepdim=True)


def downscale(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Area-average downscaling by an integer factor."""
    return F.avg_pool2d(x, factor)


def centre_mask(x: torch.Tensor, fraction: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero a central square covering ``fraction`` of each side; return (masked, mask)."""
    _, _, h, w = x.shape
    mh, mw = max(1, int(h * fraction)), max(1, int(w * fraction))
    top, left = (h - mh) // 2, (w - mw) // 2
    mask = torch.zeros(1, 1, h, w, device=x.device, dtype=x.dtype)
    mask[..., top : top + mh, left : left + mw] = 1
    return x * (1 - mask), mask
