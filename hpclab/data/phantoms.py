"""Synthetic brain-MRI phantoms: bright blobs ("tumours") inside a textured ellipse ("head").

Written in the folder layouts the ``brain_mri`` source reads, so tests and demos exercise the
same staging path as the real data sets: ``images/<id>.png`` + ``masks/<id>.png`` (grey,
masks 0/255), or ``<case>/<case>_<n>.tif`` + ``<case>_<n>_mask.tif`` (RGB slices, LGG style).
A fraction of the slices has no blob (an empty mask), as in real series.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpclab.utils import atomic_path

LAYOUTS = ("folders", "cases")


def smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Low-frequency texture in [0, 1]: coarse noise upsampled bilinearly."""
    import torch
    import torch.nn.functional as F

    coarse = torch.from_numpy(rng.random((1, 1, scale, scale)).astype(np.float32))
    fine = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)[0, 0].numpy()
    return (fine - fine.min()) / max(float(fine.max() - fine.min()), 1e-6)


def phantom(rng: np.random.Generator, size: int = 240, blobs: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One slice (float H x W in [0, 1]) and its mask (bool): ``blobs`` bright ellipses inside
    a textured head ellipse with a brighter rim, plus Gaussian noise."""
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    cy, cx = 0.5 + rng.uniform(-0.04, 0.04, 2)
    ay, ax = rng.uniform(0.36, 0.44), rng.uniform(0.30, 0.38)
    r_head = np.sqrt(((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2)
    head = r_head < 1
    texture = 0.6 * smooth_noise(rng, size, 12) + 0.4 * smooth_noise(rng, size, 40)
    image = np.where(head, 0.25 + 0.2 * texture, 0.02)
    image = np.where((r_head > 0.93) & head, 0.65, image)  # skull rim
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(blobs):
        radius = rng.uniform(0.04, 0.10)
        angle = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0, 0.55)
        by, bx = cy + dist * ay * np.sin(angle), cx + dist * ax * np.cos(angle)
        ry, rx = radius * rng.uniform(0.7, 1.3), radius * rng.uniform(0.7, 1.3)
        r_blob = np.sqrt(((yy - by) / ry) ** 2 + ((xx - bx) / rx) ** 2)
        blob = r_blob < 1
        edge = 1 / (1 + np.exp((r_blob - 1) / 0.08))  # soft rim, like a real lesion
        image = np.maximum(image, np.where(head, (0.7 + 0.15 * texture) * edge, 0))
        mask |= blob & head
    image = image + rng.normal(0, 0.03, image.shape)
    return np.clip(image, 0, 1), mask


def _save(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    fmt = "TIFF" if path.suffix == ".tif" else "PNG"
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format=fmt)


def write_phantoms(
    out_dir: Path | str,
    count: int,
    size: int = 240,
    seed: int = 0,
    layout: str = "folders",
    empty_fraction: float = 0.15,
    slices_per_case: int = 5,
) -> Path:
    """Write ``count`` phantom slices and masks under ``out_dir`` in ``layout``; return it."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if count < 1 or size < 16:
        raise ValueError(f"need count >= 1 and size >= 16, got count={count}, size={size}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    for i in range(count):
        blobs = 0 if rng.random() < empty_fraction else int(rng.integers(1, 4))
        image, mask = phantom(rng, size, blobs)
        grey = (image * 255).round().astype(np.uint8)
        binary = mask.astype(np.uint8) * 255
        if layout == "folders":
            _save(grey, out_dir / "images" / f"{i:05d}.png")
            _save(binary, out_dir / "masks" / f"{i:05d}.png")
        else:
            case = f"PHANTOM_{i // slices_per_case:04d}"
            stem = f"{case}_{i % slices_per_case + 1}"
            _save(np.repeat(grey[..., None], 3, axis=2), out_dir / case / f"{stem}.tif")
            _save(binary, out_dir / case / f"{stem}_mask.tif")
    return out_dir
