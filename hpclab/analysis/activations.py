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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from hpclab.analysis import ANALYSES  # noqa: E402
from hpclab.analysis.figures import save_figure  # noqa: E402
from hpclab.analysis.inputs import first_batch, network_input  # noqa: E402
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

    outputs = {name: out.detach().float().cpu() for name, _, out in forward_outputs(model, x, hooked_layers(model))
               if isinstance(out, torch.Tensor) and out.dim() == 4}
    return outputs


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    lo = maps.flatten(-2).amin(-1)[..., None, None]
    hi = maps.flatten(-2).amax(-1)[..., None, None]
    return (maps - lo) / (hi - lo).clamp_min(1e-8)


def activation_mosaic(inputs: torch.Tensor, maps: torch.Tensor, max_channels: int = 16, gap: int = 2) -> torch.Tensor:
    """H x W x 3 array: one row per image, the input then up to ``max_channels`` channel maps
    (each min-max scaled, viridis, nearest-resized to the input size)."""
    from matplotlib import colormaps

    n, channels = maps.shape[0], min(maps.shape[1], max_channels)
    h, w = inputs.shape[-2:]
    maps = _normalise(maps[:, :channels].float())
    maps = torch.nn.functional.interpolate(maps, size=(h, w), mode="nearest")
    coloured = torch.from_numpy(colormaps["viridis"](maps.numpy())[..., :3]).float()  # n x C x h x w x 3
    shown = inputs[:, :3].float().clamp(0, 1).expand(-1, 3, -1, -1).permute(0, 2, 3, 1)  # n x h x w x 3
    cell_w = w + gap
    out = torch.ones(n * (h + gap) - gap, (channels + 1) * cell_w - gap, 3)
    for i in range(n):
        top = i * (h + gap)
        out[top : top + h, :w] = shown[i]
        for c in range(channels):
            left = (c + 1) * cell_w
            out[top : top + h, left : left + w] = coloured[i, c]
    return out


def activation_grid(inputs: torch.Tensor, maps: torch.Tensor, title: str, path: Path, max_channels: int = 16) -> Path:
    """Rows: images; columns: the input, then up to ``max_channels`` channel maps."""
    mosaic = activation_mosaic(inputs, maps, max_channels)
    height, width = mosaic.shape[:2]
    fig, ax = plt.subplots(figsize=(min(max(width / 40, 4), 24), max(height / 40, 1.5) + 0.6))
    ax.imshow(mosaic.numpy(), interpolation="nearest")
    cell = inputs.shape[-1] + 2
    channels = min(maps.shape[1], max_channels)
    ax.set_xticks([cell * (c + 0.5) - 1 for c in range(channels + 1)], ["input", *[str(c) for c in range(channels)]], fontsize=7)
    ax.set_yticks([])
    ax.set_xlabel("channel")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path, dpi=100)


@ANALYSES.register("activations")
def save_activations(run: TrainedRun, out_dir: Path, count: int = 4, split: str = "test", max_channels: int = 16,
                     model: str = "model") -> dict[str, Any]:
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
