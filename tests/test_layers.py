"""The package's dependencies point one way: each layer imports only the layers below it, and
no modules import each other in a cycle.

Lowest first. A module may import its own layer and any layer listed before it, at module
level or inside a function alike (a function-level import does not make an upward import
acceptable); imports for type annotations only (``if TYPE_CHECKING:``) are exempt.
"""

from __future__ import annotations

import ast

from conftest import REPO

LAYERS = [
    "hpclab.errors",  # the exceptions every layer raises
    "hpclab.utils",  # atomic writes, JSON, environment facts
    "hpclab.rundir",  # the run folder: its layout, validated readers, the run lock
    "hpclab.registry",  # name -> class registries and their signature checks
    "hpclab.weights",  # staged pretrained weights
    "hpclab.data",  # sources, HDF5 staging, loaders
    "hpclab.models",
    "hpclab.tasks",  # what a batch means: losses and metrics
    "hpclab.optim",  # optimizer and learning-rate schedule registries (the config checks their names)
    "hpclab.config",  # schema, composition, validation against the registries
    "hpclab.engine",  # build, step, checkpoint, log, evaluate, the training loop
    "hpclab.analysis",  # what runs after training, reports and figures
    "hpclab.launch",  # local runs, SLURM arrays, containers
]


def layer_of(module: str) -> int:
    parts = module.split(".")
    name = ".".join(parts[:2])
    if name not in LAYERS:
        raise AssertionError(f"{module}: not in a layer; add its package to LAYERS in {__file__}")
    return LAYERS.index(name)


def hpclab_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every ``hpclab`` import outside ``if TYPE_CHECKING:`` blocks."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return [(line, m) for line, m in found if m == "hpclab" or m.startswith("hpclab.")]


def test_no_module_imports_a_higher_layer():
    upward = []
    files = sorted((REPO / "hpclab").rglob("*.py"))
    assert len(files) > 30
    for path in files:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        if module == "hpclab":
            continue
        own = layer_of(module)
        for line, imported in hpclab_imports(ast.parse(path.read_text(), str(path))):
            if imported != "hpclab" and layer_of(imported) > own:
                upward.append(f"{path.relative_to(REPO)}:{line}: {module} imports {imported}")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_the_check_itself_sees_function_level_imports_and_skips_type_checking_ones():
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hpclab.engine import Trainer\n"
        "def f():\n    from hpclab.launch.slurm import requeue_job\n"
    )
    assert hpclab_imports(ast.parse(source)) == [(5, "hpclab.launch.slurm")]
    assert layer_of("hpclab.launch.slurm") > layer_of("hpclab.engine") > layer_of("hpclab.errors")


def import_graph() -> dict[str, set[str]]:
    """Module -> the hpclab modules it imports (at any level, as in the layer test); ``from
    package import name`` counts as importing the package, or the submodule ``name`` is one."""
    files = {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (REPO / "hpclab").rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        deps = set()
        for _, imported in hpclab_imports(ast.parse(path.read_text(), str(path))):
            parts = imported.split(".")
            while parts and ".".join(parts) not in files:
                parts.pop()
            deps.add(".".join(parts))
        graph[module] = deps - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of two or more modules."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        for dep in graph.get(node, ()):
            if dep not in order:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], order[dep])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return found


def test_no_import_cycles():
    graph = import_graph()
    assert "hpclab.engine.build" in graph["hpclab.engine.trainer"]
    assert not cycles(graph), "import cycles (each a set of modules that import each other):\n" + "\n".join(
        " <-> ".join(c) for c in cycles(graph)
    )


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
