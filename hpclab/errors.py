"""The suite's user-facing errors, below every other module so that any layer can raise them.

Each message is one line that names the bad key, file or folder and the command that fixes
it; the jobs/ entry points print it and exit 2 (``hpclab.launch.cli.main_guard``).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is one line."""


class DataMissing(FileNotFoundError):
    """No usable prepared file and no usable source; the message says how to stage the data."""


class WeightsMissing(FileNotFoundError):
    """Pretrained weights are not staged (or corrupt); the message names the staging command."""


class RunConflict(RuntimeError):
    """The run folder already holds results of a different config (or a damaged record)."""


class RunLocked(RuntimeError):
    """Another live process owns the run folder; the message names it."""


class RunFolderError(OSError):
    """The run folder cannot be written (permissions, read-only or full file system)."""


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, permissions); older ones are kept."""


class RankLost(RuntimeError):
    """A data-parallel rank lost its peers (one died, or hung past cluster.collective_timeout_s);
    the newest checkpoint is kept and a resubmission resumes from it."""


class Preempted(Exception):
    """A stop signal arrived; the checkpoint is written and the same command resumes."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DataMissing,
    WeightsMissing,
    RunConflict,
    RunLocked,
    RunFolderError,
    NonFiniteLoss,
    CheckpointWriteError,
)
