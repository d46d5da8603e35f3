"""genjax: JAX/Flax generative models of gene-expression counts.

Layers (lower never imports higher): data -> likelihoods -> nn -> vae, diffusion, flow -> fields -> solvers ->
training -> models -> evaluation -> cli. Each layer is a subpackage.
"""

from . import data, datasets, evaluation, metrics, nn, plots, report  # noqa: F401
from .data import *  # noqa: F403
from .diffusion import *  # noqa: F403
from .fields import *  # noqa: F403
from .flow import *  # noqa: F403
from .likelihoods import *  # noqa: F403
from .models import *  # noqa: F403
from .solvers import *  # noqa: F403
from .training import *  # noqa: F403
from .vae import *  # noqa: F403

__version__ = "0.1.0"
