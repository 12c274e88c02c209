"""Stage a dataset into HDF5: existing file, then local mirrors, then the real downloader.

``data.image_size`` is honoured for every source: sources that crop and resize while decoding
(Flowers-102, Food-101, brain MRI) return images at that size already; the others (IDX,
CIFAR-10, STL-10, digits) are resized here, once, at staging time, so a run never trains on
another size than its config names.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from hpclab.data.hdf5 import DatasetArrays, describe, file_problems, write_hdf5
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
    size = f" data.image_size={cfg.data.image_size}" if cfg.data.image_size else ""
    return f"python jobs/prepare_data.py data={cfg.data.name}{size}"


def check_size(cfg: DictConfig, path: Path) -> None:
    """A prepared file must hold images of ``data.image_size`` (files staged before sizes were
    honoured for every source hold the original size under the sized name)."""
    size = cfg.data.image_size
    if not size:
        return
    shape = next(iter(describe(path)["splits"].values()))["images"]
    if tuple(shape[2:]) != (size, size):
        raise DataMissing(
            f"{path} holds {shape[2]}x{shape[3]} px images, not data.image_size={size}; "
            f"stage it again: {stage_command(cfg)} force=true"
        )


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
        raise DataMissing(
            f"{path} is unusable: {problems[0]}"
            f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; "
            f"re-stage it: {stage_command(cfg)} force=true"
        )
    check_size(cfg, path)
    return path


def resize_staged(staged: DatasetArrays, size: int, chunk: int = 4096) -> DatasetArrays:
    """Every split's images resized to ``size`` x ``size`` (bilinear, antialiased when
    shrinking, rounded back to uint8), masks with nearest neighbours; splits already at that
    size are kept as they are. The original size is recorded in the file's attributes."""
    import torch
    import torch.nn.functional as F

    def resize(array: np.ndarray, mode: str) -> np.ndarray:
        if array.shape[2:] == (size, size):
            return array
        out = []
        for start in range(0, len(array), chunk):
            x = torch.from_numpy(np.ascontiguousarray(array[start : start + chunk])).float()
            if mode == "nearest":
                y = F.interpolate(x, size=(size, size), mode="nearest")
            else:
                y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            out.append(y.round_().clamp_(0, 255).to(torch.uint8).numpy())
        return np.concatenate(out) if out else np.empty(array.shape[:2] + (size, size), np.uint8)

    originals = {split: list(arrays["images"].shape[2:]) for split, arrays in staged.splits.items()}
    if all(shape == [size, size] for shape in originals.values()):
        return staged
    splits = {
        split: {
            key: resize(value, "nearest" if key == "masks" else "bilinear") if key in ("images", "masks") else value
            for key, value in arrays.items()
        }
        for split, arrays in staged.splits.items()
    }
    attrs = {
        **staged.attrs,
        "image_size": size,
        "resized_from": originals,
        "resize": "bilinear, antialiased (torch.nn.functional.interpolate), at staging",
    }
    return dataclasses.replace(staged, splits=splits, attrs=attrs)


def stage(cfg: DictConfig, force: bool = False, repair: bool = False) -> Path:
    """Write the HDF5 file for ``cfg.data`` unless a sound one exists; return its path.

    A damaged existing file is staged again with ``repair`` (``prepare_data``, the explicit
    staging command), and refused in one line otherwise (a launch never silently replaces data
    someone may have written by other means)."""
    name = cfg.data.name
    source = SOURCES[name]
    out = hdf5_path(cfg)
    if out.is_file() and not force:
        if not problems_of(out):
            check_size(cfg, out)
            log.info("%s already prepared at %s", name, out)
            return out
        if not repair:
            return require_prepared(cfg)  # raises: names the problem and the command that re-stages
        log.warning("%s is unusable (%s); staging it again", out, "; ".join(problems_of(out)))
    size = cfg.data.image_size

    tried: list[str] = []
    mirrors = [Path(m) for m in list(cfg.data.mirrors) + list(source.mirrors)]
    for directory in mirrors:
        try:
            staged = source.read(directory, cfg.data)
        except SourceMissing as exc:
            tried.append(str(exc))
            continue
        return _write(out, resize_staged(staged, size) if size else staged)

    if cfg.data.download and source.download is not None:
        root = Path(cfg.data.download_root or Path(cfg.paths.data) / "raw" / name)
        root.mkdir(parents=True, exist_ok=True)
        try:
            directory = source.download(root)
            staged = source.read(directory, cfg.data)
            return _write(out, resize_staged(staged, size) if size else staged)
        except (OSError, RuntimeError, ValueError) as exc:  # network errors are OSError/URLError
            tried.append(f"download into {root} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    elif source.download is None:
        tried.append("no downloader for this dataset")
    else:
        tried.append("download disabled (data.download=false)")

    raise DataMissing(
        f"cannot stage '{name}': "
        + "; ".join(tried)
        + f". Put the original files ({source.help}) in a directory and run: "
        f"python jobs/prepare_data.py data={name} data.mirrors=[/path/to/dir] (or run it on a node with internet)"
    )


def _write(out: Path, staged) -> Path:
    write_hdf5(out, staged)
    info = describe(out)
    shapes = ", ".join(f"{s}: {v['images'][0]}" for s, v in info["splits"].items())
    log.info("wrote %s from %s (%s)", out, staged.source, shapes)
    return out
