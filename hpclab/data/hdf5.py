"""The one on-disk format of the suite: an HDF5 file per dataset.

Layout: ``/<split>/images`` (uint8, N x C x H x W), ``/<split>/labels`` (int64, N), optional
``/<split>/masks`` (uint8, N x 1 x H x W) and ``/extra/<name>`` arrays; file attributes
``source``, ``class_names`` (JSON), ``sha256`` (JSON: input file -> digest), ``created``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from hpclab.utils import atomic_path, sha256_of

# Shared file systems (Lustre, GPFS, NFS) often reject HDF5's POSIX locks; we only ever read
# files that were renamed into place complete, so locking buys nothing.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")


@dataclass
class DatasetArrays:
    """A dataset's arrays and metadata, read from its original files, ready to be written as HDF5."""

    splits: dict[str, dict[str, np.ndarray]]  # split -> {"images": uint8 NCHW, "labels": int64, ...}
    class_names: list[str]
    inputs: list[Path]  # original files, hashed into the sha256 attribute
    source: str  # human-readable origin (directory or URL)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. a colour palette
    attrs: dict[str, Any] = field(default_factory=dict)


def write_hdf5(path: Path, staged: DatasetArrays) -> None:
    """Write ``staged`` to ``path`` atomically (temp file, then rename)."""
    for split, arrays in staged.splits.items():
        images = arrays["images"]
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"split {split}: images must be uint8 N x C x H x W, got {images.dtype} {images.shape}")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs[CONTENT_ATTR] = content_digest(staged)
            for split, arrays in staged.splits.items():
                group = f.create_group(split)
                for key, array in arrays.items():
                    # contiguous and uncompressed, so readers can memory-map the rows (see H5Split)
                    group.create_dataset(key, data=array)
            for key, array in staged.extra.items():
                f.create_dataset(f"extra/{key}", data=array)
            f.attrs["source"] = staged.source
            f.attrs["class_names"] = json.dumps(staged.class_names)
            f.attrs["sha256"] = json.dumps({str(p): sha256_of(p) for p in staged.inputs}, sort_keys=True)
            f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            for key, value in staged.attrs.items():
                f.attrs[key] = json.dumps(value)


CONTENT_ATTR = "content_sha256"  # digest of every array written, computed at staging
HASHED_BYTES_LIMIT = 2 << 30  # files up to this size are hashed whole at every check of their identity


class _ArrayDigest:
    """sha256 over arrays fed in name order: each one's name, dtype, shape, then its bytes."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def add(self, name: str, dtype: np.dtype, shape: tuple[int, ...], blocks: Iterator[np.ndarray]) -> None:
        self.digest.update(f"{name}:{np.dtype(dtype).str}:{tuple(shape)}".encode())
        for block in blocks:
            self.digest.update(memoryview(np.ascontiguousarray(block)).cast("B"))

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def content_digest(staged: DatasetArrays) -> str:
    """The digest (:class:`_ArrayDigest`) of the arrays about to be written."""
    arrays = {f"{split}/{key}": a for split, group in staged.splits.items() for key, a in group.items()}
    arrays.update({f"extra/{key}": a for key, a in staged.extra.items()})
    digest = _ArrayDigest()
    for name in sorted(arrays):
        digest.add(name, arrays[name].dtype, arrays[name].shape, iter([arrays[name]]))
    return digest.hexdigest()


def file_content_digest(path: Path | str, rows: int = 8192) -> str:
    """The same digest of the arrays a file holds now, read in blocks of ``rows``."""
    with h5py.File(path, "r", locking=False) as f:
        names: list[str] = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        digest = _ArrayDigest()
        for name in sorted(names):
            ds = f[name]
            blocks = (ds[i : i + rows] for i in range(0, len(ds), rows)) if ds.ndim else iter([ds[()]])
            digest.add(name, ds.dtype, ds.shape, blocks)
        return digest.hexdigest()


_IDENTITIES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> identity, per process


def data_identity(path: Path | str) -> str:
    """What a run records of its data, to refuse resuming on other data: a digest of the arrays
    the file holds (the same for a copy, or the same data staged again). Files over
    HASHED_BYTES_LIMIT are not read whole at every start: the digest the suite stored when it
    staged them stands for their content (re-stage rather than edit such a file in place).
    Computed once per version of the file in a process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _IDENTITIES:
        stored = None
        if stat.st_size > HASHED_BYTES_LIMIT:
            with h5py.File(path, "r", locking=False) as f:
                stored = f.attrs.get(CONTENT_ATTR)
        _IDENTITIES[key] = stored if isinstance(stored, str) else file_content_digest(path)
    return _IDENTITIES[key]


