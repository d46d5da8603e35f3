"""Count likelihoods: NB / ZINB / Poisson log-pmfs and variates (float32-accurate), numpyro distributions."""

from ._distributions import *  # noqa: F403
from ._log_prob import *  # noqa: F403
