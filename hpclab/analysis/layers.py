"""Per-layer tables of a model from one forward pass on real inputs: every leaf layer in call
order with its type, output shape and own parameters, and for convolutions, pooling and
upsampling the settings that decide the output size. One set of rows, two views: a
Markdown/CSV/PNG table of the conv settings (``layer_table``) and the text of Keras'
``model.summary()`` (``layer_summary``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpclab.analysis.hooks import forward_outputs
from hpclab.analysis.inputs import first_batch, network_input
from hpclab.analysis.report import write_table
from hpclab.engine.evaluation import TrainedRun
from hpclab.models.conv import Conv2d

CONVOLUTIONS = (Conv2d, nn.Conv2d, nn.ConvTranspose2d)


def output_shape(value: Any) -> Any:
    """A tensor's shape without the batch dimension (a tuple), a list of those for a tuple of
    outputs, or the type's name for anything else."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape[1:])
    if isinstance(value, (tuple, list)):
        return [output_shape(v) for v in value]
    return type(value).__name__


def _scalar(value: Any) -> Any:
    if isinstance(value, (tuple, list)) and len(set(value)) == 1:
        return value[0]
    return value


def describe_layer(name: str, module: nn.Module, output: Any) -> dict[str, Any]:
    """One layer call as a row: name, type, display label, settings, output shape, own parameters."""
    row: dict[str, Any] = {
        "name": name,
        "type": type(module).__name__,
        "layer": type(module).__name__,
        "in": None,
        "filters": None,
        "kernel": None,
        "stride": None,
        "padding": None,
        "dilation": None,
        "output": output_shape(output),
        "params": sum(p.numel() for p in module.parameters(recurse=False)),
    }
    if isinstance(module, Conv2d):
        row["layer"] = "Conv2d (own, unfold/matmul)"
    if isinstance(module, CONVOLUTIONS):
        row.update(
            {
                "in": module.in_channels,
                "filters": module.out_channels,
                "kernel": "x".join(map(str, module.kernel_size)),
                "stride": _scalar(module.stride),
                "padding": _scalar(module.padding),
                "dilation": _scalar(module.dilation),
            }
        )
    elif isinstance(module, nn.MaxPool2d):
        row.update(kernel=str(module.kernel_size), stride=_scalar(module.stride))
    elif isinstance(module, nn.Upsample):
        row.update(kernel=f"x{module.scale_factor} {module.mode}")
    return row


def layer_rows(model: nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """One row per leaf-layer call for input ``x``, in call order (a layer called twice appears twice)."""
    return [describe_layer(name, module, output) for name, module, output in forward_outputs(model, x)]


def run_layer_rows(run: TrainedRun, model: str, split: str) -> list[dict[str, Any]]:
    """The layer rows of the run's ``model`` in evaluation mode, for two images of ``split`` as
    the task feeds them to the network."""
    with run.evaluating():
        return layer_rows(run.unwrap(model), network_input(run, first_batch(run, split, count=2)))


TABLE_COLUMNS = ["name", "layer", "in", "filters", "kernel", "stride", "padding", "dilation", "output", "params"]


def write_layer_table(rows: Sequence[dict[str, Any]], base: Path, title: str) -> dict[str, str]:
    """The rows with a tensor output as ``base``.md/.csv/.png, numbered, shapes as CxHxW."""
    shown = [dict(r, output="x".join(map(str, r["output"]))) for r in rows if isinstance(r["output"], tuple)]
    body = [[i, *[r[c] for c in TABLE_COLUMNS]] for i, r in enumerate(shown, 1)]
    return write_table(["#", *TABLE_COLUMNS], body, base, title)


def keras_shape(shape: Any) -> str:
    """``[-1, C, H, W]`` as Keras prints a shape (``-1``: any batch size)."""
    if isinstance(shape, tuple):
        return str([-1, *shape])
    if isinstance(shape, list):
        return ", ".join(keras_shape(s) for s in shape)
    return shape


def summary_text(rows: Sequence[dict[str, Any]], total: int, trainable: int, title: str) -> str:
    """The rows as Keras' ``model.summary()`` prints them: layer, type, output shape, parameters,
    then the parameter totals."""
    header = ["Layer", "Type", "Output shape", "Param #"]
    cells = [[r["name"], r["type"], keras_shape(r["output"]), r["params"]] for r in rows]
    widths = [max(len(str(r[i])) for r in [header, *cells]) for i in range(4)]
    line = "-" * (sum(widths) + 6)

    def fmt(r: Sequence[Any]) -> str:
        return "  ".join(str(v).ljust(w) if i < 3 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))

    body = [
        title,
        line,
        fmt(header),
        line,
        *[fmt(r) for r in cells],
        line,
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
    ]
    return "\n".join(body) + "\n"
