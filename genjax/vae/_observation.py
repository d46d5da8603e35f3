"""Observation models of the count VAE: what the decoder's outputs mean, as one small object per likelihood.

Each object says which decoder outputs exist, assembles them from the decoder's head, and gives the per-cell
log-likelihood, draws and means, so the likelihood is dispatched once (:func:`observation_model`), not in every
function that touches decoder outputs. Decoder outputs are dicts of ``(cells, genes)`` arrays (``log_theta`` /
``log_var`` may be ``(genes,)`` and broadcast):

==============  =====================================================================================
likelihood      outputs
==============  =====================================================================================
``"nb"``        ``log_scale`` (log-softmax over genes), ``log_mu = log_scale + log_lib``, ``log_theta``
``"zinb"``      as NB, plus ``zi_logits`` (logits of the probability of an extra zero)
``"poisson"``   ``log_scale``, ``log_mu``
``"gaussian"``  ``mean``, ``log_var`` (log-normalised data, no library size)
==============  =====================================================================================

The count log-likelihoods use the fused sums of :func:`genjax.likelihoods.fast_count_log_lik` when the batch carries
their precomputed fields (``lfact`` and the padded entries), else the public log-pmfs (same values).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import jax
import jax.numpy as jnp

from .._checks import check_choice
from .._typing import Array, Likelihood, PRNGKeyArray
from ..data import CountBatch
from ..likelihoods import (
    fast_count_log_lik,
    nb_log_prob_log,
    poisson_log_prob_log,
    sample_nb,
    sample_zinb,
    zinb_log_prob_log,
)
from ._noise import draw_noise

__all__ = ["ObservationModel", "NegativeBinomialObservation", "ZeroInflatedNBObservation", "PoissonObservation",
           "GaussianObservation", "OBSERVATION_MODELS", "observation_model"]


class ObservationModel(abc.ABC):
    """How the data are distributed given the decoder's outputs.

    Class attributes:
        name: the ``likelihood`` option that selects the model.
        counts: the data are counts (the encoder reads ``log1p(x)``, library sizes exist).
        dispersion: the model has a dispersion parameter (``log_theta`` or ``log_var``).
        zero_inflated: the model has a zero-inflation head (``zi_logits``).
    """

    name: ClassVar[str]
    counts: ClassVar[bool] = True
    dispersion: ClassVar[bool] = True
    zero_inflated: ClassVar[bool] = False

    def outputs(self, raw: Array, log_lib: Array, log_disp: Array | None, zi_logits: Array | None) -> dict:
        """Decoder outputs from the head ``raw`` (cells, genes), log library sizes (cells,), the dispersion and
        the zero-inflation logits (``None`` where the model has none)."""
        log_scale = jax.nn.log_softmax(raw, axis=-1)
        out = {"log_scale": log_scale, "log_mu": log_scale + log_lib[:, None]}
        if self.dispersion:
            out["log_theta"] = log_disp
        if self.zero_inflated:
            out["zi_logits"] = zi_logits
        return out

    @abc.abstractmethod
    def log_prob(self, x: Array, out: dict) -> Array:
        """Entrywise log-likelihood (cells, genes) by the public log-pmfs."""

    def log_lik(self, batch: CountBatch, out: dict, *, split: bool = False):
        """``log p(x | z, l)`` per cell (cells,); with ``split``, ``(per_cell, batch_total)`` as
        :func:`genjax.vae.vae_elbo_terms` describes (the small-count part of gene-wise NB / ZINB as one total)."""
        if batch.lfact is not None:
            return fast_count_log_lik(batch.x, out["log_mu"], batch.lfact, log_theta=out.get("log_theta"),
                                      zi_logits=out.get("zi_logits"), nonzero=batch.nonzero, large=batch.large,
                                      split=split)
        per_cell = jnp.sum(self.log_prob(batch.x, out), axis=-1)
        return (per_cell, jnp.zeros((), per_cell.dtype)) if split else per_cell

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, out: dict) -> Array:
        """Draws (cells, genes) float32 from the model."""

    def mean(self, out: dict) -> Array:
        """Expected value (cells, genes)."""
        return jnp.exp(out["log_mu"])

    def scale(self, out: dict) -> Array:
        """Normalised expression (cells, genes): the proportions ``rho`` (rows sum to 1) of a count model."""
        return jnp.exp(out["log_scale"])


class NegativeBinomialObservation(ObservationModel):
    """``x_g ~ NB(mu_g, theta_g)``, ``mu = exp(l) rho``."""

    name = "nb"

    def log_prob(self, x, out):
        return nb_log_prob_log(x, out["log_mu"], out["log_theta"], validate_args=False)

    def sample(self, key, out):
        mu = jnp.exp(out["log_mu"])
        return sample_nb(key, mu, jnp.broadcast_to(jnp.exp(out["log_theta"]), mu.shape), validate_args=False)


class ZeroInflatedNBObservation(ObservationModel):
    """``x_g ~ ZINB(mu_g, theta_g, pi_g)``, an extra zero with probability ``pi = sigmoid(zi_logits)``."""

    name = "zinb"
    zero_inflated = True

    def log_prob(self, x, out):
        return zinb_log_prob_log(x, out["log_mu"], out["log_theta"], out["zi_logits"], validate_args=False)

    def sample(self, key, out):
        mu = jnp.exp(out["log_mu"])
        theta = jnp.broadcast_to(jnp.exp(out["log_theta"]), mu.shape)
        return sample_zinb(key, mu, theta, out["zi_logits"], validate_args=False)

    def mean(self, out):
        return jnp.exp(out["log_mu"]) * jax.nn.sigmoid(-out["zi_logits"])


class PoissonObservation(ObservationModel):
    """``x_g ~ Poisson(mu_g)``."""

    name = "poisson"
    dispersion = False

    def log_prob(self, x, out):
        return poisson_log_prob_log(x, out["log_mu"], validate_args=False)

    def sample(self, key, out):
        return jax.random.poisson(key, jnp.exp(out["log_mu"])).astype(jnp.float32)


class GaussianObservation(ObservationModel):
    """``y_g ~ Normal(mean_g, exp(log_var_g))`` for log-normalised (non-count) data."""

    name = "gaussian"
    counts = False

    def outputs(self, raw, log_lib, log_disp, zi_logits):
        return {"mean": raw, "log_var": log_disp}

    def log_prob(self, x, out):
        var = jnp.exp(out["log_var"])
        return -0.5 * (jnp.log(2.0 * jnp.pi * var) + (x - out["mean"]) ** 2 / var)

    def log_lik(self, batch, out, *, split=False):
        per_cell = jnp.sum(self.log_prob(batch.x, out), axis=-1)
        return (per_cell, jnp.zeros((), per_cell.dtype)) if split else per_cell

    def sample(self, key, out):
        n, g = out["mean"].shape
        return out["mean"] + jnp.exp(0.5 * out["log_var"]) * draw_noise(key, n, g, 0)[0]

    def mean(self, out):
        return out["mean"]

    def scale(self, out):
        return out["mean"]


OBSERVATION_MODELS: dict[str, ObservationModel] = {
    m.name: m for m in (NegativeBinomialObservation(), ZeroInflatedNBObservation(), PoissonObservation(),
                        GaussianObservation())
}
"""The observation model of each ``likelihood`` name."""


def observation_model(likelihood: Likelihood) -> ObservationModel:
    """The :class:`ObservationModel` of a ``likelihood`` name.

    Raises:
        ValueError: an unknown name (``"likelihood must be one of ('nb', 'zinb', 'poisson', 'gaussian'); got ..."``).
    """
    return OBSERVATION_MODELS[check_choice("likelihood", likelihood, Likelihood)]
