"""Types used in signatures and docstrings: array aliases (jaxtyping, as diffrax ``_custom_types.py``) and the
``Literal`` types of every string option, checked in one place by :func:`genjax._checks.check_choice`.

Shapes are named in words: ``cells``, ``genes``, ``latent``, ``n`` (points), ``dim``. Likelihood arguments are
"broadcastable" and carry no fixed shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

__all__ = [
    "Array", "ArrayLike", "Bool", "Float", "Int", "PRNGKeyArray", "PyTree",
    "Counts", "Points", "Times", "Params", "LossFn", "EvalFn",
    "Likelihood", "CountLikelihood", "Dispersion", "LibraryMode", "LibrarySizes", "Norm", "ComputeDtype",
    "PredictionNoise", "PriorFamily", "Space", "SDEName", "Parameterisation", "Weighting", "Reduction", "TimeSampling",
    "Coupling", "OTMethod", "Divergence", "Brownian", "GridKind", "Statistic",
]

Counts = Float[Array, "cells genes"]
"""Raw counts (non-negative integers stored as float32), cells x genes."""

Points = Float[Array, "n dim"]
"""A batch of points in the space a generative prior models (latents or log-expression)."""

Times = Float[Array, " n"]
"""One diffusion / flow time per point."""

Params = PyTree[Any]
"""A pytree of model parameters (e.g. a Flax ``params`` dict)."""

LossFn = Callable[[Params, Any, PRNGKeyArray, Array], tuple[Array, dict]]
"""A training loss ``loss_fn(params, batch, key, step) -> (loss, aux)``: ``batch`` a pytree of arrays with a
leading batch axis, ``step`` the int32 optimizer step (for warm-up schedules), ``aux`` a dict of scalars."""

EvalFn = Callable[[Params, Any, PRNGKeyArray], tuple[Array, dict]]
"""A validation loss ``eval_fn(params, batch, key) -> (loss, aux)``."""

Likelihood = Literal["nb", "zinb", "poisson", "gaussian"]
"""Observation model of the VAE: negative binomial, zero-inflated NB, Poisson (counts), Gaussian (log-normalised)."""

CountLikelihood = Literal["nb", "zinb", "poisson"]
"""The count observation models."""

Dispersion = Literal["gene", "gene-category", "gene-cell"]
"""Where the NB / ZINB inverse dispersion (Gaussian: log variance) varies: per gene, per gene and category of a
condition (scvi-tools' gene-batch / gene-label), or per gene and cell (a decoder output)."""

LibraryMode = Literal["observed", "latent"]
"""How the VAE treats a cell's library size: the observed total count, or a latent variable with a log-normal
prior (scvi-tools' ``use_observed_lib_size=False``)."""

LibrarySizes = Literal["empirical", "lognormal"]
"""How a generator draws the library sizes of new cells: from matching training cells, or from a log-normal
fitted per condition combination."""

Norm = Literal["layer", "none"]
"""Normalisation of hidden layers: LayerNorm, or none."""

ComputeDtype = Literal["float32", "bfloat16", "float16"]
"""Dtype of the matrix multiplies under mixed precision (parameters and losses stay float32)."""

PriorFamily = Literal["diffusion", "flow"]
"""Family of a latent generative prior: score-based diffusion or flow matching."""

PredictionNoise = Literal["source", "model"]
"""Where a predicted perturbed cell's count noise comes from: its source cell's counts carried by the
Gamma-Poisson coupling, or a fresh draw from the decoder (``PerturbationModel.predict``)."""

Space = Literal["latent", "log1p"]
"""Where a generator's prior lives: the VAE latent space, or normalised log1p expression."""

SDEName = Literal["vp", "subvp", "ve"]
"""The forward SDEs: variance preserving, sub-VP, variance exploding."""

Parameterisation = Literal["score", "eps", "x0", "v", "velocity", "eps_skip"]
"""What a score network outputs (see :mod:`genjax.diffusion`)."""

Weighting = Literal["sigma2", "likelihood"]
"""Time weighting of denoising score matching."""

Reduction = Literal["mean", "sum"]
"""Reduction of a per-point loss over dimensions."""

TimeSampling = Literal["uniform", "stratified", "low_discrepancy", "antithetic"]
"""Schemes of :func:`genjax.nn.sample_times`."""

Coupling = Literal["independent", "ot"]
"""Pairing of data and noise in flow matching: independent, or minibatch optimal transport."""

OTMethod = Literal["host", "auction"]
"""How an OT assignment is solved: scipy on the host, or the auction algorithm inside XLA."""

Divergence = Literal["hutchinson", "exact"]
"""Divergence estimator of the ODE likelihoods."""

Brownian = Literal["unsafe", "virtual"]
"""diffrax Brownian path of the reverse-SDE sampler."""

GridKind = Literal["uniform", "edm"]
"""Fixed-step time grids of :func:`genjax.time_grid`."""

Statistic = Literal["u", "v"]
"""U- or V-statistic of energy distance and MMD."""
