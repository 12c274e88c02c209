#!/usr/bin/env python
"""Write constraints.txt: exact versions of hpclab's dependency closure in this environment.

Run after changing dependencies in pyproject.toml; CI and the container install with it.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str]) -> dict[str, str]:
    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = dist.version
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            marker_ok = True
            if ";" in req:
                from packaging.markers import Marker

                marker_ok = Marker(req.split(";", 1)[1]).evaluate()
            if marker_ok:
                todo.append(re.split(r"[ ;<>=!~\[(]", req.strip(), maxsplit=1)[0])
    return seen


def main() -> int:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = [re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0] for r in project["dependencies"]]
    roots += [re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0] for r in project["optional-dependencies"]["dev"]]
    pins = closure(roots)
    pins.pop("hpclab", None)
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    header = "# Exact versions of hpclab's dependency closure (scripts/freeze_constraints.py).\n"
    (ROOT / "constraints.txt").write_text(header + "\n".join(lines) + "\n")
    print(f"constraints.txt: {len(lines)} pins", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
