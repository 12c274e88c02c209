"""Dataset sources: how to read each dataset's original files, and how to download them.

Each source registers ``read(directory, cfg) -> DatasetArrays`` (original files on disk -> arrays)
and optionally ``download(root)`` (the library's real downloader, for nodes with internet).
``prepare.stage`` tries them in order: existing HDF5, local mirrors, download.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpclab.data.hdf5 import DatasetArrays
from hpclab.registry import Registry


class SourceMissing(FileNotFoundError):
    """The directory does not hold this dataset's original files."""


@dataclass(frozen=True)
class Source:
    name: str
    read: Callable[[Path, object], DatasetArrays]
    download: Callable[[Path], Path] | None = None  # fetches into root, returns the dir to read
    mirrors: tuple[str, ...] = ()  # local directories tried before downloading
    help: str = ""  # where the original files come from


SOURCES = Registry("dataset", __name__)


def register_source(source: Source) -> Source:
    """Add ``source`` under its own name."""
    return SOURCES.add(source.name, source)


def option(data_cfg: object, key: str, default: object = None) -> object:
    """A source-specific staging option from ``data.options`` (absent config or key: default)."""
    options = getattr(data_cfg, "options", None) or {}
    return options.get(key, default) if hasattr(options, "get") else default


def find_file(directory: Path, names: list[str]) -> Path:
    """The first of ``names`` (plain or .gz) that exists under ``directory``."""
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise SourceMissing(f"{directory} has none of {', '.join(names)} (or .gz)")


def torchvision_root_downloader(cls_name: str, subdir: str = "", **kwargs) -> Callable[[Path], Path]:
    """Download with a torchvision dataset class (its real URLs and checksums); return the
    directory that ``read`` expects (``root/subdir``)."""

    def download(root: Path) -> Path:
        import torchvision.datasets as tvd

        getattr(tvd, cls_name)(root=str(root), download=True, **kwargs)
        return root / subdir if subdir else root

    return download
