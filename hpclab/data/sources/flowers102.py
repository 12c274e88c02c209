"""Oxford Flowers-102 in torchvision's layout: ``flowers-102/jpg/image_XXXXX.jpg``,
``imagelabels.mat`` (1-based category per image) and ``setid.mat`` (1-based image ids of the
official train/valid/test splits).

Staged for generative work: ALL 8,189 images go into ``train`` (resized so the shorter side is
``data.image_size``, 256 by default, then centre-cropped square, uint8). ``val`` is a copy of the
official validation split (10 images per category): a class-balanced real reference for image
logging and the discriminator's output on real images, not a held-out set.

Labels: the published tables (``imagelabels.mat`` and ``hpclab/data/flowers102_names.json``) number
categories from 1; everything inside hpclab is 0-based. ``to_zero_based`` is the one place
where that shift happens.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from hpclab.data.hdf5 import DatasetArrays
from hpclab.data.sources import Source, SourceMissing, register_source, torchvision_root_downloader
from hpclab.errors import ConfigError

NAMES_FILE = Path(__file__).resolve().parent.parent / "flowers102_names.json"
DEFAULT_SIZE = 256
FIRST_LABEL = 1  # the published tables count categories from 1
SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}  # setid.mat's official splits


def to_zero_based(labels: Any) -> Any:
    """Published 1-based category numbers -> hpclab's 0-based labels (the only place it happens)."""
    return labels - FIRST_LABEL


@lru_cache(maxsize=1)
def category_names() -> tuple[str, ...]:
    """The 102 category names, indexed by 0-based label (from the shipped 1-based table)."""
    table = json.loads(NAMES_FILE.read_text())
    ids = sorted(int(k) for k in table)
    if ids != list(range(FIRST_LABEL, FIRST_LABEL + len(ids))):
        raise ValueError(f"{NAMES_FILE}: keys must be the consecutive 1-based labels")
    names = [""] * len(ids)
    for key, name in table.items():
        names[to_zero_based(int(key))] = name
    return tuple(names)


def category_labels(names: Iterable[str]) -> list[int]:
    """0-based labels of category ``names``; a one-line error suggests the closest names."""
    import difflib

    known = category_names()
    labels = []
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=3)
            hint = f" (did you mean: {', '.join(close)})" if close else ""
            raise ConfigError(
                f"config key 'data.classes': '{name}' is not a Flowers-102 category{hint}; see {NAMES_FILE}"
            )
        labels.append(known.index(name))
    return labels


def base_folder(directory: Path) -> Path:
    """``directory`` itself or its ``flowers-102`` child (torchvision's root), whichever holds the files."""
    for candidate in (directory / "flowers-102", directory):
        if (candidate / "imagelabels.mat").is_file():
            return candidate
    raise SourceMissing(f"{directory} has no flowers-102/imagelabels.mat (torchvision's Flowers102 layout)")


def load_image(path: Path, size: int) -> tuple[np.ndarray, str]:
    """One JPEG -> (3 x size x size uint8: shorter side resized to ``size``, centre crop; sha256)."""
    from PIL import Image, ImageOps

    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (size, size))  # JPEG DCT scaling: decode at >= size, much faster
        img = ImageOps.fit(img.convert("RGB"), (size, size), method=Image.Resampling.BICUBIC)
        array = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    return array, hashlib.sha256(data).hexdigest()


def read_flowers102(directory: Path, cfg: Any | None = None) -> DatasetArrays:
    from scipy.io import loadmat

    base = base_folder(Path(directory))
    setid_path, labels_path, jpg_dir = base / "setid.mat", base / "imagelabels.mat", base / "jpg"
    if not setid_path.is_file() or not jpg_dir.is_dir():
        raise SourceMissing(f"{base} lacks setid.mat or jpg/ (torchvision's Flowers102 layout)")
    if cfg is not None and getattr(cfg, "classes", None):
        category_labels(c for c in cfg.classes if isinstance(c, str))  # fail at staging, not at training
    size = int(getattr(cfg, "image_size", None) or DEFAULT_SIZE)

    labels = to_zero_based(np.asarray(loadmat(labels_path, squeeze_me=True)["labels"], dtype=np.int64).reshape(-1))
    names = category_names()
    if labels.min() < 0 or labels.max() >= len(names):
        raise ValueError(f"{labels_path}: labels must lie in 1..{len(names)}")
    paths = [jpg_dir / f"image_{i:05d}.jpg" for i in range(1, len(labels) + 1)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise SourceMissing(
            f"{jpg_dir} lacks {len(missing)} of the {len(paths)} images named in imagelabels.mat (first: {missing[0]})"
        )
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL releases the GIL
        loaded = list(pool.map(lambda p: load_image(p, size), paths))
    images = np.stack([image for image, _ in loaded])
    digest = hashlib.sha256("".join(d for _, d in loaded).encode()).hexdigest()

    setid = loadmat(setid_path, squeeze_me=True)
    official = np.full(len(labels), -1, dtype=np.int8)  # which official split each image is in
    for code, key in enumerate(SPLIT_KEYS.values()):
        official[to_zero_based(np.asarray(setid[key], dtype=np.int64).reshape(-1))] = code
    val = np.flatnonzero(official == list(SPLIT_KEYS).index("val"))
    return DatasetArrays(
        splits={"train": {"images": images, "labels": labels}, "val": {"images": images[val], "labels": labels[val]}},
        class_names=list(names),
        inputs=[labels_path, setid_path],  # the 8,189 jpgs are summarised in the jpg_sha256 attribute
        source=str(base),
        extra={"official_split": official},  # 0 train, 1 valid, 2 test (setid.mat), per train image
        attrs={
            "image_size": size,
            "jpg_count": len(paths),
            "jpg_sha256": digest,
            "jpg_sha256_note": "sha256 of the concatenated hex sha256 of image_00001.jpg, ...",
        },
    )


register_source(
    Source(
        "flowers102",
        read_flowers102,
        torchvision_root_downloader("Flowers102", "flowers-102"),
        help="Oxford Flowers-102 as torchvision stores it: flowers-102/jpg/image_XXXXX.jpg, imagelabels.mat, setid.mat",
    )
)
