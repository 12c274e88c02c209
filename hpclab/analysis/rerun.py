"""Run one analysis again on a finished (or interrupted) run, with new arguments: e.g. the
favourites you chose after looking at ``candidates.png``, or FID once its weights are staged.

The run's own config rebuilds its data, task and models (no optimizers); the newest checkpoint
is loaded, then the best weights when the run kept any (as after training). The result is
merged into ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hpclab.analysis import ANALYSES
from hpclab.config import ConfigError, load_run_config
from hpclab.engine import TrainedRun, load_trained
from hpclab.rundir import FIGURES, SUMMARY, read_summary
from hpclab.utils import setup_logging, write_json


@contextmanager
def trained(run_dir: Path | str) -> Iterator[TrainedRun]:
    """The run in ``run_dir`` with its weights as after training (see :func:`load_trained`),
    holding the run's lock throughout, so a re-run of it (force=true) cannot replace its
    weights or results under an analysis."""
    from hpclab.rundir.lock import run_lock

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)  # a missing or damaged config: one line
    setup_logging()
    with run_lock(run_dir), load_trained(cfg, run_dir) as run:
        yield run


def analyze_run(run_dir: Path | str, name: str, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run analysis ``name`` on the run in ``run_dir`` and merge its result into summary.json."""
    run_dir = Path(run_dir)
    analysis = ANALYSES[name]  # an unknown name: one line, before the run is loaded
    with trained(run_dir) as run:
        summary = read_summary(run_dir, strict=True)  # damaged: one line, before any work
        try:
            result = analysis(run, run_dir / FIGURES, **(kwargs or {}))
        except (TypeError, ValueError) as exc:  # bad argument names or values
            raise ConfigError(f"analysis {name}: {str(exc).splitlines()[0]}") from None
        if summary is not None:
            summary.setdefault("analyses", {})[name] = result
            write_json(run_dir / SUMMARY, summary)
    return result
