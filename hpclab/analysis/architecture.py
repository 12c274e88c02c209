"""Architecture graphs of a run's model: a torch.fx trace written as Graphviz DOT (render it
with ``dot -Tpng``) and drawn as a layered PNG with matplotlib, plus an ONNX export when the
``onnx`` package is installed. The per-layer tables (filters, sizes, strides, padding, output
shapes) are built in ``hpclab.analysis.layers``; ``conv_summary`` gives the one-line version
used in result tables.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpclab.analysis import ANALYSES
from hpclab.engine.evaluation import TrainedRun
from hpclab.utils import atomic_path, atomic_write_text

log = logging.getLogger("hpclab")


def _spec(module: nn.Module) -> str:
    """``32@3x3/s1/p1`` for a conv (``T`` marks a transposed one), ``Linear 128`` for a dense layer."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        k, s, p = module.kernel_size, module.stride, module.padding
        kind = "T" if isinstance(module, nn.ConvTranspose2d) else ""
        return f"{kind}{module.out_channels}@{k[0]}x{k[1]}/s{s[0]}/p{p[0] if isinstance(p, tuple) else p}"
    if isinstance(module, nn.Linear):
        return f"FC{module.out_features}"
    return ""


def _collapse(parts: list[str]) -> list[str]:
    """Runs of identical entries as ``Nx entry``."""
    groups: list[list[Any]] = []
    for part in parts:
        if groups and groups[-1][0] == part:
            groups[-1][1] += 1
        else:
            groups.append([part, 1])
    return [f"{n}x {p}" if n > 1 else p for p, n in groups]


def _describe(module: nn.Module) -> list[str]:
    spec = _spec(module)
    if spec:
        return [spec]
    branches = getattr(module, "branches", None)
    if isinstance(branches, nn.ModuleList):  # parallel paths, concatenated
        return ["{" + "; ".join(", ".join(_collapse(_describe(b))) for b in branches) + "}"]
    if hasattr(module, "entry") and hasattr(module, "body"):  # residual: entry, then body + skip
        return _describe(module.entry) + ["skip(" + ", ".join(_collapse(_describe(module.body))) + ")"]
    return [p for child in module.children() for p in _describe(child)]


def conv_summary(model: nn.Module) -> str:
    """Conv and dense layers in definition order, runs of identical layers collapsed, parallel
    branches in ``{a; b}`` (no '|': the string goes into Markdown tables) and residual bodies
    in ``skip(...)``:
    ``2x 32@3x3/s1/p1, ..., FC128, FC10`` (filters@kernel/stride/padding)."""
    return ", ".join(_collapse(_describe(model)))


def fx_graph(model: nn.Module) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Nodes (id, label) and edges of the model's dataflow graph at leaf-module level."""
    from torch.fx import symbolic_trace

    traced = symbolic_trace(model)
    nodes, edges = [], []
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            label = f"input {node.name}"
        elif node.op == "output":
            label = "output"
        elif node.op == "call_module":
            module = traced.get_submodule(node.target)
            spec = _spec(module)
            label = f"{node.target}\n{type(module).__name__}{' ' + spec if spec else ''}"
        elif node.op == "get_attr":
            continue
        else:
            target = getattr(node.target, "__name__", str(node.target))
            label = f"{target}"
        nodes.append((node.name, label))
        edges += [(arg.name, node.name) for arg in node.all_input_nodes if arg.op != "get_attr"]
    keep = {n for n, _ in nodes}
    return nodes, [(a, b) for a, b in edges if a in keep and b in keep]


