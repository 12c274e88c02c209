"""Stage a dataset into HDF5: existing file, then local mirrors, then the real downloader."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from hpclab.data.hdf5 import describe, write_hdf5
from hpclab.data.sources import SOURCES, SourceMissing

log = logging.getLogger(__name__)


class DataMissing(FileNotFoundError):
    """No prepared file and no usable source; the message says how to stage the data."""


def hdf5_path(cfg: DictConfig) -> Path:
    """Where the prepared file of ``cfg.data`` lives."""
    if cfg.data.file:
        return Path(cfg.data.file)
    suffix = f"_{cfg.data.image_size}px" if cfg.data.image_size else ""
    return Path(cfg.paths.data) / f"{cfg.data.name}{suffix}.h5"


def stage_command(cfg: DictConfig) -> str:
    return f"python jobs/prepare_data.py data={cfg.data.name}"


def require_prepared(cfg: DictConfig) -> Path:
    """The prepared file, or a one-line error naming the command that stages it."""
    path = hdf5_path(cfg)
    if not path.is_file():
        raise DataMissing(f"dataset '{cfg.data.name}' is not prepared ({path} missing); run: {stage_command(cfg)}")
    return path


def stage(cfg: DictConfig, force: bool = False) -> Path:
    """Write the HDF5 file for ``cfg.data`` unless it exists; return its path."""
    name = cfg.data.name
    if name not in SOURCES:
        raise DataMissing(f"unknown dataset '{name}' (known: {', '.join(sorted(SOURCES))})")
    source = SOURCES[name]
    out = hdf5_path(cfg)
    if out.is_file() and not force:
        log.info("%s already prepared at %s", name, out)
        return out

    tried: list[str] = []
    mirrors = [Path(m) for m in list(cfg.data.mirrors) + list(source.mirrors)]
    for directory in mirrors:
        try:
            staged = source.read(directory, cfg.data)
        except SourceMissing as exc:
            tried.append(str(exc))
            continue
        return _write(out, staged)

    if cfg.data.download and source.download is not None:
        root = Path(cfg.data.download_root or Path(cfg.paths.data) / "raw" / name)
        root.mkdir(parents=True, exist_ok=True)
        try:
            directory = source.download(root)
            return _write(out, source.read(directory, cfg.data))
        except (OSError, RuntimeError, ValueError) as exc:  # network errors are OSError/URLError
            tried.append(f"download into {root} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    elif source.download is None:
        tried.append("no downloader for this dataset")
    else:
        tried.append("download disabled (data.download=false)")

    raise DataMissing(
        f"cannot stage '{name}': " + "; ".join(tried) + f". Put the original files ({source.help}) in a directory and run: "
        f"python jobs/prepare_data.py data={name} data.mirrors=[/path/to/dir] (or run it on a node with internet)"
    )


def _write(out: Path, staged) -> Path:
    write_hdf5(out, staged)
    info = describe(out)
    shapes = ", ".join(f"{s}: {v['images'][0]}" for s, v in info["splits"].items())
    log.info("wrote %s from %s (%s)", out, staged.source, shapes)
    return out
