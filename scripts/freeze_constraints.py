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


def closure(requirements: list[str]) -> dict[str, str]:
    """Installed versions of ``requirements`` and everything they pull in, extras included.

    A dependent can ask for extras (torch needs ``cuda-toolkit[cublas,cudart,...]``); their
    requirements are followed too, each marker evaluated with the requested extras, so the
    lock holds everything pip installs and nothing floats.
    """
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if (name, frozenset(req.extras)) in done:
            continue
        done.add((name, frozenset(req.extras)))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = dist.version
        environments = [{"extra": extra} for extra in req.extras] or [{"extra": ""}]
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate(env) for env in environments):
                todo.append(sub)
    return seen


def main() -> int:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = closure(project["dependencies"] + project["optional-dependencies"]["dev"])
    pins.pop("hpclab", None)
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    header = "# Exact versions of hpclab's dependency closure (scripts/freeze_constraints.py).\n"
    (ROOT / "constraints.txt").write_text(header + "\n".join(lines) + "\n")
    print(f"constraints.txt: {len(lines)} pins", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
