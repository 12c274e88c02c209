"""Food-101 in torchvision's layout: ``food-101/images/<class>/<id>.jpg`` plus ``meta/train.json``,
``meta/test.json`` (class -> ["<class>/<id>", ...]) and ``meta/classes.txt``.

Options: ``data.image_size`` (required; JPEGs are resized so the shorter side fits, then
centre-cropped square) and ``data.options.num_classes`` (keep the first N classes of
classes.txt, e.g. 20 for practical work 12). Changing either needs ``force=true`` (or another
``data.file``) since the staged file name only carries the size.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from hpclab.data.hdf5 import DatasetArrays
from hpclab.data.sources import Source, SourceMissing, option, register_source, torchvision_root_downloader

SUBDIR = "food-101"


def base_dir(directory: Path) -> Path:
    for candidate in (Path(directory), Path(directory) / SUBDIR):
        if (candidate / "meta" / "train.json").is_file() and (candidate / "images").is_dir():
            return candidate
    raise SourceMissing(f"{directory} has no Food-101 layout ({SUBDIR}/images/, {SUBDIR}/meta/train.json, test.json)")


def load_image(path: Path, size: int) -> tuple[np.ndarray, str]:
    """A JPEG as 3 x size x size uint8 (shorter side resized, centre crop) and its sha256."""
    from PIL import Image, ImageOps

    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (size, size))  # JPEG DCT scaling: decode no larger than needed
        img = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
        array = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    return np.ascontiguousarray(array), hashlib.sha256(data).hexdigest()


def read_food101(directory: Path, cfg: Any = None) -> DatasetArrays:
    root = base_dir(directory)
    size = getattr(cfg, "image_size", None)
    if not size:
        raise ValueError("food101 images vary in size: set data.image_size (e.g. 224)")
    meta = {split: json.loads((root / "meta" / f"{split}.json").read_text()) for split in ("train", "test")}
    classes_file = root / "meta" / "classes.txt"
    classes = (
        [c.strip() for c in classes_file.read_text().splitlines() if c.strip()]
        if classes_file.is_file()
        else sorted(meta["train"])
    )
    keep = option(cfg, "num_classes")
    classes = classes[: int(keep)] if keep else classes
    splits: dict[str, dict[str, np.ndarray]] = {}
    digests: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        for split, listing in meta.items():
            items = [(label, rel) for label, name in enumerate(classes) for rel in listing.get(name, [])]
            if not items:
                raise ValueError(f"{root}/meta/{split}.json lists no images of the chosen classes")
            paths = [root / "images" / f"{rel}.jpg" for _, rel in items]
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise ValueError(f"{len(missing)} image(s) listed in meta/{split}.json are missing, e.g. {missing[0]}")
            loaded = list(pool.map(lambda p: load_image(p, int(size)), paths))
            splits[split] = {
                "images": np.stack([a for a, _ in loaded]),
                "labels": np.array([label for label, _ in items], dtype=np.int64),
            }
            digests.update({rel: d for (_, rel), (_, d) in zip(items, loaded)})
    # One digest over every (image, sha256) pair: per-file digests would overflow an HDF5 attribute.
    combined = hashlib.sha256("".join(f"{k} {digests[k]}\n" for k in sorted(digests)).encode()).hexdigest()
    inputs = [root / "meta" / n for n in ("train.json", "test.json", "classes.txt") if (root / "meta" / n).is_file()]
    return DatasetArrays(
        splits=splits,
        class_names=classes,
        inputs=inputs,
        source=str(root),
        attrs={"images_sha256": combined, "num_images": len(digests), "image_size": int(size)},
    )


register_source(
    Source(
        "food101",
        read_food101,
        torchvision_root_downloader("Food101", SUBDIR),
        help="Food-101 (food-101.tar.gz extracted: food-101/images/<class>/<id>.jpg, food-101/meta/{train,test}.json, "
        "classes.txt); set data.image_size",
    )
)