def describe(path: Path) -> dict[str, Any]:
    """Splits, shapes and attributes of a prepared file (without reading the arrays)."""
    with h5py.File(path, "r", locking=False) as f:
        splits = {
            name: {key: list(ds.shape) for key, ds in group.items()} for name, group in f.items() if name != "extra"
        }
        attrs = {k: f.attrs[k] for k in f.attrs}
        extra = list(f["extra"].keys()) if "extra" in f else []
    return {
        "splits": splits,
        "source": attrs.get("source"),
        "class_names": json.loads(attrs.get("class_names", "[]")),
        "sha256": json.loads(attrs.get("sha256", "{}")),
        "extra": extra,
        "created": attrs.get("created"),
    }


def file_problems(path: Path | str) -> list[str]:
    """What makes a prepared file unusable, one line each ([] when it is sound).

    Checked from the metadata and the (small) label arrays, without reading images: the file
    opens (a copy cut short does not), every split has uint8 ``images`` of rank 4 (N x C x H x W),
    at least one row, and every other array of the split (labels, masks) has as many rows;
    labels are integer class indices within ``class_names`` (-1: unlabelled); masks are uint8
    N x 1 x H x W."""
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        return [f"cannot be opened as HDF5 ({str(exc).splitlines()[0] if str(exc) else 'OSError'}); truncated copy?"]
    problems: list[str] = []
    with f:
        try:
            class_names = json.loads(f.attrs.get("class_names", "[]"))
        except (TypeError, ValueError):
            class_names, problems = [], ["attribute class_names is not JSON"]
        if not isinstance(class_names, list) or not all(isinstance(n, str) for n in class_names):
            problems.append(f"attribute class_names is a JSON {type(class_names).__name__}, not a list of names")
            class_names = []
        splits = [name for name in f if name != "extra"]
        if not splits:
            problems.append("holds no split")
        elif "train" not in splits:
            problems.append(f"has no train split (it has {', '.join(splits)})")
        shapes = {
            name: f[name]["images"].shape[1:]
            for name in splits
            if isinstance(f[name], h5py.Group) and "images" in f[name] and f[name]["images"].ndim == 4
        }
        first = shapes.get("train") or next(iter(shapes.values()), None)
        for split, shape in shapes.items():
            if shape != first:
                problems.append(
                    f"/{split}/images are {'x'.join(map(str, shape))} (C x H x W), the train images "
                    f"{'x'.join(map(str, first))}: every split must hold images of one size"
                )
        for split in splits:
            group = f[split]
            if not isinstance(group, h5py.Group) or "images" not in group:
                problems.append(f"/{split} has no images array")
                continue
            images = group["images"]
            if images.dtype != np.uint8 or images.ndim != 4:
                problems.append(f"/{split}/images is {images.dtype} of shape {images.shape}, not uint8 N x C x H x W")
            if len(images) == 0:
                problems.append(f"/{split}/images is empty")
            for key, array in group.items():
                if key != "images" and array.shape[:1] != images.shape[:1]:
                    problems.append(
                        f"/{split}/{key} has {array.shape[0] if array.ndim else 0} rows, "
                        f"/{split}/images {images.shape[0]}"
                    )
            if "labels" in group:
                labels = group["labels"]
                if labels.ndim != 1 or labels.dtype.kind not in "iu":
                    problems.append(
                        f"/{split}/labels is {labels.dtype} of shape {labels.shape}, not integer class indices"
                    )
                elif len(labels):
                    values = labels[()]  # -1: an unlabelled image (STL-10's unlabelled split)
                    if not class_names and values.max() >= 0:
                        problems.append(
                            f"/{split}/labels hold class indices but the file has no class_names "
                            f"attribute to say how many classes there are"
                        )
                    elif values.min() < -1 or values.max() >= max(len(class_names), 1):
                        problems.append(
                            f"/{split}/labels run from {values.min()} to {values.max()}, "
                            f"outside the {len(class_names)} classes"
                        )
            if "masks" in group:
                masks = group["masks"]
                if (
                    masks.dtype != np.uint8
                    or masks.ndim != 4
                    or masks.shape[1] != 1
                    or masks.shape[2:] != images.shape[2:]
                ):
                    problems.append(
                        f"/{split}/masks is {masks.dtype} of shape {masks.shape}, not uint8 N x 1 x H x W "
                        f"matching the images"
                    )
    return problems


