"""The VAE as pure functions of ``(module, params, arrays)``: encode, decode, prior, sample counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._typing import Array, Params, PRNGKeyArray
from ..likelihoods import sample_nb, sample_zinb
from ._module import VAEModule
from ._noise import draw_noise, dropout_units

__all__ = ["vae_encode", "vae_decode", "vae_prior", "vae_sample_counts"]


def vae_encode(module: VAEModule, params: Params, x, cat=None, cont=None, *, key: PRNGKeyArray | None = None):
    """Posterior parameters ``{"z_mean", "z_var"[, "l_mean", "l_var"]}`` of counts ``x`` (cells, genes).

    With ``key`` the encoder runs in training mode (dropout on); without, deterministically.
    """
    drop = None
    if key is not None and dropout_units(module):
        drop = draw_noise(key, x.shape[0], 0, dropout_units(module))[1]
    return module.apply({"params": params}, x, cat, cont, drop, method="encode")


def vae_decode(module: VAEModule, params: Params, z, log_lib, cat=None, cont=None) -> dict[str, Array]:
    """Observation-model parameters for latents ``z`` (cells, latent); see :meth:`VAEModule.decode`."""
    return module.apply({"params": params}, z, log_lib, cat, cont, method="decode")


def vae_prior(module: VAEModule, params: Params, cat=None, cont=None, n: int | None = None):
    """``(mean, var)`` of the prior of ``z``, each (cells, latent); see :meth:`VAEModule.prior`."""
    return module.apply({"params": params}, cat, cont, n, method="prior")


def vae_sample_counts(key: PRNGKeyArray, module: VAEModule, out: dict[str, Array]) -> Array:
    """Draw observations (cells, genes) from decoder outputs ``out`` (see :meth:`VAEModule.decode`).

    NB: gamma-Poisson (:func:`genjax.sample_nb`); ZINB: :func:`genjax.sample_zinb`; Poisson:
    ``jax.random.poisson``; Gaussian: ``mean + exp(log_var / 2) * N(0, 1)``. Counts are returned as float32.
    """
    lik = module.likelihood
    if lik == "gaussian":
        n, g = out["mean"].shape
        return out["mean"] + jnp.exp(0.5 * out["log_var"]) * draw_noise(key, n, g, 0)[0]
    mu = jnp.exp(out["log_mu"])
    if lik == "poisson":
        return jax.random.poisson(key, mu).astype(jnp.float32)
    theta = jnp.broadcast_to(jnp.exp(out["log_theta"]), mu.shape)
    if lik == "nb":
        return sample_nb(key, mu, theta, validate_args=False)
    return sample_zinb(key, mu, theta, out["zi_logits"], validate_args=False)
