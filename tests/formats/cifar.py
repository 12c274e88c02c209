"""CIFAR-10 "python version" files: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``.

Each batch is a pickled dict ``{"batch_label", "labels": [int], "data": uint8 N x 3072 (R, G, B
planes of 32x32, row-major), "filenames"}``; ``batches.meta`` holds ``label_names``. The real files
were pickled by Python 2 (str keys, read with ``encoding="latin1"``); protocol 2 with str keys
reads back the same way.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SUBDIR = "cifar-10-batches-py"


def class_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Learnable (not noise) RGB images: a class-coloured blob at a class-dependent place on a
    textured background; uint8 N x 3 x size x size."""
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size]
    cy = size * (0.3 + 0.4 * (labels % 3) / 2)
    cx = size * (0.3 + 0.4 * (labels // 3 % 3) / 2)
    d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    blob = np.exp(-d2 / (2 * (size * 0.18) ** 2))  # N x H x W
    hue = labels[:, None] * (2 * np.pi / 10) + np.array([0.0, 2.1, 4.2])[None]  # N x 3
    colour = 0.5 + 0.5 * np.cos(hue)
    background = 0.3 + 0.1 * np.sin(xx / 3.0)[None, None] + rng.normal(0, 0.06, (n, 3, size, size))
    images = background * (1 - blob[:, None]) + colour[:, :, None, None] * blob[:, None]
    return np.clip(images * 255, 0, 255).astype(np.uint8)


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def write_cifar10(
    directory: Path, n_train: int = 500, n_test: int = 100, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``directory/cifar-10-batches-py/`` (torchvision's root layout) with ``n_train`` images
    spread over data_batch_1..5 and ``n_test`` in test_batch; return
    ``{"train": (images N x 3 x 32 x 32 uint8, labels int64), "test": (...)}`` in file order."""
    rng = np.random.default_rng(seed)
    root = Path(directory) / SUBDIR
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n).astype(np.int64)
        images = class_images(labels, 32, rng)
        out[split] = (images, labels)
        chunks = np.array_split(np.arange(n), 5) if split == "train" else [np.arange(n)]
        for i, idx in enumerate(chunks):
            name = f"data_batch_{i + 1}" if split == "train" else "test_batch"
            label = f"training batch {i + 1} of 5" if split == "train" else "testing batch 1 of 1"
            _dump(
                root / name,
                {
                    "batch_label": label,
                    "labels": [int(v) for v in labels[idx]],
                    "data": images[idx].reshape(len(idx), 3 * 32 * 32),
                    "filenames": [f"img_{split}_{j:05d}.png" for j in idx],
                },
            )
    _dump(
        root / "batches.meta",
        {"num_cases_per_batch": max(1, -(-n_train // 5)), "label_names": CIFAR10_CLASSES, "num_vis": 3072},
    )
    return out
