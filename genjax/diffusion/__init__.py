"""Score-based diffusion: SDEs, score parameterisations, denoising score matching."""

from ._score import *  # noqa: F403
from ._sde import *  # noqa: F403
