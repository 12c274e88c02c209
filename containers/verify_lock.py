#!/usr/bin/env python
"""Check that an environment holds exactly the pins of constraints.txt, no more and no fewer.

usage: python containers/verify_lock.py [--constraints FILE] [--path SITE_DIR ...]

The image build runs this after installing, so a package that the lock forgot (pip then picks
whatever version is newest) fails the build instead of slipping in unpinned. The project
itself and the base image's bootstrap tools (pip, wheel) are not part of the lock.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

NOT_LOCKED = {"hpclab", "pip", "wheel"}


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                raise SystemExit(f"error: {path}: '{line}' is not an exact pin (name==version)")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def installed(paths: list[str] | None) -> dict[str, str]:
    dists = metadata.distributions(path=paths) if paths else metadata.distributions()
    return {canonicalize_name(d.metadata["Name"]): d.version for d in dists if d.metadata["Name"]}


def differences(pins: dict[str, str], have: dict[str, str]) -> list[str]:
    """One line per package whose installed state differs from the lock."""
    problems = []
    for name in sorted(set(pins) | set(have)):
        if name in NOT_LOCKED:
            continue
        want, got = pins.get(name), have.get(name)
        if want is None:
            problems.append(f"{name}=={got} is installed but not pinned in the lock")
        elif got is None:
            problems.append(f"{name}=={want} is pinned but not installed")
        elif got != want:
            problems.append(f"{name} is {got}, the lock pins {want}")
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--constraints", type=Path, default=Path(__file__).resolve().parent.parent / "constraints.txt")
    parser.add_argument("--path", action="append", help="site directory to inspect (default: this interpreter's)")
    args = parser.parse_args(argv)
    pins = read_pins(args.constraints)
    problems = differences(pins, installed(args.path))
    for line in problems:
        print(f"lock mismatch: {line}", file=sys.stderr)
    if problems:
        print(
            f"error: the environment differs from {args.constraints} in {len(problems)} package(s); "
            "regenerate it with scripts/freeze_constraints.py",
            file=sys.stderr,
        )
        return 1
    print(f"environment matches {args.constraints}: {len(pins)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
