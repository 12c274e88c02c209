"""What a batch means (reconstruct, denoise, classify, ...): one class per task in this package."""

from hpclab.registry import Registry

TASKS = Registry("task", __name__)
