"""User classes over the pure functions (scvi-tools' ``model/`` idea, by composition).

* the shared base (``_base.py``): :class:`SavedModel` (one saved-model format), :class:`TrainingCells` (what new
  cells draw unrequested conditions and library sizes from), :class:`NoMatchingCellsError`;
* :class:`VAE` (``_vae.py``, options in :class:`VAEConfig`, ``_vae_config.py``): the count VAE on an AnnData
  (fit, latent, generate, counterfactual, save / load), with scvi-tools' vocabulary (``batch_key``, ``train``,
  ``get_latent_representation``, ``get_normalized_expression``, ...; :func:`resolve_scvi_aliases`) and its
  training history (:class:`TrainingHistory`, ``_history.py``: per-epoch records that also read as scvi-tools'
  dict of DataFrames);
* model-based differential expression (``_differential.py``): :func:`differential_expression` (scvi-tools'
  vanilla and change modes) and its tests on posterior samples;
* query mapping (``_query.py``): :func:`load_query_data` (scArches architecture surgery), :class:`QueryVAE`;
* latent priors (``_latent_prior.py``): :class:`DiffusionPrior`, :class:`FlowPrior`, :func:`fit_prior`;
* :class:`LatentGenerator` (``_latent_generator.py``): a VAE plus a conditional diffusion or flow prior on its
  latents;
* :class:`PerturbationModel` (``_perturbation.py``): cells under perturbations never measured, from a count VAE and
  a latent response model (:class:`LatentResponse`, ``_perturbation_response.py``) and the task baseline as its
  offset (:class:`BaselineOffset`, :func:`match_log1p_mean`, ``_perturbation_offset.py``);
* :class:`HybridModel` (``_hybrid.py``): any mean predictor plus a generative residual model of counts, with
  calibrated per-gene intervals;
* intervals with guarantees (``_conformal.py``): integer count intervals with their mass, split-conformal and
  jackknife+ over conditions, conformalised quantiles per expression bin;
* perturbation baselines (``_perturbation_baselines.py``): :class:`PerturbationBaseline` and the references of
  every table (no change, control / non-control / matching mean, additive, mean delta, linear), by name in
  :data:`BASELINES`.
"""

from ..training import zero_frozen_updates as zero_frozen_updates
from ._base import NoMatchingCellsError as NoMatchingCellsError
from ._base import SavedModel as SavedModel
from ._base import TrainingCells as TrainingCells
from ._condition_regressor import ConditionRegressor as ConditionRegressor
from ._conformal import conformal_quantile as conformal_quantile
from ._conformal import conformalized_quantiles as conformalized_quantiles
from ._conformal import count_interval as count_interval
from ._conformal import jackknife_plus as jackknife_plus
from ._conformal import sample_interval as sample_interval
from ._conformal import split_conformal as split_conformal
from ._differential import DEMode as DEMode
from ._differential import DETestMode as DETestMode
from ._differential import change_mode_test as change_mode_test
from ._differential import differential_expression as differential_expression
from ._differential import estimate_delta as estimate_delta
from ._differential import estimate_pseudocounts as estimate_pseudocounts
from ._differential import fdr_selection as fdr_selection
from ._differential import log_fold_changes as log_fold_changes
from ._differential import vanilla_mode_test as vanilla_mode_test
from ._history import SCVI_HISTORY_KEYS as SCVI_HISTORY_KEYS
from ._history import TrainingHistory as TrainingHistory
from ._hybrid import RESIDUAL_MODELS as RESIDUAL_MODELS
from ._hybrid import HybridModel as HybridModel
from ._latent_generator import LatentGenerator as LatentGenerator
from ._latent_prior import PRIOR_FAMILIES as PRIOR_FAMILIES
from ._latent_prior import AbstractLatentPrior as AbstractLatentPrior
from ._latent_prior import DiffusionPrior as DiffusionPrior
from ._latent_prior import FlowPrior as FlowPrior
from ._latent_prior import fit_prior as fit_prior
from ._latent_prior import load_prior as load_prior
from ._latent_prior import sample_prior as sample_prior
from ._perturbation import PERTURBATION_METHODS as PERTURBATION_METHODS
from ._perturbation import PerturbationModel as PerturbationModel
from ._perturbation_baselines import BASELINES as BASELINES
from ._perturbation_baselines import Additive as Additive
from ._perturbation_baselines import ControlMean as ControlMean
from ._perturbation_baselines import LinearBaseline as LinearBaseline
from ._perturbation_baselines import MatchingMean as MatchingMean
from ._perturbation_baselines import MeanDelta as MeanDelta
from ._perturbation_baselines import NoChange as NoChange
from ._perturbation_baselines import NonControlMean as NonControlMean
from ._perturbation_baselines import PerturbationBaseline as PerturbationBaseline
from ._perturbation_flow import LatentFlowResponse as LatentFlowResponse
from ._perturbation_offset import BaselineOffset as BaselineOffset
from ._perturbation_offset import binomial_quantile as binomial_quantile
from ._perturbation_offset import match_log1p_mean as match_log1p_mean
from ._perturbation_offset import poisson_quantile as poisson_quantile
from ._perturbation_response import LatentResponse as LatentResponse
from ._query import QUERY_INITS as QUERY_INITS
from ._query import QueryVAE as QueryVAE
from ._query import load_query_data as load_query_data
from ._vae import VAE as VAE
from ._vae import VAEFunctions as VAEFunctions
from ._vae_config import SCVI_LIKELIHOODS as SCVI_LIKELIHOODS
from ._vae_config import VAEConfig as VAEConfig
from ._vae_config import resolve_scvi_aliases as resolve_scvi_aliases