class H5Split(torch.utils.data.Dataset):
    """One split of a prepared file, optionally restricted to ``indices``.

    Arrays stored contiguously and uncompressed (how ``write_hdf5`` writes them) are read
    through a memory map of their bytes in the file: a random batch is then one tensor
    gather from the OS page cache, shared by every worker and process on the node,
    instead of one HDF5 read per row (~100x faster at 28 px). Chunked or compressed arrays
    (files written by other tools) are read through h5py with ``read_rows``.

    Handles are opened lazily in whichever process first reads (h5py handles must not cross
    a fork), so it works under DataLoader workers. ``load()`` reads the split into memory.
    """

    def __init__(
        self,
        path: Path | str,
        split: str,
        indices: Sequence[int] | None = None,
        keys: Sequence[str] | None = None,
        cache_bytes: int = 256 * 2**20,
    ) -> None:
        self.path = str(path)
        self.cache_bytes = cache_bytes
        self.split = split
        with h5py.File(self.path, "r", locking=False) as f:
            if split not in f:
                raise KeyError(f"{path} has no split '{split}' (has: {', '.join(k for k in f if k != 'extra')})")
            available = list(f[split].keys())
            self.total = len(f[split]["images"])
            self.item_shape = tuple(f[split]["images"].shape[1:])
        self.keys = [k for k in (keys or available) if k in available]
        self.indices = np.arange(self.total) if indices is None else np.asarray(indices, dtype=np.int64)
        self._file: h5py.File | None = None
        self._arrays: dict[str, torch.Tensor | h5py.Dataset] = {}
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def arrays(self) -> dict[str, torch.Tensor | h5py.Dataset]:
        """Per key, a tensor over a memory map of the array when its layout allows one, else
        the h5py dataset."""
        if self._file is None or self._pid != os.getpid():
            # a large chunk cache for the h5py path: random batches touch many chunks, and
            # re-reading a chunk for every row it holds is what makes naive HDF5 readers slow
            self._file = h5py.File(self.path, "r", locking=False, rdcc_nbytes=self.cache_bytes, rdcc_nslots=100_003)
            self._pid = os.getpid()
            group = self._file[self.split]
            mapped = {k: memory_map(self.path, group[k]) for k in self.keys}
            self._arrays = {k: group[k] if m is None else torch.from_numpy(m) for k, m in mapped.items()}
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_arrays"] = None, {}
        return state

    def __getitem__(self, index: int | Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        arrays = self.arrays()
        if np.isscalar(index):
            row = int(self.indices[int(index)])
            return {
                k: a[row].clone() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a[row]))
                for k, a in arrays.items()
            }
        rows = self.indices[np.asarray(index, dtype=np.int64)]
        return {
            k: a.index_select(0, torch.from_numpy(rows))
            if isinstance(a, torch.Tensor)
            else torch.from_numpy(read_rows(a, rows))
            for k, a in arrays.items()
        }

    def load(self) -> dict[str, torch.Tensor]:
        """The whole (indexed) split as tensors in memory."""
        return self[np.arange(len(self))]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.item_shape)) * len(self)


def memory_map(path: str, dataset: h5py.Dataset) -> np.memmap | None:
    """A memory map of ``dataset``'s bytes in ``path``, or None when its layout is not one flat
    block (chunked, compressed, empty, or a non-native type). Copy-on-write, so torch can wrap
    it without a read-only warning; nothing ever writes to it, and the file is never changed."""
    offset = dataset.id.get_offset()
    if offset is None or dataset.chunks is not None or not dataset.dtype.isnative or dataset.size == 0:
        return None
    return np.memmap(path, dtype=dataset.dtype, mode="c", offset=offset, shape=dataset.shape)


def read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Read ``rows`` (any order, repeats allowed) and return them in the asked order.

    Dense rows come as one contiguous slice; spread rows as one slice per run of consecutive
    rows. (h5py's list indexing builds a point selection that is ~10x slower than this.)
    """
    if len(rows) == 0:
        return np.empty((0,) + dataset.shape[1:], dtype=dataset.dtype)
    unique, inverse = np.unique(rows, return_inverse=True)
    lo, hi = int(unique[0]), int(unique[-1]) + 1
    if hi - lo <= 2 * len(unique):
        return dataset[lo:hi][rows - lo]
    breaks = np.flatnonzero(np.diff(unique) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(unique)]))
    out = np.empty((len(unique),) + dataset.shape[1:], dtype=dataset.dtype)
    for a, b in zip(starts.tolist(), ends.tolist()):
        out[a:b] = dataset[int(unique[a]) : int(unique[b - 1]) + 1]
    return out[inverse]
