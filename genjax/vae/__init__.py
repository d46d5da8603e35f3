"""The count VAE as pure functions: Flax module, initialisation, objectives."""

from ._module import *  # noqa: F403
