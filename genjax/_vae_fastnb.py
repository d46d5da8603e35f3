"""Fused count log-likelihoods for VAE training: the same values as the public log-pmfs, fewer special functions.

Split of the negative-binomial log-pmf used here (``r = mu / theta``)::

    log NB(x | mu, theta) = P(x, theta) - lgamma(x + 1) + D(x, log_mu, theta)
    P(x, theta)           = lgamma(x + theta) - lgamma(theta) - x log(theta)      (count-only; 0 at x = 0)
    D(x, log_mu, theta)   = -theta log1p(r) + x (log_mu - log1p(r))               (dense, cheap)

Only ``D`` involves the decoder's mean, and it needs one ``exp`` and one ``log1p`` per entry. ``lgamma(x + 1)`` is
a constant of the data (the batch carries its per-cell sum ``lfact``), and ``P`` vanishes at ``x = 0``, so it is
evaluated only on the non-zero entries (``nz_idx`` / ``nz_val``, about 10% of a single-cell matrix) with the
accurate building block :func:`genjax._special.log_pochhammer_ratio`. Gradients are analytic (``custom_vjp``):
``dD/dlog_mu = theta (x - mu) / (theta + mu)``, ``dD/dlog_theta = -theta log1p(r) + mu (theta + x) / (theta + mu)``
and ``dP/dlog_theta = theta [digamma(x + theta) - digamma(theta) - x / theta]`` from
:func:`genjax._special.delta_digamma_log`. ZINB adds the zero-inflation mixture on the zero entries; Poisson is
``x log_mu - mu - lgamma(x + 1)``.

The public ``nb_log_prob_log`` / ``zinb_log_prob_log`` / ``poisson_log_prob_log`` remain the reference; the
tests check these fused sums against them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _special as S
from ._types import Array

__all__: list[str] = []  # private: used by genjax._vae


# ---------------------------------------------------------------------------------------------------------------
# dense part D(x, log_mu, log_theta), per entry
# ---------------------------------------------------------------------------------------------------------------


@jax.custom_vjp
def nb_dense_part(x, log_mu, log_theta):
    """``D = -theta log1p(mu / theta) + x (log_mu - log1p(mu / theta))`` per entry (broadcast shape)."""
    return _dense_fwd(x, log_mu, log_theta)[0]


def _dense_fwd(x, log_mu, log_theta):
    mu = jnp.exp(log_mu)
    theta = jnp.exp(log_theta)
    l1p = jnp.log1p(mu * jnp.exp(-log_theta))
    d = -theta * l1p + x * (log_mu - l1p)
    return d, (x, mu, theta, l1p)


def _dense_bwd(res, ct):
    x, mu, theta, l1p = res
    q = ct / (theta + mu)
    g_log_mu = theta * (x - mu) * q
    g_log_theta = -ct * theta * l1p + mu * (theta + x) * q
    g_log_theta = _sum_to(g_log_theta, theta.shape)
    return None, g_log_mu, g_log_theta


nb_dense_part.defvjp(_dense_fwd, _dense_bwd)


def _sum_to(g, shape):
    """Sum a broadcast cotangent back to ``shape`` (leading axes, then size-1 axes)."""
    lead = g.ndim - len(shape)
    if lead:
        g = jnp.sum(g, axis=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    if axes:
        g = jnp.sum(g, axis=axes, keepdims=True)
    return g


# ---------------------------------------------------------------------------------------------------------------
# count-only part P(x, theta) on the non-zero entries
# ---------------------------------------------------------------------------------------------------------------


@jax.custom_vjp
def pochhammer_part(x, log_theta):
    """``P = lgamma(x + theta) - lgamma(theta) - x log(theta)`` per entry, exactly 0 at ``x = 0``."""
    return S.log_pochhammer_ratio(x, jnp.exp(log_theta))


def _poch_fwd(x, log_theta):
    theta = jnp.exp(log_theta)
    return S.log_pochhammer_ratio(x, theta), (x, theta)


def _poch_bwd(res, ct):
    x, theta = res
    y = x / theta
    # theta d/dtheta P = theta [digamma(x + theta) - digamma(theta) - log1p(y)] + theta [log1p(y) - y]
    g = theta * (S.delta_digamma_log(x, theta) + S.log1pmx_from_w(x / (x + 2.0 * theta), jnp.log1p(y), y))
    return None, ct * g


pochhammer_part.defvjp(_poch_fwd, _poch_bwd)


def _theta_at_nonzeros(log_theta, nz_idx):
    """``log_theta`` at the non-zero entries (cells, K): gathered from (genes,) or (cells, genes)."""
    if log_theta.ndim == 1:
        return log_theta[nz_idx]
    return jnp.take_along_axis(jnp.broadcast_to(log_theta, (nz_idx.shape[0], log_theta.shape[-1])), nz_idx, axis=1)


# ---------------------------------------------------------------------------------------------------------------
# per-cell log-likelihoods
# ---------------------------------------------------------------------------------------------------------------


def fast_count_log_lik(likelihood: str, x: Array, out: dict[str, Array], batch: dict[str, Array]) -> Array:
    """``sum_g log p(x_g | ...)`` per cell (cells,) for ``likelihood`` in nb / zinb / poisson.

    Arguments:
        likelihood: ``"nb"``, ``"zinb"`` or ``"poisson"``.
        x: counts (cells, genes).
        out: decoder outputs ``log_mu`` (cells, genes), ``log_theta`` (genes,) or (cells, genes), ``zi_logits``.
        batch: with ``lfact`` (cells,) = ``sum_g lgamma(x + 1)`` and the non-zeros ``nz_idx`` / ``nz_val``
            (cells, K), padded with count 0.

    Returns:
        float32 (cells,). Equal to the sum of the public log-pmfs up to float32 rounding.
    """
    log_mu = out["log_mu"]
    if likelihood == "poisson":
        return jnp.sum(x * log_mu - jnp.exp(log_mu), axis=-1) - batch["lfact"]
    log_theta = out["log_theta"]
    d = nb_dense_part(x, log_mu, log_theta)
    p = jnp.sum(pochhammer_part(batch["nz_val"], _theta_at_nonzeros(log_theta, batch["nz_idx"])), axis=-1)
    if likelihood == "nb":
        return jnp.sum(d, axis=-1) + p - batch["lfact"]
    zi = out["zi_logits"]
    # zero entries: log(pi + (1 - pi) NB(0)) = logaddexp(zi, D) - softplus(zi); non-zero: log(1 - pi) + log NB
    mixed = jnp.where(x == 0, jnp.logaddexp(zi, d), d) - jax.nn.softplus(zi)
    return jnp.sum(mixed, axis=-1) + p - batch["lfact"]
