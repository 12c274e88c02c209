"""Probes: how much of the class a fixed representation carries, measured by a linear layer and
an MLP trained on it. ``latent_probe`` probes an autoencoder's codes, ``pixel_probe`` the raw
pixels (the anchor a code has to beat); both train and report them the same way."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpclab.analysis.report import write_table
from hpclab.models.layers import mlp

log = logging.getLogger("hpclab")

Labelled = tuple[torch.Tensor, torch.Tensor]  # features (N x D), labels (N)


class Probe(nn.Module):
    """A linear layer, or an MLP with ReLU hidden layers, on standardised features."""

    def __init__(self, dim: int, classes: int, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        self.net = mlp(dim, hidden, classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def train_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    evals: dict[str, tuple[torch.Tensor, torch.Tensor]],
    classes: int,
    hidden: Sequence[int],
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> dict[str, float]:
    """Fit a probe with Adam on fixed features; return its accuracy on each evaluation set."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    z, y = train
    probe = Probe(z.shape[1], classes, hidden)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * math.ceil(len(z) / batch_size)))
    for _ in range(epochs):
        for idx in torch.randperm(len(z), generator=gen).split(batch_size):
            loss = nn.functional.cross_entropy(probe(z[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    probe.eval()
    with torch.no_grad():
        return {name: float((probe(ez).argmax(1) == ey).float().mean()) for name, (ez, ey) in evals.items()}


def fit_probes(
    train: Labelled,
    evals: dict[str, Labelled],
    classes: int,
    mlp_hidden: Sequence[int],
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    features: str,
) -> dict[str, float]:
    """Standardise every set with the training set's mean and deviation, fit the linear probe
    and the MLP; their accuracy on each evaluation set as ``{linear,mlp}_<split>_acc``."""
    x, y = train
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    scaled = {split: ((ex - mean) / std, ey) for split, (ex, ey) in evals.items()}
    record: dict[str, float] = {}
    for name, hidden in (("linear", ()), ("mlp", tuple(mlp_hidden))):
        started = time.perf_counter()
        accs = train_probe(((x - mean) / std, y), scaled, classes, hidden, epochs, lr, batch_size, seed)
        record.update({f"{name}_{split}_acc": acc for split, acc in accs.items()})
        log.info(
            "%s probe on %s: %s (%.1f s)",
            name,
            features,
            " ".join(f"{s}={a:.4f}" for s, a in accs.items()),
            time.perf_counter() - started,
        )
    return record


def write_probe_table(
    record: dict[str, Any],
    size_column: str,
    size: int,
    splits: Sequence[str],
    mlp_hidden: Sequence[int],
    base: Path,
    title: str,
) -> dict[str, str]:
    """The two probes' accuracies on ``splits`` as ``base``.md/.csv, beside the feature size."""
    rows = [
        [probe, size, *(round(record[f"{key}_{s}_acc"], 4) for s in splits)]
        for probe, key in (("linear", "linear"), (f"MLP {list(mlp_hidden)}", "mlp"))
    ]
    return write_table(["probe", size_column, *(f"{s} accuracy" for s in splits)], rows, base, title, figure=False)
