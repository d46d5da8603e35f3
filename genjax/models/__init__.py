"""User classes over the pure functions (scvi-tools' ``model/`` idea, by composition).

* the shared base (``_base.py``): :class:`SavedModel` (one saved-model format), :class:`TrainingCells` (what new
  cells draw unrequested conditions and library sizes from), :class:`NoMatchingCellsError`;
* :class:`VAE` (``_vae.py``, options in :class:`VAEConfig`, ``_vae_config.py``): the count VAE on an AnnData
  (fit, latent, generate, counterfactual, save / load);
* latent priors (``_latent_prior.py``): :class:`DiffusionPrior`, :class:`FlowPrior`, :func:`fit_prior`;
* :class:`LatentGenerator` (``_latent_generator.py``): a VAE plus a conditional diffusion or flow prior on its
  latents.
"""

from ._base import NoMatchingCellsError as NoMatchingCellsError
from ._base import SavedModel as SavedModel
from ._base import TrainingCells as TrainingCells
from ._latent_generator import LatentGenerator as LatentGenerator
from ._latent_prior import PRIOR_FAMILIES as PRIOR_FAMILIES
from ._latent_prior import AbstractLatentPrior as AbstractLatentPrior
from ._latent_prior import DiffusionPrior as DiffusionPrior
from ._latent_prior import FlowPrior as FlowPrior
from ._latent_prior import fit_prior as fit_prior
from ._latent_prior import load_prior as load_prior
from ._latent_prior import sample_prior as sample_prior
from ._vae import VAE as VAE
from ._vae import VAEFunctions as VAEFunctions
from ._vae_config import VAEConfig as VAEConfig
