"""MNIST-style IDX files (big-endian magic, dims, then uint8 data), optionally gzipped."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: 0x00 0x00 0x08 <ndim>, then each dim as big-endian int32."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dataset(
    directory: Path,
    n_train: int = 256,
    n_test: int = 64,
    size: int = 28,
    classes: int = 10,
    gz: bool = True,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Class-dependent blob images (learnable, not noise) in Fashion-MNIST's file layout."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    yy, xx = np.mgrid[0:size, 0:size]
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, classes, n).astype(np.uint8)
        cy = size * (0.25 + 0.5 * (labels % 4) / 3)
        cx = size * (0.25 + 0.5 * (labels // 4) / 2)
        r = size * (0.12 + 0.02 * (labels % 3))
        d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
        images = np.clip(255 * np.exp(-d2 / (2 * r[:, None, None] ** 2)) + rng.normal(0, 10, (n, size, size)), 0, 255)
        images = images.astype(np.uint8)
        for name, array in zip(NAMES[split], (images, labels)):
            data = idx_bytes(array)
            if gz:
                with gzip.open(directory / f"{name}.gz", "wb") as fh:
                    fh.write(data)
            else:
                (directory / name).write_bytes(data)
        out[split] = (images, labels)
    return out
