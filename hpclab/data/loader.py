"""Batches for the engine: whole batches as uint8 tensors, in memory or streamed from HDF5.

Splits small enough for memory are loaded once (onto the accelerator when ``on_device``) and
batched by indexing a tensor: no Python per item, no worker processes. Larger splits stream
through a DataLoader whose workers each read a batch with one HDF5 selection. Both orders are
a pure function of (seed, epoch), so a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from omegaconf import DictConfig

from hpclab.data.hdf5 import H5Split
from hpclab.data.prepare import require_prepared
from hpclab.errors import ConfigError

SPLIT_SEED = 20240917  # fixed: the val split must not move when the run seed changes


@dataclass
class DataInfo:
    in_channels: int
    image_size: int
    num_classes: int
    class_names: list[str]
    path: Path


class EpochBatches(torch.utils.data.Sampler):
    """Index batches of one epoch: a seeded permutation, sharded by rank, resumable mid-epoch
    (``skip``), or a run of batches of it (``skip`` to ``stop``: a rank's share of an evaluation)."""

    def __init__(
        self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1, drop_last: bool = True
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.epoch, self.skip, self.stop = 0, 0, None
        per_rank = n // world if shuffle else math.ceil(n / world)
        self.per_rank = per_rank
        if drop_last and per_rank >= batch_size:
            self.num_batches = per_rank // batch_size
        else:
            self.num_batches = math.ceil(per_rank / batch_size)

    def set_epoch(self, epoch: int, skip: int = 0, stop: int | None = None) -> None:
        self.epoch, self.skip, self.stop = epoch, skip, stop

    @property
    def end(self) -> int:
        return self.num_batches if self.stop is None else min(self.stop, self.num_batches)

    def __len__(self) -> int:
        return max(self.end - self.skip, 0)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=gen).numpy()[: self.per_rank * self.world]
        else:
            order = np.arange(self.n)
        mine = order[self.rank :: self.world]
        for b in range(self.skip, self.end):
            yield mine[b * self.batch_size : (b + 1) * self.batch_size]


class SplitBatches:
    """Iterate one split as batches (dicts of tensors on ``device``)."""

    def __init__(
        self,
        split: H5Split,
        batch_size: int,
        shuffle: bool,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
        in_memory: bool = True,
        on_device: bool = True,
        num_workers: int = 0,
        label_map: torch.Tensor | None = None,
    ) -> None:
        self.split = split
        self.device = device
        self.label_map = label_map
        self.sampler = EpochBatches(len(split), batch_size, shuffle, seed, rank, world, drop_last=shuffle)
        self.tensors: dict[str, torch.Tensor] | None = None
        self.loader: torch.utils.data.DataLoader | None = None
        if in_memory:
            store = device if on_device else torch.device("cpu")
            self.tensors = {k: v.to(store) for k, v in split.load().items()}
        elif num_workers > 0:
            self.loader = torch.utils.data.DataLoader(
                split,
                sampler=self.sampler,
                batch_size=None,
                num_workers=num_workers,
                persistent_workers=True,
                pin_memory=device.type == "cuda",
                prefetch_factor=4,
            )

    def __len__(self) -> int:
        return self.sampler.num_batches

    @property
    def num_items(self) -> int:
        return len(self.split)

    def epoch(self, epoch: int = 0, skip: int = 0, stop: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of ``epoch`` from batch ``skip`` (resuming mid-epoch) to ``stop`` (excluded)."""
        self.sampler.set_epoch(epoch, skip, stop)
        if self.tensors is not None:
            for idx in self.sampler:
                index = torch.from_numpy(idx).to(next(iter(self.tensors.values())).device)
                yield self._finish({k: v.index_select(0, index) for k, v in self.tensors.items()})
        elif self.loader is not None:
            for batch in self.loader:
                yield self._finish(batch)
        else:  # streamed in this process: one read per batch, without a DataLoader around it
            pin = self.device.type == "cuda"
            for idx in self.sampler:
                batch = self.split[idx]
                yield self._finish({k: v.pin_memory() for k, v in batch.items()} if pin else batch)

    def _finish(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.label_map is not None and "labels" in out:
            out["labels"] = self.label_map.to(out["labels"].device)[out["labels"]]
        return out


def split_indices(path: Path, cfg: DictConfig) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Indices of train/val/test (and other file splits) after class filter, val hold-out,
    label fraction and limit; plus the label remapping when a class subset is chosen."""
    d = cfg.data
    with h5py.File(path, "r", locking=False) as f:
        names = [k for k in f.keys() if k != "extra"]
        labels = {s: f[s]["labels"][()] if "labels" in f[s] else None for s in names}
        class_names = json.loads(f.attrs.get("class_names", "[]"))
    keep_classes, label_map = None, None
    if d.classes:
        unknown = [c for c in d.classes if isinstance(c, str) and c not in class_names]
        if unknown:
            raise ConfigError(
                f"config key 'data.classes': unknown class {unknown[0]!r} (classes: {', '.join(class_names)})"
            )
        keep_classes = [class_names.index(c) if isinstance(c, str) else int(c) for c in d.classes]
        label_map = np.full(max(len(class_names), max(keep_classes) + 1), -1, dtype=np.int64)
        label_map[keep_classes] = np.arange(len(keep_classes))

    out: dict[str, np.ndarray] = {}
    for split in names:
        n = len(labels[split]) if labels[split] is not None else _length(path, split)
        idx = np.arange(n)
        if keep_classes is not None and labels[split] is not None:
            idx = idx[np.isin(labels[split], keep_classes)]
        out[split] = idx
    if "train" in out:
        rng = np.random.default_rng(SPLIT_SEED)
        perm = out["train"][rng.permutation(len(out["train"]))]
        n_val = int(round(len(perm) * d.val_fraction))
        if "val" not in out and n_val > 0:
            out["val"] = np.sort(perm[:n_val])
            perm = perm[n_val:]
        perm = perm[: max(1, int(round(len(perm) * d.train_fraction)))]
        out["train"] = np.sort(perm)
    if d.limit:
        out = {s: v[: d.limit] for s, v in out.items()}
    return out, label_map


def _length(path: Path, split: str) -> int:
    with h5py.File(path, "r", locking=False) as f:
        return len(f[split]["images"])


class RunData:
    """The prepared dataset of a run: metadata plus a batch iterator per split."""

    def __init__(self, cfg: DictConfig, device: torch.device, rank: int = 0, world: int = 1) -> None:
        self.cfg = cfg
        self.path = require_prepared(cfg)
        self.device, self.rank, self.world = device, rank, world
        self.indices, label_map = split_indices(self.path, cfg)
        _check_not_empty(self.indices, cfg, world, self.path)
        self.label_map = None if label_map is None else torch.from_numpy(label_map)
        with h5py.File(self.path, "r", locking=False) as f:
            first = next(s for s in self.indices)
            shape = f[first]["images"].shape
            names = json.loads(f.attrs.get("class_names", "[]"))
        if label_map is not None:
            kept = np.flatnonzero(label_map >= 0)[np.argsort(label_map[label_map >= 0])]
            names = [names[i] if i < len(names) else str(i) for i in kept]
        self.info = DataInfo(
            in_channels=shape[1], image_size=shape[2], num_classes=max(len(names), 1), class_names=names, path=self.path
        )
        self._cache: dict[tuple[str, bool], SplitBatches] = {}

    def has(self, split: str) -> bool:
        return split in self.indices and len(self.indices[split]) > 0

    def sample(self, name: str, count: int = 2) -> dict[str, torch.Tensor]:
        """The first ``count`` items of split ``name`` as one batch on this data's device, labels
        mapped like a training batch's, without loading the split (checks before a run starts)."""
        split = self.split(name)
        batch = split[np.arange(min(count, len(split)))]
        if self.label_map is not None and "labels" in batch:
            batch["labels"] = self.label_map[batch["labels"]]
        return {k: v.to(self.device) for k, v in batch.items()}

    def labels(self, name: str) -> np.ndarray | None:
        """Every label of split ``name`` (mapped like a batch's), or None when it has none."""
        split = self.split(name)
        with h5py.File(self.path, "r", locking=False) as f:
            if "labels" not in f[split.split]:
                return None
            labels = f[split.split]["labels"][()][split.indices]
        return labels if self.label_map is None else self.label_map.numpy()[labels]

    def split(self, name: str) -> H5Split:
        file_split = "train" if name == "val" and name not in _file_splits(self.path) else name
        return H5Split(self.path, file_split, self.indices[name])

    def batches(self, name: str, train: bool) -> SplitBatches:
        """Shuffled, rank-sharded batches for training; ordered batches of the whole split for
        evaluation (the engine's evaluations give each rank a run of them: ``eval_shard``)."""
        key = (name, train)
        if key not in self._cache:
            d, t = self.cfg.data, self.cfg.train
            split = self.split(name)
            in_memory = d.in_memory == "true" or (d.in_memory == "auto" and split.nbytes < d.max_memory_gb * 2**30)
            self._cache[key] = SplitBatches(
                split,
                rank_batch_size(self.cfg, self.world) if train else t.eval_batch_size,
                shuffle=train,
                seed=self.cfg.seed,
                device=self.device,
                rank=self.rank if train else 0,
                world=self.world if train else 1,
                in_memory=in_memory,
                on_device=d.on_device,
                num_workers=d.num_workers,
                label_map=self.label_map,
            )
        return self._cache[key]


def rank_batch_size(cfg: DictConfig, world: int = 1) -> int:
    """Each rank's training batch: ``train.global_batch_size / world`` when the global batch is
    set (the ranks must divide it: one line otherwise), else ``train.batch_size``."""
    total = cfg.train.global_batch_size
    if total is None:
        return cfg.train.batch_size
    if total % world:
        raise ConfigError(
            f"config key 'train.global_batch_size': {total} images do not split evenly over {world} "
            f"data-parallel ranks (nodes x tasks per node); choose a multiple of {world}, or set "
            f"train.batch_size (per rank) instead"
        )
    return total // world


def eval_shard(batches: int, rank: int, world: int) -> tuple[int, int]:
    """The run of evaluation batches ``[first, stop)`` rank ``rank`` of ``world`` evaluates: whole
    batches, balanced, so each batch is exactly the one a single process would see. Fewer batches
    than ranks: every rank evaluates them all (nothing to add up afterwards)."""
    if world <= 1 or batches < world:
        return 0, batches
    return rank * batches // world, (rank + 1) * batches // world


def check_splits(cfg: DictConfig, world: int = 1) -> Path:
    """Before any work: the prepared file is sound, every split the run uses keeps images after
    the data options, and the global batch splits over ``world`` ranks (one line otherwise);
    the file's path."""
    rank_batch_size(cfg, world)
    path = require_prepared(cfg)
    _check_not_empty(split_indices(path, cfg)[0], cfg, world, path)
    return path


def _check_not_empty(indices: dict[str, np.ndarray], cfg: DictConfig, world: int, path: Path) -> None:
    """One line, before any model is built, when a split the run uses has no images (or fewer
    training images than data-parallel ranks) after class filter, hold-out, fraction and limit."""
    used = {"train", *cfg.train.eval_splits, *cfg.train.final_splits}
    for name, idx in indices.items():
        need = world if name == "train" else 1
        if name in used and len(idx) < need:
            raise ConfigError(
                f"config key 'data': the {name} split of {path.name} has {len(idx)} image(s) after "
                f"data.classes/limit/train_fraction/val_fraction (needs at least {need})"
            )


def _file_splits(path: Path) -> list[str]:
    with h5py.File(path, "r", locking=False) as f:
        return [k for k in f.keys() if k != "extra"]
