"""genjax: JAX/Flax generative models of gene-expression counts.

Layers (lower never imports higher): likelihoods -> nn blocks -> models (vae, sde, score, flow) -> solvers
(sampling) -> training -> data -> pipelines -> metrics / plots / report -> cli. The public API is re-exported
here by name; the private modules hold one concept each.
"""

from . import datasets, metrics, nn, plots, report  # noqa: F401
from ._checkpoint import *  # noqa: F403
from ._data import *  # noqa: F403
from ._distributed import *  # noqa: F403
from ._distributions import *  # noqa: F403
from ._flow import *  # noqa: F403
from ._flow_sampling import *  # noqa: F403
from ._guidance import *  # noqa: F403
from ._likelihoods import *  # noqa: F403
from ._pipeline import *  # noqa: F403
from ._prior import *  # noqa: F403
from ._sampling import *  # noqa: F403
from ._score import *  # noqa: F403
from ._sde import *  # noqa: F403
from ._train import *  # noqa: F403
from ._vae import *  # noqa: F403
from ._vae_model import *  # noqa: F403

__version__ = "0.1.0"
