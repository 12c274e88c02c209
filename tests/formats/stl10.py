"""STL-10's binary release: ``stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt``.

X files hold uint8 images of 3 x 96 x 96 stored column-major (each channel transposed);
y files hold 1-based uint8 labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from formats.cifar import class_images

STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
SUBDIR = "stl10_binary"


def write_stl10(
    directory: Path, n_train: int = 40, n_test: int = 20, n_unlabeled: int = 60, seed: int = 0, size: int = 96
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``directory/stl10_binary/`` and return ``{split: (images N x 3 x H x W, labels)}``
    (labels 0-based; -1 for the unlabelled split)."""
    rng = np.random.default_rng(seed)
    root = Path(directory) / SUBDIR
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        labels = rng.integers(0, 10, n).astype(np.int64)
        images = class_images(labels, size, rng)
        (root / f"{split}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())
        if split != "unlabeled":
            (root / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        else:
            labels = np.full(n, -1, np.int64)
        out[split] = (images, labels)
    (root / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    return out
