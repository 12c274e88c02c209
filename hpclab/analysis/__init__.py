"""Post-training studies and figures; each module registers functions with ``@ANALYSES.register``.

An analysis is ``fn(run, out_dir, **kwargs) -> dict`` run on the main process after
training with the best weights loaded; it writes PNG figures (and arrays) under the run's
``figures/`` and returns numbers that go into ``summary.json``.

Each idea has one module that the analyses share: ``inputs`` (the batches a model is fed),
``figures`` (saving a figure), ``grids`` (image grids; the ``examples`` analysis), ``curves``
(metric curves; the ``curves`` analysis), ``layers`` (per-layer tables), ``probes`` (linear and
MLP probes), ``hooks`` (one forward pass with hooks), ``report`` (result tables, sweep summaries),
``group_tables`` (one table over the runs of a group) and ``publish`` (results documents). The
other modules hold the analyses of one kind of experiment (``latents``, ``image2image``, ``gan``,
``classification``, ``baselines``, ``activations``, ``architecture``, ``fid``).
"""

from hpclab.registry import Registry

ANALYSES = Registry("analysis", __name__)
