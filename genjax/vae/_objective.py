"""Objectives of the count VAE: per-cell ELBO terms, the training / validation losses with beta and KL warm-up
(objective ``"elbo"``, or the importance-weighted bound of Burda et al. 2016 as a training objective, ``"iwae"``,
optionally with the doubly reparameterised gradient of Tucker et al. 2019, ``"iwae-dreg"``), and the
importance-weighted bound for the marginal log-likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._checks import check_choice, check_int
from .._typing import Array, Params, PRNGKeyArray
from ..data import CountBatch
from ._module import VAEModule
from ._noise import draw_noise, dropout_units
from ._observation import observation_model

__all__ = ["vae_reconstruction_log_lik", "vae_elbo_terms", "vae_kl_weight", "make_vae_loss", "make_vae_eval_loss",
           "vae_iwae_log_likelihood", "vae_iwae_log_weights", "gaussian_kl", "VAE_OBJECTIVES"]

VAE_OBJECTIVES = ("elbo", "iwae", "iwae-dreg")
"""Training objectives of the count VAE: the ELBO, the IWAE bound (plain reparameterised gradient) and the IWAE
bound with the doubly reparameterised (DReG) encoder gradient."""


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


def _check_objective(objective: str, n_importance: int) -> int:
    """Host-side checks of the objective options; returns ``n_importance`` as an int."""
    check_choice("objective", objective, VAE_OBJECTIVES)
    return check_int("n_importance", n_importance)


def vae_iwae_log_weights(module: VAEModule, params: Params, batch: CountBatch, key: PRNGKeyArray,
                         n_importance: int, *, deterministic: bool = False) -> dict[str, Array]:
    """The pieces of ``K = n_importance`` importance weights per cell, each (K, cells) float32.

    ``z_k = mu(x) + sigma(x) eps_k`` (and for ``library='latent'`` ``l_k`` the same way, drawn ``K`` times too),
    with one encoder pass (one dropout mask unless ``deterministic``) and the normals of
    ``draw_noise(key, cells, K * d, dropout units)`` (``d = n_latent`` plus one for a latent library), read as
    (cells, K, d): at ``K = 1`` they are the draws of :func:`vae_elbo_terms` with the same key.

    Returns:
        ``{"rec": log p(x | z_k, l_k), "log_ratio_z": log p(z_k | c) - log q(z_k | x, c), "log_ratio_l":
        log p(l_k) - log q(l_k | x)}`` (zero for an observed library). The log importance weight is
        ``rec + log_ratio_z + log_ratio_l``; ``E[log_ratio_z] = -KL(q(z|x,c) || p(z|c))``.
    """
    w = _iwae_pieces(module, params, batch, key, int(n_importance), deterministic)
    return {"rec": w["rec"], "log_ratio_z": w["ratio_z"], "log_ratio_l": w["ratio_l"]}


def _iwae_pieces(module: VAEModule, params: Params, batch: CountBatch, key, k: int, deterministic: bool) -> dict:
    """Draws and log-weight pieces of :func:`vae_iwae_log_weights`, plus ``weights_fn`` (the pieces as a function
    of ``(params, z, l, enc)``, for the DReG surrogate) and its arguments."""
    cond = batch.cond
    n = batch.x.shape[0]
    latent_lib = module.library == "latent"
    d = module.n_latent + latent_lib
    eps, drop = draw_noise(key, n, k * d, 0 if deterministic else dropout_units(module))
    eps = jnp.swapaxes(eps.reshape(n, k, d), 0, 1)  # (K, cells, d)
    enc = module.apply({"params": params}, batch.x, cond, drop, method="encode")
    z = enc["z_mean"] + jnp.sqrt(enc["z_var"]) * eps[..., : module.n_latent]
    lib = enc["l_mean"] + jnp.sqrt(enc["l_var"]) * eps[..., -1] if latent_lib else None

    def weights_fn(p, z, lib, enc):
        """Log-weight pieces (K, cells) of draws ``z`` (K, cells, latent) / ``lib`` (K, cells) under the
        decoder and priors of ``p`` and the posterior statistics ``enc``."""
        v = {"params": p}
        pm, pv = module.apply(v, cond, n, method="prior")
        ratio_z = (jnp.sum(gaussian_log_prob(z, pm, pv), -1)
                   - jnp.sum(gaussian_log_prob(z, enc["z_mean"], enc["z_var"]), -1))
        if latent_lib:
            lm, lv = module.apply(v, cond, n, method="library_prior_params")
            ratio_l = gaussian_log_prob(lib, lm, lv) - gaussian_log_prob(lib, enc["l_mean"], enc["l_var"])
            log_libs = lib
        else:
            ratio_l = jnp.zeros_like(ratio_z)
            log_libs = jnp.broadcast_to(batch.log_lib, (k, n))

        def rec_one(zk, lk):
            out = module.apply(v, zk, lk, cond, method="decode")
            return vae_reconstruction_log_lik(module, out, batch)

        return {"rec": jax.vmap(rec_one)(z, log_libs), "ratio_z": ratio_z, "ratio_l": ratio_l}

    pieces = weights_fn(params, z, lib, enc)
    return {**pieces, "weights_fn": weights_fn, "z": z, "lib": lib, "enc": enc}


@jax.custom_vjp
def _scale_grad(x, r):
    """``x`` in the forward pass; the backward pass multiplies the cotangent of ``x`` by ``r`` (none to ``r``)."""
    return x


def _scale_grad_fwd(x, r):
    return x, r


def _scale_grad_bwd(r, g):
    return g * r, jnp.zeros_like(r)


_scale_grad.defvjp(_scale_grad_fwd, _scale_grad_bwd)


def _iwae_loss(module: VAEModule, params, batch, key, w, k: int, dreg: bool, deterministic: bool):
    """``(loss, aux)`` of the IWAE objective at KL weight ``w`` (see :func:`make_vae_loss`)."""
    p = _iwae_pieces(module, params, batch, key, k, deterministic)
    ratio = p["ratio_z"] + p["ratio_l"]
    log_w = p["rec"] + w * ratio                                     # (K, cells)
    bound = jax.nn.logsumexp(log_w, axis=0) - math.log(k)            # (cells,)
    loss = -jnp.mean(bound)
    if dreg:
        # surrogate sum_k w~_k log w_k(theta, z_k'): its theta gradient is the plain IWAE one; z_k' has the value
        # of z_k and passes r_k times the cotangent to the encoder, r_k = c_k / w~_k = (1 - w) + w w~_k, and q's
        # parameters are stopped in log q, so the encoder gradient is sum_k c_k (d log w_k / d z_k)(d z_k / d phi).
        sg = jax.lax.stop_gradient
        wt = sg(jax.nn.softmax(log_w, axis=0))                       # normalised weights (K, cells)
        r = (1.0 - w) + w * wt                                       # w = 1: c_k = w~_k^2 (Tucker et al.)
        lib = None if p["lib"] is None else _scale_grad(p["lib"], r)
        t = p["weights_fn"](params, _scale_grad(p["z"], r[..., None]), lib, sg(p["enc"]))
        surrogate = jnp.sum(wt * (t["rec"] + w * (t["ratio_z"] + t["ratio_l"]))) / bound.shape[0]
        loss = sg(loss) + (sg(surrogate) - surrogate)            # value: the bound; gradient: the surrogate's
    full = p["rec"] + ratio
    aux = {"rec": -jnp.mean(p["rec"]), "kl_z": -jnp.mean(p["ratio_z"]), "kl_l": -jnp.mean(p["ratio_l"]),
           "elbo": jnp.mean(full),
           "iwae": jnp.mean(jax.nn.logsumexp(full, axis=0)) - math.log(k)}
    return loss, aux


def make_vae_loss(module: VAEModule, *, beta: float = 1.0, warmup_steps: int | None = None,
                  objective: str = "elbo", n_importance: int = 1
                  ) -> Callable[[Params, Any, PRNGKeyArray, Array], tuple[Array, dict]]:
    """The training loss ``loss_fn(params, batch, key, step) -> (loss, aux)`` of :func:`genjax.fit`.

    ``objective="elbo"`` (default): ``loss = mean_cells[-rec + w(step) (kl_z + kl_l)]`` with ``w`` from
    :func:`vae_kl_weight` (the negative ELBO at ``w = 1``, the beta-VAE objective at ``w = beta``). ``aux``: ``rec``
    (mean negative log-likelihood), ``kl_z``, ``kl_l``, ``kl_weight`` and ``elbo`` (mean ELBO at full KL weight).
    The mean reconstruction term is computed with ``vae_elbo_terms(..., split=True)`` (same value, cheaper
    gradient).

    ``objective="iwae"`` (Burda et al. 2016, "Importance Weighted Autoencoders"): with ``K = n_importance``
    draws ``(z_k, l_k)`` of the posterior (:func:`vae_iwae_log_weights`; a latent library is drawn ``K`` times
    with ``z``) and ``log w_k = log p(x | z_k, l_k) + w(step) [log p(z_k) p(l_k) - log q(z_k, l_k | x)]``,
    ``loss = -mean_cells[logsumexp_k log w_k - log K]``, a bound of ``log p(x)`` that tightens with ``K``
    (at ``w = 1``). Its gradient is the plain reparameterised one, ``sum_k w~_k grad log w_k`` with the normalised
    weights ``w~_k = softmax_k(log w_k)``.

    ``objective="iwae-dreg"``: the same loss value; the encoder (``phi``) gradient is the doubly reparameterised
    estimator (Tucker, Lawson, Gu & Maddison 2019) ``sum_k c_k (d log w_k / d z_k) (d z_k / d phi)`` with the
    gradient through ``q``'s parameters in ``log q`` stopped and ``c_k = w~_k^2`` (at KL weight ``w``:
    ``c_k = (1 - w) w~_k + w w~_k^2``, the same derivation with the score term weighted by ``w``); the decoder and
    prior gradients are those of ``"iwae"``. Its expectation equals the ``"iwae"`` gradient; Tucker et al. show
    that its encoder signal-to-noise ratio does not vanish as ``K`` grows, unlike the plain estimator's (Rainforth
    et al. 2018). One extra evaluation of the decoder's log-weights carries its surrogate (about 1.5 times the step
    time of ``"iwae"`` at K = 20 on CPU).

    For the IWAE objectives ``aux`` holds Monte Carlo estimates: ``rec``, ``kl_z = -mean(log p(z) - log q(z))``,
    ``kl_l``, ``elbo`` (the mean over the ``K`` draws of ``log w_k`` at full KL weight), ``iwae`` (the bound at full
    KL weight) and ``kl_weight``. With ``K = 1`` both IWAE objectives are the ELBO, and the ELBO loss (analytic KL,
    the same expectation and a lower-variance gradient) is returned.

    Invalid (non-count) input gives NaN under ``jit``; the model object validates data on the host first.

    Raises:
        ValueError: an unknown ``objective`` or ``n_importance`` below 1 (when the loss is built).
    """
    k = _check_objective(objective, n_importance)
    if objective != "elbo" and k > 1:
        dreg = objective == "iwae-dreg"

        def iwae_loss_fn(params, batch, key, step):
            w = vae_kl_weight(step, beta=beta, warmup_steps=warmup_steps)
            loss, aux = _iwae_loss(module, params, batch, key, w, k, dreg, False)
            return loss, {**aux, "kl_weight": w}

        return iwae_loss_fn

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


def make_vae_eval_loss(module: VAEModule, *, objective: str = "elbo", n_importance: int = 1) -> Callable:
    """Validation ``eval_fn(params, batch, key) -> (loss, aux)`` at full KL weight, no dropout: the negative ELBO,
    or for the IWAE objectives with ``n_importance > 1`` the negative IWAE-``K`` bound (``aux`` as in
    :func:`make_vae_loss`, ``elbo`` a Monte Carlo estimate).

    Raises:
        ValueError: an unknown ``objective`` or ``n_importance`` below 1.
    """
    k = _check_objective(objective, n_importance)
    if objective != "elbo" and k > 1:

        def iwae_eval_fn(params, batch, key):
            return _iwae_loss(module, params, batch, key, 1.0, k, False, True)

        return iwae_eval_fn

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
