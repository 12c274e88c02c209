"""Shared command-line plumbing of the jobs/ entry points: help text and one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from hpclab.config import CONFIG_DIR, ConfigError


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def groups_help() -> str:
    lines = []
    for group in ("experiment", "sweep", "data", "model", "task", "cluster", "preset"):
        lines.append(f"  {group + '=':<12} {', '.join(group_options(group))}")
    return "\n".join(lines)


def doc_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose help is a script's docstring: the first line as description,
    the rest (usage examples) verbatim after the options."""
    return argparse.ArgumentParser(description=doc.splitlines()[0], epilog=doc.split("\n\n", 1)[1],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def user_errors() -> tuple[type[BaseException], ...]:
    from hpclab.data.prepare import DataMissing
    from hpclab.engine import NonFiniteLoss
    from hpclab.launch.job import RunConflict
    from hpclab.weights import WeightsMissing

    return (ConfigError, DataMissing, RunConflict, NonFiniteLoss, WeightsMissing)


def main_guard(main: Callable[[list[str]], int]) -> None:
    """Run ``main(argv)``; expected failures print one line on stderr and exit non-zero."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        code = main(sys.argv[1:])
    except user_errors() as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # output piped into head & co.
        code = 0
    sys.exit(code)
