"""Intermediate activations of a trained network as image grids, one PNG per layer.

Forward hooks on the network's main blocks (``model.layer_names`` when the model names them,
e.g. downconv1..finalconv of the colourization CNN/U-Net, else its top-level children) record
their outputs for a few test images; each figure has one row per image (the network input
first) and one column per channel (the first ``max_channels``), each map min-max scaled and
drawn as one mosaic (one image per figure keeps this fast).
Used as the ``activations`` analysis and by ``python jobs/activations.py RUN_DIR``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpclab.analysis import ANALYSES
from hpclab.analysis.grids import labelled_grid
from hpclab.analysis.inputs import first_batch, network_input
from hpclab.engine.evaluation import TrainedRun


def hooked_layers(model: nn.Module) -> list[str]:
    """Names of the modules whose outputs are shown."""
    names = list(getattr(model, "layer_names", None) or [n for n, _ in model.named_children()])
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"{type(model).__name__}.layer_names lists unknown modules: {missing}")
    return names


@torch.no_grad()
def record_activations(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``model(x)`` and return the output of each hooked layer (N x C x H x W, on CPU)."""
    from hpclab.analysis.hooks import forward_outputs

    outputs = {
        name: out.detach().float().cpu()
        for name, _, out in forward_outputs(model, x, hooked_layers(model))
        if isinstance(out, torch.Tensor) and out.dim() == 4
    }
    return outputs


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    lo = maps.flatten(-2).amin(-1)[..., None, None]
    hi = maps.flatten(-2).amax(-1)[..., None, None]
    return (maps - lo) / (hi - lo).clamp_min(1e-8)


def activation_cells(inputs: torch.Tensor, maps: torch.Tensor, max_channels: int = 16) -> torch.Tensor:
    """Per image its input, then up to ``max_channels`` channel maps (each min-max scaled,
    viridis, nearest-resized to the input size), as RGB images in row order."""
    from matplotlib import colormaps

    channels = min(maps.shape[1], max_channels)
    h, w = inputs.shape[-2:]
    maps = _normalise(maps[:, :channels].float())
    maps = torch.nn.functional.interpolate(maps, size=(h, w), mode="nearest")
    coloured = torch.from_numpy(colormaps["viridis"](maps.numpy())[..., :3]).float().permute(0, 1, 4, 2, 3)
    shown = inputs[:, :3].float().clamp(0, 1).expand(-1, 3, -1, -1)
    return torch.cat([shown[:, None], coloured], 1).flatten(0, 1)  # n * (1 + channels) x 3 x h x w


def activation_grid(inputs: torch.Tensor, maps: torch.Tensor, title: str, path: Path, max_channels: int = 16) -> Path:
    """Rows: images; columns: the input, then up to ``max_channels`` channel maps."""
    channels = min(maps.shape[1], max_channels)
    return labelled_grid(
        activation_cells(inputs, maps, max_channels),
        channels + 1,
        path,
        title,
        ["input", *[str(c) for c in range(channels)]],
        xlabel="channel",
        dpi=100,
    )


@ANALYSES.register("activations")
def save_activations(
    run: TrainedRun, out_dir: Path, count: int = 4, split: str = "test", max_channels: int = 16, model: str = "model"
) -> dict[str, Any]:
    """One grid per hooked layer of ``model`` for the first ``count`` images of ``split``."""
    net = run.unwrap(model)
    batch = first_batch(run, split, count)
    x = network_input(run, batch)
    with run.evaluating():
        outputs = record_activations(net, x)
    folder = Path(out_dir) / "activations"
    files = []
    for i, (name, maps) in enumerate(outputs.items(), 1):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        title = f"{type(net).__name__} {name}: {maps.shape[1]} channels, {maps.shape[2]}x{maps.shape[3]}"
        files.append(str(activation_grid(x.float().cpu(), maps, title, folder / f"{i:02d}_{safe}.png", max_channels)))
    return {"folder": str(folder), "layers": list(outputs), "files": files}
