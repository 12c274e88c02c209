"""hpclab: classic deep-learning image experiments as reproducible batch jobs."""

__version__ = "0.1.0"
