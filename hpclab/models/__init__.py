"""Model families; each module registers its classes with ``@MODELS.register(name)``.

Constructors may take ``in_channels``, ``image_size`` and ``num_classes``: the engine fills
those from the dataset, so configs state only architecture choices.
"""

from hpclab.registry import Registry

MODELS = Registry("model", __name__)
