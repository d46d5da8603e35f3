"""User classes: VAE, latent priors, LatentGenerator."""

from ._latent_generator import *  # noqa: F403
from ._latent_prior import *  # noqa: F403
from ._vae import *  # noqa: F403
