"""Flax building blocks: conditions, embeddings, MLP trunks and the field network."""

from ._blocks import *  # noqa: F403
from ._blocks import __all__  # noqa: F401
