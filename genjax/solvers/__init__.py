"""diffrax samplers and exact likelihoods."""

from ._diffusion import *  # noqa: F403
from ._flow import *  # noqa: F403
