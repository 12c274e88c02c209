"""Batch transforms that run on the device, on whole batches (never per item in Python)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def add_gaussian_noise(
    x: torch.Tensor, std: float = 0.2, mean: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
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


def random_resized_crop(
    x: torch.Tensor,
    scale: Sequence[float] = (0.3, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per image: a random crop of area fraction uniform in ``scale`` and aspect ratio
    log-uniform in ``ratio`` (torchvision's RandomResizedCrop draws), mirrored left-right with
    probability 0.5 when ``flip``, resized back to the image size (bilinear). One affine
    resampling of the whole batch (``affine_grid``/``grid_sample``); a side longer than the
    image is cut to the image (where torchvision would draw again)."""
    n = len(x)
    u = torch.rand(n, 5, generator=generator, device=x.device)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    width, height = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
    mirror = torch.where((u[:, 4] < 0.5) & flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=x.device)
    # output coordinates in [-1, 1] map to a window of half-size (width, height) inside the image
    theta[:, 0, 0], theta[:, 0, 2] = width * mirror, (2 * u[:, 2] - 1) * (1 - width)
    theta[:, 1, 1], theta[:, 1, 2] = height, (2 * u[:, 3] - 1) * (1 - height)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def jitter_brightness_contrast(
    x: torch.Tensor, strength: float = 0.4, p: float = 0.8, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per image, with probability ``p``: brightness then contrast scaled by factors uniform in
    [1 - strength, 1 + strength], as torchvision's ColorJitter applies them (brightness: x * b;
    contrast: blend with the image's mean, (x - m) * c + m), each clamped to [0, 1]."""
    u = torch.rand(len(x), 3, generator=generator, device=x.device)
    apply = (u[:, 2] < p)[:, None, None, None]
    brightness = torch.where(apply, 1 + strength * (2 * u[:, 0] - 1)[:, None, None, None], 1.0).to(x.dtype)
    contrast = torch.where(apply, 1 + strength * (2 * u[:, 1] - 1)[:, None, None, None], 1.0).to(x.dtype)
    x = (x * brightness).clamp(0.0, 1.0)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean).clamp(0.0, 1.0)
