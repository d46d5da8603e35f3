"""genjax: JAX/Flax generative models of gene-expression counts.

The folder tree is the architecture; lower layers never import higher ones:

======================  ===========================================================================================
layer                   subpackage
======================  ===========================================================================================
data                    :mod:`genjax.data`: AnnData / CSR / backed matrices, registry, batches, splits, data sets
math                    :mod:`genjax.likelihoods`: NB / ZINB / Poisson log-pmfs and samplers, numpyro distributions
blocks                  :mod:`genjax.nn`: conditions, time embeddings, MLP trunks, the field network
models (pure)           :mod:`genjax.vae`, :mod:`genjax.diffusion`, :mod:`genjax.flow`
fields                  :mod:`genjax.fields`: score, velocity, probability-flow and guided fields; objectives
solvers                 :mod:`genjax.solvers`: diffrax samplers and exact likelihoods
training                :mod:`genjax.training`: the jitted loop, field trainer, checkpoints, data parallelism
applications            :mod:`genjax.models`: VAE, latent priors, LatentGenerator, PerturbationModel, HybridModel
evaluation              :mod:`genjax.evaluation` (aliases :mod:`genjax.metrics`, :mod:`genjax.plots`,
                        :mod:`genjax.report`)
interface               ``genjax.cli``: the ``genjax`` command
======================  ===========================================================================================

The headline names are re-exported here; every other public name lives in its subpackage (and names that were
importable from ``genjax`` before the subpackages existed still resolve here, see ``_MOVED``).
"""

import importlib

from . import data as data
from . import datasets as datasets
from . import diffusion as diffusion
from . import evaluation as evaluation
from . import fields as fields
from . import flow as flow
from . import likelihoods as likelihoods
from . import metrics as metrics
from . import models as models
from . import nn as nn
from . import plots as plots
from . import report as report
from . import solvers as solvers
from . import training as training
from . import vae as vae
from ._version import __version__ as __version__
from .diffusion import VESDE as VESDE
from .diffusion import VPSDE as VPSDE
from .diffusion import SubVPSDE as SubVPSDE
from .fields import ConditionalFlowMatching as ConditionalFlowMatching
from .fields import DenoisingScoreMatching as DenoisingScoreMatching
from .fields import GuidedField as GuidedField
from .fields import ScoreFunction as ScoreFunction
from .fields import VelocityField as VelocityField
from .fields import guided_field as guided_field
from .flow import LinearPath as LinearPath
from .flow import VPPath as VPPath
from .likelihoods import NegativeBinomial as NegativeBinomial
from .likelihoods import ZeroInflatedNegativeBinomial as ZeroInflatedNegativeBinomial
from .likelihoods import nb_log_prob as nb_log_prob
from .likelihoods import nb_log_prob_log as nb_log_prob_log
from .likelihoods import poisson_log_prob as poisson_log_prob
from .likelihoods import poisson_log_prob_log as poisson_log_prob_log
from .likelihoods import sample_nb as sample_nb
from .likelihoods import sample_zinb as sample_zinb
from .likelihoods import zinb_log_prob as zinb_log_prob
from .likelihoods import zinb_log_prob_log as zinb_log_prob_log
from .models import VAE as VAE
from .models import HybridModel as HybridModel
from .models import LatentGenerator as LatentGenerator
from .models import PerturbationModel as PerturbationModel
from .solvers import flow_log_likelihood as flow_log_likelihood
from .solvers import log_likelihood as log_likelihood
from .solvers import sample_flow as sample_flow
from .solvers import sample_predictor_corrector as sample_predictor_corrector
from .solvers import sample_probability_flow_ode as sample_probability_flow_ode
from .solvers import sample_reverse_sde as sample_reverse_sde
from .training import TrainConfig as TrainConfig
from .training import fit as fit
from .training import fit_field as fit_field

# Names importable from ``genjax`` before the subpackages existed: ``name -> (subpackage, name there)``.
_MOVED = {
    **{n: ("data", n) for n in ("CountData", "DataRegistry", "HostSource", "get_matrix", "row_sums",
                                "split_indices", "validate_counts")},
    **{n: ("likelihoods", n) for n in ("nb_mean", "nb_variance", "zinb_mean", "zinb_variance")},
    **{n: ("nn", n) for n in ("call_score", "sample_times")},
    "ScoreNet": ("nn", "FieldNet"),
    "VelocityNet": ("nn", "FieldNet"),
    **{n: ("vae", n) for n in ("VAEModule", "VAE_DISPERSIONS", "VAE_LIKELIHOODS", "make_vae_eval_loss",
                               "make_vae_loss", "vae_decode", "vae_elbo_terms", "vae_encode", "vae_init",
                               "vae_iwae_log_likelihood", "vae_kl_weight", "vae_prior", "vae_reconstruction_log_lik",
                               "vae_sample_counts")},
    **{n: ("diffusion", n) for n in ("AbstractSDE", "CosineSchedule", "LinearSchedule", "PARAMETERISATIONS",
                                     "ReverseSDE", "Schedule", "convert_output", "dsm_loss", "make_dsm_loss")},
    **{n: ("flow", n) for n in ("AbstractPath", "cfm_loss", "condition_groups", "linear_assignment",
                                "make_flow_loss", "ot_coupling")},
    **{n: ("fields", n) for n in ("ProbabilityFlow", "guidance_groups")},
    "time_grid": ("solvers", "time_grid"),
    **{n: ("training", n) for n in ("CheckpointManager", "DATA_AXIS", "FitResult", "TrainState", "atomic_directory",
                                    "fit_flow_model", "fit_score_model", "init_train_state",
                                    "initialize_distributed", "load_pytree", "make_chunk_runner", "make_train_step",
                                    "save_pytree")},
    "ScoreFitResult": ("training", "FieldFit"),
    "FlowFitResult": ("training", "FieldFit"),
    **{n: ("models", n) for n in ("VAEFunctions", "fit_prior", "load_prior", "sample_prior")},
    "PriorModel": ("models", "AbstractLatentPrior"),
}


def __getattr__(name: str):
    """Resolve a name that moved into a subpackage (``genjax.make_chunk_runner`` is
    ``genjax.training.make_chunk_runner``)."""
    if name in _MOVED:
        package, attr = _MOVED[name]
        return getattr(importlib.import_module(f"{__name__}.{package}"), attr)
    raise AttributeError(f"module 'genjax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MOVED))
