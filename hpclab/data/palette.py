"""The colour palette of colourization-as-classification: k-means centres of training pixels.

The palette belongs to the data, not to a run: it is computed once from the prepared HDF5 file
(the ``train`` split, restricted to the run's classes) with scikit-learn's ``KMeans`` and saved
atomically next to it as ``<file>.h5.palette<k>[-<classes>].npy``; every later run (and every
rank of a data-parallel run) reuses that file. Re-preparing the HDF5 file makes the sidecar
older than the data, so it is recomputed.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from hpclab.data.hdf5 import read_rows
from hpclab.utils import atomic_path

log = logging.getLogger("hpclab")

MAX_PIXELS = 50_000  # k-means sample: plenty for 24 centres in 3-d, about a second on one core
PALETTE_SEED = 0


def palette_path(h5_path: Path, k: int, classes: Sequence[str] | None = None) -> Path:
    """The sidecar of ``h5_path`` for ``k`` colours over ``classes`` (None: all classes)."""
    suffix = ""
    if classes:
        suffix = "-" + "_".join(re.sub(r"[^A-Za-z0-9]+", "", str(c)) or "x" for c in classes)
    return h5_path.with_name(f"{h5_path.name}.palette{k}{suffix}.npy")


def training_pixels(
    h5_path: Path, classes: Sequence[str] | None = None, max_pixels: int = MAX_PIXELS, seed: int = PALETTE_SEED
) -> np.ndarray:
    """A seeded random sample of RGB pixels (float32 in [0, 1], M x 3) of the train split."""
    with h5py.File(h5_path, "r", locking=False) as f:
        if "train" not in f:
            raise ValueError(f"{h5_path} has no train split to compute a palette from")
        group = f["train"]
        rows = np.arange(len(group["images"]))
        if classes:
            names = json.loads(f.attrs.get("class_names", "[]"))
            missing = [c for c in classes if c not in names]
            if missing:
                raise ValueError(f"{h5_path}: unknown classes {missing} (classes: {', '.join(names)})")
            rows = rows[np.isin(group["labels"][()], [names.index(c) for c in classes])]
        if len(rows) == 0:
            raise ValueError(f"{h5_path}: no training images of classes {list(classes or [])}")
        images = read_rows(group["images"], rows)
    if images.shape[1] != 3:
        raise ValueError(f"{h5_path}: a colour palette needs RGB images, got {images.shape[1]} channel(s)")
    pixels = images.transpose(0, 2, 3, 1).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    if len(pixels) > max_pixels:
        pixels = pixels[rng.choice(len(pixels), max_pixels, replace=False)]
    return pixels.astype(np.float32) / 255.0


def compute_palette(pixels: np.ndarray, k: int, seed: int = PALETTE_SEED) -> np.ndarray:
    """k-means centres (k x 3, float32 in [0, 1]), sorted by brightness for stable figures."""
    from sklearn.cluster import KMeans

    if len(pixels) < k:
        raise ValueError(f"need at least {k} pixels for a {k}-colour palette, got {len(pixels)}")
    centres = KMeans(n_clusters=k, n_init=2, random_state=seed).fit(pixels).cluster_centers_
    order = np.argsort(centres @ np.array([0.299, 0.587, 0.114]))
    return centres[order].astype(np.float32)


def load_or_compute_palette(h5_path: Path | str, k: int = 24, classes: Sequence[str] | None = None) -> np.ndarray:
    """The saved palette of ``h5_path`` (and ``classes``), computing and saving it first if
    it is missing or older than the data file."""
    h5_path = Path(h5_path)
    with h5py.File(h5_path, "r", locking=False) as f:
        names = json.loads(f.attrs.get("class_names", "[]"))
    if classes is not None and set(classes) == set(names):
        classes = None  # all classes: one palette file shared by every run on this data
    path = palette_path(h5_path, k, classes)
    if path.is_file() and path.stat().st_mtime >= h5_path.stat().st_mtime:
        palette = np.load(path)
        if palette.shape == (k, 3):
            return palette.astype(np.float32)
        log.warning("palette %s has shape %s, expected (%d, 3); recomputing", path, palette.shape, k)
    palette = compute_palette(training_pixels(h5_path, classes), k)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, palette)
    log.info("saved a %d-colour k-means palette to %s", k, path)
    return palette
