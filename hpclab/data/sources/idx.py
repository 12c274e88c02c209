"""MNIST-family sources (IDX files) and scikit-learn's 8x8 digits."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hpclab.data.hdf5 import DatasetArrays
from hpclab.data.sources import Source, find_file, register_source

# --------------------------------------------------------------------------- IDX (MNIST family)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzip-compressed or not, via torchvision's parser."""
    import tempfile

    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    if path.suffix == ".gz":
        with tempfile.NamedTemporaryFile(suffix=".idx") as tmp:
            with gzip.open(path, "rb") as src:
                tmp.write(src.read())
            tmp.flush()
            return read_sn3_pascalvincent_tensor(tmp.name, strict=False).numpy()
    return read_sn3_pascalvincent_tensor(str(path), strict=False).numpy()


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_source(
    name: str,
    class_names: list[str],
    downloader: Callable[[Path], Path] | None,
    mirrors: tuple[str, ...] = (),
    help: str = "",
) -> Source:
    """A source for a dataset shipped as MNIST-style IDX files (MNIST, Fashion-MNIST, notMNIST)."""

    def read(directory: Path, cfg: object = None) -> DatasetArrays:
        splits, inputs = {}, []
        for split, (image_name, label_name) in IDX_FILES.items():
            image_path = find_file(directory, [image_name, image_name.replace("-idx3-", ".idx3-")])
            label_path = find_file(directory, [label_name, label_name.replace("-idx1-", ".idx1-")])
            images, labels = read_idx(image_path), read_idx(label_path)
            if images.ndim != 3 or len(images) != len(labels):
                raise ValueError(f"{image_path}: expected N x H x W images matching {label_path}")
            splits[split] = {"images": images[:, None].astype(np.uint8), "labels": labels.astype(np.int64)}
            inputs += [image_path, label_path]
        return DatasetArrays(splits=splits, class_names=class_names, inputs=inputs, source=str(directory))

    return register_source(Source(name, read, downloader, mirrors, help))


def torchvision_downloader(cls_name: str) -> Callable[[Path], Path]:
    """Download with torchvision's dataset class; return the directory holding the raw files."""

    def download(root: Path) -> Path:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        dataset = cls(root=str(root), train=True, download=True)
        return Path(dataset.raw_folder)

    return download


def url_downloader(base_url: str, files: list[str]) -> Callable[[Path], Path]:
    """Download a list of files with torchvision's ``download_url`` (checks integrity when known)."""

    def download(root: Path) -> Path:
        from torchvision.datasets.utils import download_url

        for name in files:
            download_url(f"{base_url}/{name}", str(root), filename=name)
        return root

    return download


FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

idx_source(
    "mnist",
    [str(i) for i in range(10)],
    torchvision_downloader("MNIST"),
    help="MNIST IDX files (train-images-idx3-ubyte.gz, ...)",
)
idx_source(
    "fashion_mnist",
    FASHION_CLASSES,
    torchvision_downloader("FashionMNIST"),
    mirrors=("/usr/share/datasets/fashion-mnist",),
    help="Fashion-MNIST IDX files; Debian: apt-get install dataset-fashion-mnist",
)
idx_source(
    "notmnist",
    list("ABCDEFGHIJ"),
    url_downloader(
        "https://raw.githubusercontent.com/davidflanagan/notMNIST-to-MNIST/master",
        [f"{n}.gz" for pair in IDX_FILES.values() for n in pair],
    ),
    help="notMNIST converted to MNIST's IDX format (davidflanagan/notMNIST-to-MNIST)",
)


# --------------------------------------------------------------------------- scikit-learn digits


def read_digits(directory: Path, cfg: object = None) -> DatasetArrays:
    """scikit-learn's real 8x8 digits (1,797 images, shipped with the package): 80/20 split."""
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    digits = sklearn.datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = digits.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(images, labels, test_size=0.2, random_state=0, stratify=labels)
    data_file = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    return DatasetArrays(
        splits={"train": {"images": tr_x, "labels": tr_y}, "test": {"images": te_x, "labels": te_y}},
        class_names=[str(i) for i in range(10)],
        inputs=[data_file] if data_file.is_file() else [],
        source="sklearn.datasets.load_digits",
    )


register_source(Source("digits", read_digits, mirrors=("sklearn",), help="ships with scikit-learn"))
