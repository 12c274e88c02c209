"""CIFAR-10 from its "python version" files (``cifar-10-batches-py/``: pickled batches).

The batches are read here with pickle + numpy rather than through torchvision's CIFAR10
class, which insists on the md5 sums of the official files (so small test files in the real
layout could not be read); torchvision stays the downloader.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from hpclab.data.hdf5 import DatasetArrays
from hpclab.data.sources import Source, SourceMissing, register_source, torchvision_root_downloader

SUBDIR = "cifar-10-batches-py"
SPLIT_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
META_FILE = "batches.meta"


def batches_dir(directory: Path) -> Path:
    """``directory`` itself or its ``cifar-10-batches-py`` child (torchvision's root layout)."""
    for candidate in (Path(directory), Path(directory) / SUBDIR):
        if all((candidate / name).is_file() for names in SPLIT_FILES.values() for name in names + [META_FILE]):
            return candidate
    raise SourceMissing(
        f"{directory} has no CIFAR-10 python batches ({SUBDIR}/data_batch_1..5, test_batch, {META_FILE})"
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a batch file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def load_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR batch (pickled by Python 2): latin1 keeps the numpy payload; keys become str."""
    with open(path, "rb") as fh:
        try:
            obj = _ArrayUnpickler(fh, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path}: not a readable CIFAR batch ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images N x 3 x 32 x 32 (uint8) and labels (int64) of one batch file."""
    batch = load_pickle(path)
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: CIFAR-10 batch without 'data'/'labels' (keys: {', '.join(map(str, batch))})")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: expected N x 3072 uint8 data and N labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10(directory: Path, cfg: object = None) -> DatasetArrays:
    root = batches_dir(directory)
    splits, inputs = {}, []
    for split, names in SPLIT_FILES.items():
        parts = [read_batch(root / name) for name in names]
        splits[split] = {
            "images": np.concatenate([p[0] for p in parts]),
            "labels": np.concatenate([p[1] for p in parts]),
        }
        inputs += [root / name for name in names]
    meta = load_pickle(root / META_FILE)
    class_names = [str(n) for n in meta.get("label_names", [])]
    if len(class_names) != 10:
        raise ValueError(f"{root / META_FILE}: expected 10 label_names, got {len(class_names)}")
    inputs.append(root / META_FILE)
    return DatasetArrays(splits=splits, class_names=class_names, inputs=inputs, source=str(root))


register_source(
    Source(
        "cifar10",
        read_cifar10,
        torchvision_root_downloader("CIFAR10", SUBDIR, train=True),
        help="CIFAR-10 python version (cifar-10-python.tar.gz extracted: cifar-10-batches-py/data_batch_1..5, "
        "test_batch, batches.meta)",
    )
)
