"""STL-10 from its binary release (``stl10_binary/``: train_X.bin, train_y.bin, test_X.bin,
test_y.bin, unlabeled_X.bin, class_names.txt).

Images are stored column-major (3 x 96 x 96 per image, each channel transposed) and labels
are 1-based uint8; both are parsed here with numpy rather than through torchvision's STL10
class, which insists on the official md5 sums. torchvision stays the downloader.

Two staged files come from the same originals, because the engine trains on the split called
"train":
- ``stl10``: train (5,000 labelled) and test (8,000), for the classifiers;
- ``stl10_unlabeled``: train = the 100,000 unlabelled images (autoencoder pretraining) and
  test = the 8,000 labelled test images, for held-out reconstruction error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpclab.data.hdf5 import DatasetArrays
from hpclab.data.sources import Source, SourceMissing, register_source, torchvision_root_downloader

SUBDIR = "stl10_binary"
SIZE = 96
FILES = {
    "train": ("train_X.bin", "train_y.bin"),
    "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None),
}


def binary_dir(directory: Path, needed: list[str]) -> Path:
    """``directory`` or its ``stl10_binary`` child, whichever holds the ``needed`` files."""
    for candidate in (Path(directory), Path(directory) / SUBDIR):
        if all((candidate / name).is_file() for name in needed):
            return candidate
    raise SourceMissing(f"{directory} has no STL-10 binaries ({SUBDIR}/{', '.join(needed)})")


def read_images(path: Path) -> np.ndarray:
    """N x 3 x 96 x 96 uint8 (row-major) from STL-10's column-major binary file."""
    size = path.stat().st_size
    per_image = 3 * SIZE * SIZE
    if size == 0 or size % per_image:
        raise ValueError(f"{path}: {size} bytes is not a whole number of 3x96x96 images")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, SIZE, SIZE)
    return np.ascontiguousarray(raw.transpose(0, 1, 3, 2))


def read_labels(path: Path, n: int) -> np.ndarray:
    """0-based int64 labels from the 1-based uint8 file."""
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
    if len(labels) != n or labels.min(initial=0) < 0:
        raise ValueError(f"{path}: expected {n} labels in 1..10, got {len(labels)} (min {labels.min(initial=0) + 1})")
    return labels


def read_split(root: Path, split: str) -> dict[str, np.ndarray]:
    images_name, labels_name = FILES[split]
    images = read_images(root / images_name)
    labels = read_labels(root / labels_name, len(images)) if labels_name else np.full(len(images), -1, np.int64)
    return {"images": images, "labels": labels}


def class_names(root: Path) -> list[str]:
    path = root / "class_names.txt"
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return names or ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def stl10_source(name: str, layout: dict[str, str], help: str) -> Source:
    """A source whose staged split ``s`` is the original split ``layout[s]``."""
    needed = sorted({f for split in layout.values() for f in FILES[split] if f})

    def read(directory: Path, cfg: object = None) -> DatasetArrays:
        root = binary_dir(directory, needed)
        splits = {staged: read_split(root, original) for staged, original in layout.items()}
        inputs = [root / f for f in needed] + (
            [root / "class_names.txt"] if (root / "class_names.txt").is_file() else []
        )
        return DatasetArrays(
            splits=splits, class_names=class_names(root), inputs=inputs, source=str(root), attrs={"layout": layout}
        )

    return register_source(
        Source(name, read, torchvision_root_downloader("STL10", SUBDIR, split="train+unlabeled"), help=help)
    )


stl10_source(
    "stl10",
    {"train": "train", "test": "test"},
    "STL-10 binary release (stl10_binary.tar.gz extracted: stl10_binary/train_X.bin, train_y.bin, "
    "test_X.bin, test_y.bin, class_names.txt)",
)
stl10_source(
    "stl10_unlabeled",
    {"train": "unlabeled", "test": "test"},
    "STL-10 binary release (stl10_binary/unlabeled_X.bin, test_X.bin, test_y.bin)",
)
