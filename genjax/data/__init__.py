"""Data layer: AnnData / CSR / backed matrices, validation, the registry of what a model was trained on, batch
sources, and the bundled / synthetic data sets (``genjax.data.datasets``)."""

from . import datasets  # noqa: F401
from ._matrix import *  # noqa: F403
