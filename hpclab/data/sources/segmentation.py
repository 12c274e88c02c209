"""Brain-tumour MRI segmentation (source ``brain_mri``): slices and binary masks from folders.

Two on-disk layouts are read (the directory given in ``data.mirrors``):

* ``images/<id>.<ext>`` with ``masks/<id>.<ext>`` (or ``masks/<id>_mask.<ext>``), ext one of
  png, tif, tiff, jpg, bmp: the layout of Kaggle's "Brain Tumor Segmentation" set
  (nikhilroxtomar/brain-tumor-segmentation: 3,064 T1-weighted contrast-enhanced slices with
  tumour masks, from Cheng et al.'s figshare data set) and of most exported slice sets. Each
  image is its own group for the train/test split.
* ``[kaggle_3m/]<case>/<case>_<n>.tif`` with ``<case>_<n>_mask.tif``: Kaggle's LGG set
  (mateuszbuda/lgg-mri-segmentation, 110 patients, 3,929 slices). Split by patient.

Images are converted to grey (``data.options.channels: 1``, the default) or kept RGB (3),
resized bilinearly to ``data.image_size`` (240 by default, the BraTS slice size); masks are
binarized at half their maximum, resized with nearest neighbours and stored as uint8 0/1 in a
``masks`` array (N x 1 x H x W) next to ``images``. ``labels`` say whether a slice shows tumour.
Train/test: a seeded (``options.split_seed``, 0) random ``options.test_fraction`` (0.2) of the
groups goes to test. There is no downloader (the sets need a Kaggle/figshare login):
``python jobs/make_phantoms.py DIR`` writes synthetic slices in the first layout for tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpclab.data.hdf5 import DatasetArrays
from hpclab.data.sources import Source, SourceMissing, option, register_source
from hpclab.errors import ConfigError

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
DEFAULT_SIZE = 240
CLASS_NAMES = ["no tumour", "tumour"]


def pairs_folders(directory: Path) -> list[tuple[Path, Path, str]]:
    """(image, mask, group) of the ``images/`` + ``masks/`` layout."""
    images_dir, masks_dir = directory / "images", directory / "masks"
    masks = {}
    for path in masks_dir.iterdir():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            stem = path.stem[: -len("_mask")] if path.stem.endswith("_mask") else path.stem
            masks[stem] = path
    out, unmatched = [], []
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in masks:
            out.append((path, masks[path.stem], path.stem))
        else:
            unmatched.append(path.name)
    if unmatched:
        raise SourceMissing(
            f"{images_dir}: {len(unmatched)} image(s) without a mask in {masks_dir} (e.g. {unmatched[0]})"
        )
    return out


def pairs_cases(directory: Path) -> list[tuple[Path, Path, str]]:
    """(image, mask, case) of the LGG layout ``<case>/<id>.tif`` + ``<id>_mask.tif``."""
    out = []
    for mask in sorted(directory.glob("*/*_mask.tif")):
        image = mask.with_name(mask.name[: -len("_mask.tif")] + ".tif")
        if not image.is_file():
            raise SourceMissing(f"{mask}: no image {image.name} next to it")
        out.append((image, mask, mask.parent.name))
    return out


def find_pairs(directory: Path) -> list[tuple[Path, Path, str]]:
    """The (image, mask, group) triples of whichever supported layout ``directory`` holds."""
    if (directory / "images").is_dir() and (directory / "masks").is_dir():
        pairs = pairs_folders(directory)
    else:
        root = directory / "kaggle_3m" if (directory / "kaggle_3m").is_dir() else directory
        pairs = pairs_cases(root) if root.is_dir() else []
    if not pairs:
        raise SourceMissing(f"{directory} has neither images/ + masks/ nor <case>/<id>.tif + <id>_mask.tif files")
    return pairs


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """An image file as uint8 C x size x size (grey or RGB), bilinear resize."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def load_mask(path: Path, size: int) -> np.ndarray:
    """A mask file (0/255, 0/1 or any two levels) as uint8 0/1, 1 x size x size."""
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img.convert("L"))
    binary = array > (array.max() / 2.0) if array.max() > 0 else np.zeros_like(array, dtype=bool)
    resized = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return (np.asarray(resized) > 127).astype(np.uint8)[None]


def split_groups(groups: list[str], test_fraction: float, seed: int) -> np.ndarray:
    """Boolean "is test" per item: a seeded random fraction of the distinct groups."""
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_test = int(round(len(unique) * test_fraction))
    if len(unique) > 1:
        n_test = min(max(n_test, 1 if test_fraction > 0 else 0), len(unique) - 1)
    test = {unique[i] for i in order[:n_test]}
    return np.array([g in test for g in groups])


def read_brain_mri(directory: Path, cfg: Any = None) -> DatasetArrays:
    directory = Path(directory)
    if not directory.is_dir():
        raise SourceMissing(f"{directory} is not a directory")
    pairs = find_pairs(directory)
    size = int(getattr(cfg, "image_size", None) or DEFAULT_SIZE)
    channels = int(option(cfg, "channels", 1))
    if channels not in (1, 3):
        raise ConfigError(f"config key 'data.options.channels': must be 1 or 3, got {channels}")
    test_fraction = float(option(cfg, "test_fraction", 0.2))
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"config key 'data.options.test_fraction': must be in [0, 1), got {test_fraction}")
    images = np.stack([load_image(img, size, channels) for img, _, _ in pairs])
    masks = np.stack([load_mask(mask, size) for _, mask, _ in pairs])
    labels = (masks.reshape(len(masks), -1).max(1) > 0).astype(np.int64)
    is_test = split_groups([g for _, _, g in pairs], test_fraction, int(option(cfg, "split_seed", 0)))
    splits = {}
    for name, keep in (("train", ~is_test), ("test", is_test)):
        if keep.any():
            splits[name] = {"images": images[keep], "labels": labels[keep], "masks": masks[keep]}
    inputs = [p for img, mask, _ in pairs for p in (img, mask)]
    return DatasetArrays(
        splits=splits,
        class_names=CLASS_NAMES,
        inputs=inputs,
        source=str(directory),
        attrs={
            "layout": "images+masks" if (directory / "images").is_dir() else "case folders",
            "test_fraction": test_fraction,
            "channels": channels,
        },
    )


register_source(
    Source(
        "brain_mri",
        read_brain_mri,
        download=None,
        help="brain MRI slices with tumour masks as images/<id>.png + masks/<id>.png (Kaggle "
        "nikhilroxtomar/brain-tumor-segmentation) or <case>/<id>.tif + <id>_mask.tif (Kaggle "
        "mateuszbuda/lgg-mri-segmentation); download them by hand (Kaggle login), or write "
        "synthetic phantoms with python jobs/make_phantoms.py DIR",
    )
)
