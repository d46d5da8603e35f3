"""Means and variances of the NB and ZINB distributions (``mu`` mean, ``theta`` inverse dispersion, zero inflation
as logits).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._typing import Array, ArrayLike
from ._validation import as_float, float_dtype

__all__ = ["nb_mean", "nb_variance", "zinb_mean", "zinb_variance"]


def nb_mean(mu: ArrayLike, theta: ArrayLike) -> Array:
    """Mean of NB(mu, theta): ``mu`` (broadcast against ``theta``)."""
    mu, theta = jnp.broadcast_arrays(*as_float(float_dtype(mu, theta), mu, theta))
    return mu


def nb_variance(mu: ArrayLike, theta: ArrayLike) -> Array:
    """Variance of NB(mu, theta): ``mu + mu^2 / theta``."""
    mu, theta = as_float(float_dtype(mu, theta), mu, theta)
    return mu + mu * mu / theta


def zinb_mean(mu: ArrayLike, theta: ArrayLike, zi_logits: ArrayLike) -> Array:
    """Mean of ZINB: ``(1 - pi) mu`` with ``pi = sigmoid(zi_logits)`` (broadcast shape)."""
    mu, theta, zi_logits = as_float(float_dtype(mu, theta, zi_logits), mu, theta, zi_logits)
    return jax.nn.sigmoid(-zi_logits) * mu + jnp.zeros_like(theta)


def zinb_variance(mu: ArrayLike, theta: ArrayLike, zi_logits: ArrayLike) -> Array:
    """Variance of ZINB: ``(1 - pi) mu (1 + pi mu + mu / theta)`` with ``pi = sigmoid(zi_logits)``."""
    mu, theta, zi_logits = as_float(float_dtype(mu, theta, zi_logits), mu, theta, zi_logits)
    pi = jax.nn.sigmoid(zi_logits)
    return jax.nn.sigmoid(-zi_logits) * mu * (1.0 + pi * mu + mu / theta)
