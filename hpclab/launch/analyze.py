"""Run one analysis again on a finished (or interrupted) run, with new arguments: e.g. the
favourites you chose after looking at ``candidates.png``, or FID once its weights are staged.

The run's own config rebuilds the trainer; the newest checkpoint is loaded, then the best
weights when the run kept any (as after training). The result is merged into ``summary.json``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from hpclab.config import ConfigError, load_run_config
from hpclab.utils import read_json, write_json

if TYPE_CHECKING:
    from hpclab.engine import Trainer


@contextmanager
def trained(run_dir: Path | str) -> Iterator["Trainer"]:
    """The trainer of a run folder with its weights as after training: the newest readable
    checkpoint (step, best-so-far), then the best weights when the run kept any."""
    from hpclab.engine import Trainer
    from hpclab.launch.job import setup_logging

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)  # a missing or damaged config: one line
    setup_logging()
    trainer = Trainer(cfg, run_dir)
    try:
        resumed = trainer.resume()
        if not trainer.load_best() and not resumed:
            raise ConfigError(f"{run_dir} has no trained weights (no readable checkpoint); train it first")
        yield trainer
    finally:
        trainer.close()


def analyze_run(run_dir: Path | str, name: str, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    from hpclab.analysis import ANALYSES

    run_dir = Path(run_dir)
    if name not in ANALYSES:
        raise ConfigError(f"unknown analysis '{name}' (known: {', '.join(sorted(ANALYSES))})")
    with trained(run_dir) as trainer:
        try:
            result = ANALYSES[name](trainer, run_dir / "figures", **(kwargs or {}))
        except (TypeError, ValueError) as exc:  # bad argument names or values
            raise ConfigError(f"analysis {name}: {str(exc).splitlines()[0]}") from None
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = read_json(summary_path)
        summary.setdefault("analyses", {})[name] = result
        write_json(summary_path, summary)
    return result
