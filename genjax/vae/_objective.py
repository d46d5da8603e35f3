"""Objectives of the count VAE: per-cell ELBO terms, the training / validation losses with beta and KL warm-up,
and the importance-weighted bound (Burda et al. 2016) for the marginal log-likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._typing import Array, Params, PRNGKeyArray
from ..data import CountBatch
from ._module import VAEModule
from ._noise import draw_noise, dropout_units
from ._observation import observation_model

__all__ = ["vae_reconstruction_log_lik", "vae_elbo_terms", "vae_kl_weight", "make_vae_loss", "make_vae_eval_loss",
           "vae_iwae_log_likelihood", "gaussian_kl"]


def gaussian_kl(mq, vq, mp, vp):
    """KL(N(mq, vq) || N(mp, vp)) summed over the last axis (diagonal Gaussians)."""
    return 0.5 * jnp.sum(jnp.log(vp) - jnp.log(vq) + (vq + (mq - mp) ** 2) / vp - 1.0, axis=-1)


def gaussian_log_prob(x, mean, var):
    """Entrywise ``log N(x; mean, var)`` (broadcast shape)."""
    return -0.5 * (jnp.log(2.0 * jnp.pi * var) + (x - mean) ** 2 / var)


def vae_reconstruction_log_lik(module: VAEModule, out: dict[str, Array], batch: CountBatch, *,
                               split: bool = False):
    """``log p(x | z, l)`` per cell (cells,) from decoder outputs ``out`` and the batch.

    The module's observation model (``_observation.py``) computes it: by the fused count sums of
    :func:`genjax.likelihoods.fast_count_log_lik` when the batch carries ``lfact`` (and for NB / ZINB its padded
    entries), which evaluate the count-only special functions on non-zeros only, else by the public log-pmfs (same
    value to float32 accuracy). ``split=True`` returns ``(per_cell, batch_total)`` as in :func:`vae_elbo_terms`.
    """
    return observation_model(module.likelihood).log_lik(batch, out, split=split)


def vae_elbo_terms(module: VAEModule, params: Params, batch: CountBatch, key: PRNGKeyArray, *,
                   deterministic: bool = False, split: bool = False) -> dict[str, Array]:
    """One-sample ELBO pieces per cell.

    Arguments:
        module, params: the model.
        batch: a :class:`genjax.data.CountBatch` (leading axis cells).
        key: PRNG key (dropout and the reparameterised draws of ``z`` and ``l``).
        deterministic: encoder without dropout (evaluation).
        split: for losses that weigh cells equally: ``rec`` leaves out the count-only small-count part of the NB /
            ZINB log-pmf and ``rec_total`` (scalar) carries its batch total, computed from a histogram of the
            batch (see :mod:`genjax.likelihoods`); ``sum(rec) + rec_total`` is the batch total of ``log p(x | z, l)``.

    Returns:
        ``{"rec": log p(x | z, l), "kl_z": KL(q(z|x,c) || p(z|c)), "kl_l": KL(q(l|x) || p(l))}``, each (cells,);
        ``kl_l`` is zero for an observed library. ``ELBO = rec - kl_z - kl_l``. With ``split``, also
        ``rec_total`` as above.
    """
    cond = batch.cond
    v = {"params": params}
    n = batch.x.shape[0]
    latent_lib = module.library == "latent"
    eps, drop = draw_noise(key, n, module.n_latent + latent_lib, 0 if deterministic else dropout_units(module))
    enc = module.apply(v, batch.x, cond, drop, method="encode")
    z = enc["z_mean"] + jnp.sqrt(enc["z_var"]) * eps[:, : module.n_latent]
    if latent_lib:
        log_lib = enc["l_mean"] + jnp.sqrt(enc["l_var"]) * eps[:, -1]
        lm, lv = module.apply(v, cond, n, method="library_prior_params")
        kl_l = gaussian_kl(enc["l_mean"][:, None], enc["l_var"][:, None], lm[:, None], lv[:, None])
    else:
        log_lib = batch.log_lib
        kl_l = jnp.zeros((n,))
    out = module.apply(v, z, log_lib, cond, method="decode")
    pm, pv = module.apply(v, cond, n, method="prior")
    terms = {"kl_z": gaussian_kl(enc["z_mean"], enc["z_var"], pm, pv), "kl_l": kl_l}
    if split:
        terms["rec"], terms["rec_total"] = vae_reconstruction_log_lik(module, out, batch, split=True)
    else:
        terms["rec"] = vae_reconstruction_log_lik(module, out, batch)
    return terms


def vae_kl_weight(step, *, beta: float = 1.0, warmup_steps: int | None = None) -> Array:
    """KL weight at optimizer step ``step``: ``beta * min(1, step / warmup_steps)`` (``beta`` without warm-up).

    scvi-tools raises the weight linearly over ``n_epochs_kl_warmup = 400`` epochs (once per epoch); here it
    rises per step over the same number of steps.
    """
    if not warmup_steps:
        return jnp.asarray(beta, jnp.float32)
    return beta * jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / float(warmup_steps))


def make_vae_loss(module: VAEModule, *, beta: float = 1.0, warmup_steps: int | None = None
                   ) -> Callable[[Params, Any, PRNGKeyArray, Array], tuple[Array, dict]]:
    """The training loss ``loss_fn(params, batch, key, step) -> (loss, aux)`` of :func:`genjax.fit`.

    ``loss = mean_cells[-rec + w(step) (kl_z + kl_l)]`` with ``w`` from :func:`vae_kl_weight` (the negative ELBO
    at ``w = 1``, the beta-VAE objective at ``w = beta``). ``aux``: ``rec`` (mean negative log-likelihood),
    ``kl_z``, ``kl_l``, ``kl_weight`` and ``elbo`` (mean ELBO at full KL weight). Invalid (non-count) input gives
    NaN under ``jit``; the model object validates data on the host before training. The mean reconstruction term
    is computed with ``vae_elbo_terms(..., split=True)`` (same value, cheaper gradient).
    """

    def loss_fn(params, batch, key, step):
        t = vae_elbo_terms(module, params, batch, key, split=True)
        w = vae_kl_weight(step, beta=beta, warmup_steps=warmup_steps)
        kl = t["kl_z"] + t["kl_l"]
        rec = jnp.mean(t["rec"]) + t["rec_total"] / t["rec"].shape[0]
        loss = -rec + w * jnp.mean(kl)
        aux = {"rec": -rec, "kl_z": jnp.mean(t["kl_z"]), "kl_l": jnp.mean(t["kl_l"]),
               "kl_weight": w, "elbo": rec - jnp.mean(kl)}
        return loss, aux

    return loss_fn


def make_vae_eval_loss(module: VAEModule) -> Callable:
    """Validation ``eval_fn(params, batch, key) -> (loss, aux)``: negative ELBO at full KL weight, no dropout."""

    def eval_fn(params, batch, key):
        t = vae_elbo_terms(module, params, batch, key, deterministic=True, split=True)
        kl = t["kl_z"] + t["kl_l"]
        rec = jnp.mean(t["rec"]) + t["rec_total"] / t["rec"].shape[0]
        loss = -(rec - jnp.mean(kl))
        return loss, {"rec": -rec, "kl_z": jnp.mean(t["kl_z"]), "kl_l": jnp.mean(t["kl_l"]), "elbo": -loss}

    return eval_fn


def vae_iwae_log_likelihood(module: VAEModule, params: Params, batch: CountBatch, key: PRNGKeyArray,
                            n_samples: int = 100) -> Array:
    """Importance-weighted estimate of ``log p(x | c)`` per cell (Burda et al. 2016), shape (cells,).

    ``log (1/K) sum_k p(x | z_k, l_k) p(z_k | c) p(l_k) / (q(z_k | x) q(l_k | x))`` with ``K = n_samples``
    draws from the (deterministic) encoder's posterior; a lower bound of the marginal log-likelihood that
    tightens as ``K`` grows (``K = 1`` is the ELBO). For an observed library the library terms are absent.
    """
    cond = batch.cond
    v = {"params": params}
    n = batch.x.shape[0]
    enc = module.apply(v, batch.x, cond, method="encode")
    pm, pv = module.apply(v, cond, n, method="prior")
    if module.library == "latent":
        lm, lv = module.apply(v, cond, n, method="library_prior_params")

    latent_lib = module.library == "latent"

    def one(k):
        eps = draw_noise(k, n, module.n_latent + latent_lib, 0)[0]
        z = enc["z_mean"] + jnp.sqrt(enc["z_var"]) * eps[:, : module.n_latent]
        log_w = (jnp.sum(gaussian_log_prob(z, pm, pv), -1)
                 - jnp.sum(gaussian_log_prob(z, enc["z_mean"], enc["z_var"]), -1))
        if latent_lib:
            l_ = enc["l_mean"] + jnp.sqrt(enc["l_var"]) * eps[:, -1]
            log_w = log_w + gaussian_log_prob(l_, lm, lv) - gaussian_log_prob(l_, enc["l_mean"], enc["l_var"])
        else:
            l_ = batch.log_lib
        out = module.apply(v, z, l_, cond, method="decode")
        return log_w + vae_reconstruction_log_lik(module, out, batch)

    log_w = jax.lax.map(one, jax.random.split(key, n_samples))  # (samples, cells), one sample at a time
    return jax.nn.logsumexp(log_w, axis=0) - math.log(n_samples)
