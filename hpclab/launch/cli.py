"""Shared command-line plumbing of the jobs/ entry points: help text and one-line errors."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import threading
from collections.abc import Callable

from hpclab.config import CONFIG_DIR
from hpclab.errors import USER_ERRORS, Preempted, RankLost


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def groups_help() -> str:
    lines = []
    for group in ("experiment", "sweep", "data", "model", "task", "cluster", "preset"):
        lines.append(f"  {group + '=':<12} {', '.join(group_options(group))}")
    return "\n".join(lines)


def doc_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose help is a script's docstring: the first paragraph (a sentence
    may run over several lines) as description, the rest (usage examples) verbatim after the
    options."""
    first, _, rest = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(
        description=" ".join(first.split()), epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )


# Exit codes of the jobs/ entry points (docs/runs.md, "Exit codes").
EXIT_USER_ERROR = 2  # bad input, missing data, a run folder in use or with another config
EXIT_STOPPED = 3  # stopped by SIGTERM/SIGUSR2 after a checkpoint: the same command resumes
EXIT_RANK_LOST = 4  # a data-parallel rank lost its peers (one died or hung): resubmit to resume
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _thread_write_errors(args: threading.ExceptHookArgs) -> None:
    """A background writer (TensorBoard's event thread) that hits a full or read-only disk says
    so in one line; the main thread's own write then stops the command (see main_guard)."""
    if isinstance(args.exc_value, OSError) and args.exc_value.errno in WRITE_ERRNOS:
        print(f"warning: {args.thread.name if args.thread else 'a thread'}: {args.exc_value.strerror}", file=sys.stderr)
    else:
        threading.__excepthook__(args)


def main_guard(main: Callable[[list[str]], int]) -> None:
    """Run ``main(argv)``; expected failures print one line on stderr and exit non-zero."""
    # the suite's own INFO lines; other libraries (TensorBoard's event reader, accelerate, ...) only
    # from WARNING on, so run logs stay the run's
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("hpclab").setLevel(logging.INFO)
    threading.excepthook = _thread_write_errors
    try:
        code = main(sys.argv[1:])
    except USER_ERRORS as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except Preempted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        code = EXIT_STOPPED
    except RankLost as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_RANK_LOST
    except BrokenPipeError:  # output piped into head & co.
        code = 0
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"error: could not write{where}: {exc.strerror}; files are written whole or not at all, so free "
            f"space (or fix permissions) and run the same command again",
            file=sys.stderr,
        )
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