def hook_chain(model: nn.Module, x: torch.Tensor) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Fallback when fx cannot trace (data-dependent Python control flow): leaf modules in
    call order as a chain."""
    from hpclab.analysis.hooks import forward_outputs

    order = [
        (name.replace(".", "_") or "model", f"{name}\n{type(mod).__name__} {_spec(mod)}".strip())
        for name, mod, _ in forward_outputs(model, x)
    ]
    nodes = [("input", "input")] + order + [("output", "output")]
    return nodes, [(a[0], b[0]) for a, b in zip(nodes[:-1], nodes[1:])]


def to_dot(nodes: list[tuple[str, str]], edges: list[tuple[str, str]], title: str) -> str:
    def quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = [f"digraph {quote(title)} {{", "  rankdir=TB; node [shape=box, fontsize=10];"]
    lines += [f"  {quote(n)} [label={quote(label)}];" for n, label in nodes]
    lines += [f"  {quote(a)} -> {quote(b)};" for a, b in edges]
    return "\n".join(lines + ["}"]) + "\n"


def draw(nodes: list[tuple[str, str]], edges: list[tuple[str, str]], path: Path, title: str) -> Path:
    """A layered drawing: each node one row below its deepest input; parallel branches side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hpclab.analysis.figures import save_figure

    parents = defaultdict(list)
    for a, b in edges:
        parents[b].append(a)
    depth: dict[str, int] = {}
    for name, _ in nodes:  # fx nodes are in topological order
        depth[name] = 1 + max((depth[p] for p in parents[name] if p in depth), default=-1)
    rows: dict[int, list[str]] = defaultdict(list)
    for name, _ in nodes:
        rows[depth[name]].append(name)
    width = max(max(len(r) for r in rows.values()), 2)
    pos = {name: ((i + 0.5) * width / len(row), -d) for d, row in rows.items() for i, name in enumerate(row)}
    labels = dict(nodes)
    fig, ax = plt.subplots(figsize=(max(4.0, 2.6 * width), max(3.0, 0.62 * len(rows))))
    for a, b in edges:
        skip = depth[b] - depth[a] > 1 and abs(pos[a][0] - pos[b][0]) < 1e-6  # would hide behind the chain
        ax.annotate(
            "",
            xy=pos[b],
            xytext=pos[a],
            arrowprops=dict(
                arrowstyle="->",
                color="#c0392b" if skip else "0.5",
                lw=0.8,
                shrinkA=9,
                shrinkB=9,
                connectionstyle="arc3,rad=-0.35" if skip else "arc3",
            ),
        )
    for name, (x, y) in pos.items():
        ax.text(
            x,
            y,
            labels[name],
            ha="center",
            va="center",
            fontsize=6,
            bbox=dict(boxstyle="round,pad=0.25", fc="#e8f0fb", ec="#4a6fa5", lw=0.6),
        )
    ax.set_xlim(0, width)
    ax.set_ylim(-max(rows) - 0.6, 0.6)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def example_input(run: TrainedRun, batch_size: int = 2) -> torch.Tensor:
    info = run.data.info
    return torch.rand(batch_size, info.in_channels, info.image_size, info.image_size, device=run.device)


@ANALYSES.register("arch_graph")
def arch_graph(run: TrainedRun, out_dir: Path, model: str = "model", png: bool = True) -> dict[str, Any]:
    """``architecture_<model>.dot`` (+ ``.png``; ``.onnx`` when onnx is installed) and a
    one-line conv summary for the result tables."""
    net = run.unwrap(model)
    x = example_input(run)
    with run.evaluating():
        try:
            nodes, edges = fx_graph(net)
            how = "torch.fx"
        except Exception as exc:  # fx refuses Python control flow on tensor values
            log.info("fx could not trace %s (%s); drawing the call chain instead", type(net).__name__, exc)
            nodes, edges = hook_chain(net, x)
            how = "forward hooks (call order)"
        title = f"{run.cfg.run_name}: {type(net).__name__} ({how})"
        out: dict[str, Any] = {"graph_from": how, "nodes": len(nodes), "summary": conv_summary(net)}
        dot = out_dir / f"architecture_{model}.dot"
        atomic_write_text(dot, to_dot(nodes, edges, title))
        out["dot"] = str(dot)
        if png:
            out["png"] = str(draw(nodes, edges, out_dir / f"architecture_{model}.png", title))
        try:
            import onnx  # noqa: F401
        except ImportError:
            pass
        else:
            onnx_path = out_dir / f"architecture_{model}.onnx"
            try:
                with atomic_path(onnx_path) as tmp:
                    torch.onnx.export(net, (x,), str(tmp))
                out["onnx"] = str(onnx_path)
            except Exception as exc:  # exporter extras (onnxscript) missing, unsupported op
                log.warning(
                    "ONNX export of %s failed: %s", type(net).__name__, str(exc).splitlines()[0] if str(exc) else exc
                )
    return out
