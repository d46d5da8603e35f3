"""The count VAE (scVI-class) as pure functions: the Flax module (``_module.py``), host-side initialisation
(``_init.py``), the per-step noise (``_noise.py``), the observation models (``_observation.py``: one object per likelihood), encode / decode / prior / sample (``_apply.py``) and the
objectives (``_objective.py``: ELBO terms, training and validation losses, IWAE bound). The user class over them is
:class:`genjax.VAE`.
"""

from ._apply import vae_decode as vae_decode
from ._apply import vae_encode as vae_encode
from ._apply import vae_prior as vae_prior
from ._apply import vae_sample_counts as vae_sample_counts
from ._init import dummy_batch as dummy_batch
from ._init import vae_init as vae_init
from ._module import VAE_DISPERSIONS as VAE_DISPERSIONS
from ._module import VAE_LIKELIHOODS as VAE_LIKELIHOODS
from ._module import VAEModule as VAEModule
from ._module import check_vae_module as check_vae_module
from ._noise import draw_noise as draw_noise
from ._noise import normal_from_bits as normal_from_bits
from ._objective import VAE_OBJECTIVES as VAE_OBJECTIVES
from ._objective import gaussian_kl as gaussian_kl
from ._objective import make_vae_eval_loss as make_vae_eval_loss
from ._objective import make_vae_loss as make_vae_loss
from ._objective import vae_elbo_terms as vae_elbo_terms
from ._objective import vae_iwae_log_likelihood as vae_iwae_log_likelihood
from ._objective import vae_iwae_log_weights as vae_iwae_log_weights
from ._objective import vae_kl_weight as vae_kl_weight
from ._objective import vae_reconstruction_log_lik as vae_reconstruction_log_lik
from ._observation import OBSERVATION_MODELS as OBSERVATION_MODELS
from ._observation import ObservationModel as ObservationModel
from ._observation import observation_model as observation_model
