"""Post-training studies and figures; each module registers functions with ``@ANALYSES.register``.

An analysis is ``fn(run, out_dir, **kwargs) -> dict`` run on the main process after
training with the best weights loaded; it writes PNG figures (and arrays) under the run's
``figures/`` and returns numbers that go into ``summary.json``.
"""

from hpclab.registry import Registry

ANALYSES = Registry("analysis", __name__)
