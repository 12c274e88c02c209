"""Stage a dataset into HDF5: existing file, then local mirrors, then the real downloader."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from hpclab.data.hdf5 import describe, file_problems, write_hdf5
from hpclab.data.sources import SOURCES, SourceMissing
from hpclab.errors import DataMissing

log = logging.getLogger(__name__)


def hdf5_path(cfg: DictConfig) -> Path:
    """Where the prepared file of ``cfg.data`` lives."""
    if cfg.data.file:
        return Path(cfg.data.file)
    suffix = f"_{cfg.data.image_size}px" if cfg.data.image_size else ""
    return Path(cfg.paths.data) / f"{cfg.data.name}{suffix}.h5"


def stage_command(cfg: DictConfig) -> str:
    return f"python jobs/prepare_data.py data={cfg.data.name}"


_CHECKED: dict[tuple[str, int, int], list[str]] = {}  # (path, size, mtime) -> problems, per process


def problems_of(path: Path) -> list[str]:
    """:func:`hpclab.data.hdf5.file_problems`, once per version of the file in a process
    (a sweep of many runs on one dataset checks it once)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _CHECKED:
        _CHECKED[key] = file_problems(path)
    return _CHECKED[key]


def require_prepared(cfg: DictConfig) -> Path:
    """The prepared file, checked whole, or a one-line error naming the command that stages it."""
    path = hdf5_path(cfg)
    if not path.is_file():
        raise DataMissing(f"dataset '{cfg.data.name}' is not prepared ({path} missing); run: {stage_command(cfg)}")
    problems = problems_of(path)
    if problems:
        raise DataMissing(f"{path} is unusable: {problems[0]}"
                          f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; "
                          f"re-stage it: {stage_command(cfg)} force=true")
    return path


def stage(cfg: DictConfig, force: bool = False, repair: bool = False) -> Path:
    """Write the HDF5 file for ``cfg.data`` unless a sound one exists; return its path.

    A damaged existing file is staged again with ``repair`` (``prepare_data``, the explicit
    staging command), and refused in one line otherwise (a launch never silently replaces data
    someone may have written by other means)."""
    name = cfg.data.name
    if name not in SOURCES:
        raise DataMissing(f"unknown dataset '{name}' (known: {', '.join(sorted(SOURCES))})")
    source = SOURCES[name]
    out = hdf5_path(cfg)
    if out.is_file() and not force:
        if not problems_of(out):
            log.info("%s already prepared at %s", name, out)
            return out
        if not repair:
            return require_prepared(cfg)  # raises: names the problem and the command that re-stages
        log.warning("%s is unusable (%s); staging it again", out, "; ".join(problems_of(out)))

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
