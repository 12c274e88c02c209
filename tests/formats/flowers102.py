"""Oxford Flowers-102 as torchvision stores it: ``flowers-102/jpg/image_XXXXX.jpg`` plus
``imagelabels.mat`` ({"labels": 1 x N, 1-based categories}) and ``setid.mat`` ({"trnid",
"valid", "tstid": 1 x K, 1-based image ids}), written with scipy.io.savemat like the originals."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def flower_image(label0: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A blurry 'flower': petals around a centre, coloured by the 0-based category (so a
    staged image can be traced back to its label), on a green, slightly noisy background."""
    hue = (label0 * 0.61803) % 1.0
    colour = 255 * np.array([0.5 + 0.5 * np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = height / 2 + rng.normal(0, height / 20), width / 2 + rng.normal(0, width / 20)
    r = np.hypot(yy - cy, xx - cx)
    angle = np.arctan2(yy - cy, xx - cx)
    petals = 4 + label0 % 5
    radius = min(height, width) * (0.3 + 0.08 * np.cos(petals * angle))
    inside = (r < radius).astype(np.float32)[..., None]
    background = np.array([40, 110, 40], np.float32) + rng.normal(0, 8, (height, width, 3))
    image = inside * colour + (1 - inside) * background
    return np.clip(image, 0, 255).astype(np.uint8)


def write_flowers102(
    root: Path, labels1: list[int] | np.ndarray, seed: int = 0, min_side: int = 40, max_side: int = 64
) -> dict[str, np.ndarray]:
    """Write images of 1-based ``labels1[i]`` as image_{i+1:05d}.jpg (non-square, random sizes),
    split every category's images 1:1:rest into trnid/valid/tstid. Returns labels and splits."""
    from PIL import Image
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    labels1 = np.asarray(labels1, dtype=np.int64)
    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True, exist_ok=True)
    for i, label in enumerate(labels1, start=1):
        h, w = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        Image.fromarray(flower_image(int(label) - 1, rng, h, w)).save(base / "jpg" / f"image_{i:05d}.jpg", quality=92)
    splits: dict[str, list[int]] = {"trnid": [], "valid": [], "tstid": []}
    for label in np.unique(labels1):
        ids = list(np.flatnonzero(labels1 == label) + 1)
        splits["trnid"] += ids[:1]
        splits["valid"] += ids[1:2]
        splits["tstid"] += ids[2:]
    # The originals hold 1 x N double arrays; savemat writes 1-D arrays as 1 x N rows too.
    savemat(base / "imagelabels.mat", {"labels": labels1.astype(np.float64)[None]})
    savemat(base / "setid.mat", {k: np.sort(np.asarray(v, np.float64))[None] for k, v in splits.items()})
    return {"labels1": labels1, **{k: np.sort(np.asarray(v)) for k, v in splits.items()}}
