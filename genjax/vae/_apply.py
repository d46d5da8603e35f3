"""The VAE as pure functions of ``(module, params, arrays)``: encode, decode, prior, sample counts.
"""

from __future__ import annotations

from .._typing import Array, Params, PRNGKeyArray
from ..data import Condition
from ._module import VAEModule
from ._noise import draw_noise, dropout_units
from ._observation import observation_model

__all__ = ["vae_encode", "vae_decode", "vae_prior", "vae_sample_counts"]


def vae_encode(module: VAEModule, params: Params, x, cond: Condition | None = None, *,
               key: PRNGKeyArray | None = None) -> dict[str, Array]:
    """Posterior parameters ``{"z_mean", "z_var"[, "l_mean", "l_var"]}`` of counts ``x`` (cells, genes) with the
    cells' :class:`~genjax.data.Condition` ``cond``.

    With ``key`` the encoder runs in training mode (dropout on); without, deterministically.
    """
    drop = None
    if key is not None and dropout_units(module):
        drop = draw_noise(key, x.shape[0], 0, dropout_units(module))[1]
    return module.apply({"params": params}, x, cond, drop, method="encode")


def vae_decode(module: VAEModule, params: Params, z, log_lib, cond: Condition | None = None) -> dict[str, Array]:
    """Observation-model parameters for latents ``z`` (cells, latent) and log library sizes (cells,); see
    :meth:`VAEModule.decode`."""
    return module.apply({"params": params}, z, log_lib, cond, method="decode")


def vae_prior(module: VAEModule, params: Params, cond: Condition | None = None, n: int | None = None):
    """``(mean, var)`` of the prior of ``z``, each (cells, latent); see :meth:`VAEModule.prior`."""
    return module.apply({"params": params}, cond, n, method="prior")


def vae_sample_counts(key: PRNGKeyArray, module: VAEModule, out: dict[str, Array]) -> Array:
    """Draw observations (cells, genes) float32 from decoder outputs ``out`` (see :meth:`VAEModule.decode`):
    NB gamma-Poisson (:func:`genjax.sample_nb`), ZINB (:func:`genjax.sample_zinb`), Poisson
    (``jax.random.poisson``) or Gaussian ``mean + exp(log_var / 2) N(0, 1)``, by the module's likelihood."""
    return observation_model(module.likelihood).sample(key, out)
