"""One forward pass with hooks: what each layer of a model outputs (for layer tables,
architecture graphs and activation figures)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def leaf_names(model: nn.Module) -> list[str]:
    """Named modules without children (the layers that compute), root excluded."""
    return [name for name, module in model.named_modules() if name and not any(True for _ in module.children())]


@torch.no_grad()
def forward_outputs(
    model: nn.Module, x: torch.Tensor, names: Iterable[str] | None = None
) -> list[tuple[str, nn.Module, Any]]:
    """Run ``model(x)`` once with hooks on ``names`` (default: every leaf module) and return
    ``(name, module, output)`` in call order; a module called twice appears twice."""
    modules = dict(model.named_modules())
    calls: list[tuple[str, nn.Module, Any]] = []
    handles = [
        modules[name].register_forward_hook(lambda mod, _inputs, output, name=name: calls.append((name, mod, output)))
        for name in (leaf_names(model) if names is None else names)
    ]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls
