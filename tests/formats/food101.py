"""Food-101 as torchvision reads it: ``food-101/images/<class>/<id>.jpg`` and ``food-101/meta/``
with ``train.json`` / ``test.json`` (class -> ["<class>/<id>", ...]), ``classes.txt``, ``labels.txt``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from formats.cifar import class_images

SUBDIR = "food-101"
CLASSES = [
    "apple_pie",
    "baby_back_ribs",
    "baklava",
    "beef_carpaccio",
    "beef_tartare",
    "beet_salad",
    "beignets",
    "bibimbap",
    "bread_pudding",
    "breakfast_burrito",
]


def write_food101(
    directory: Path,
    classes: int = 4,
    per_class_train: int = 6,
    per_class_test: int = 2,
    seed: int = 0,
    size: tuple[int, int] = (40, 56),
) -> dict[str, list[tuple[str, int]]]:
    """Write JPEGs of varying aspect (``size`` = H, W; real Food-101 images are up to 512 px) and
    the meta files; return ``{split: [(relative id, label), ...]}`` in json order."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(directory) / SUBDIR
    (root / "meta").mkdir(parents=True, exist_ok=True)
    names = CLASSES[:classes]
    out: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    counter = 0
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        listing: dict[str, list[str]] = {}
        for label, name in enumerate(names):
            (root / "images" / name).mkdir(parents=True, exist_ok=True)
            rels = []
            for _ in range(per_class):
                counter += 1
                rel = f"{name}/{100000 + counter}"
                square = class_images(np.array([label]), max(size), rng)[0].transpose(1, 2, 0)
                Image.fromarray(np.ascontiguousarray(square[: size[0], : size[1]])).save(
                    root / "images" / f"{rel}.jpg", quality=90
                )
                rels.append(rel)
                out[split].append((rel, label))
            listing[name] = rels
        (root / "meta" / f"{split}.json").write_text(json.dumps(listing))
        (root / "meta" / f"{split}.txt").write_text("".join(r + "\n" for r in sum(listing.values(), [])))
    (root / "meta" / "classes.txt").write_text("".join(n + "\n" for n in names))
    (root / "meta" / "labels.txt").write_text("".join(n.replace("_", " ").capitalize() + "\n" for n in names))
    return out
