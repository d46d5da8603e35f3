"""Denoising score matching (Vincent 2011; Song et al. 2021).

The denoising score-matching loss (:func:`dsm_loss`) is the continuous-time objective
``E_t E_{x0, eps} lambda(t) |s(x_t, t) + eps / sigma|^2 = E lambda / sigma^2 |eps_hat - eps|^2`` with
``lambda = sigma^2`` (``weighting="sigma2"``) or ``lambda = g^2`` (``"likelihood"``, which makes the
sum-reduced loss a bound on the negative log-likelihood up to constants; Song et al. 2021b), times drawn
uniformly on ``[t_min, 1]`` with low-discrepancy options, or, for likelihood weighting, by importance sampling
``p(t) ∝ g^2 / sigma^2``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._checks import check_choice, check_range
from .._typing import Array, Parameterisation, Params, PRNGKeyArray, Reduction, TimeSampling, Weighting
from ..nn import drop_condition, sample_times, split_field_batch
from ._parameterisation import convert_output
from ._sde import AbstractSDE

__all__ = ["dsm_loss", "make_dsm_loss", "check_dsm_options"]


def check_dsm_options(parameterisation: Parameterisation, weighting: Weighting, reduction: Reduction,
                      time_sampling: TimeSampling, t_min: float, cond_dropout: float = 0.0) -> None:
    """Host-side checks of the options of denoising score matching (one message format; before any compute).

    Raises:
        ValueError: an unknown option value, ``t_min`` outside ``(0, 1)`` or ``cond_dropout`` outside ``[0, 1]``.
    """
    check_choice("parameterisation", parameterisation, Parameterisation)
    check_choice("weighting", weighting, Weighting)
    check_choice("reduction", reduction, Reduction)
    check_choice("time sampling", time_sampling, TimeSampling)
    check_range("t_min", t_min, low=0.0, high=1.0, low_open=True, high_open=True)
    check_range("cond_dropout", cond_dropout, low=0.0, high=1.0)


def dsm_loss(
    key: PRNGKeyArray, apply_fn: Callable[..., Array], sde: AbstractSDE, x0: Array, *, cond: Any = None,
    parameterisation: Parameterisation = "eps", weighting: Weighting = "sigma2",
    reduction: Reduction = "mean", time_sampling: TimeSampling = "stratified",
    importance_sampling: bool = True, t_min: float = 1e-5
) -> tuple[Array, dict[str, Array]]:
    """Continuous-time denoising score matching (Song et al. 2021, eq. 7) for one batch.

    ``loss = mean_i w(t_i) R_j (eps_hat_ij - eps_ij)^2`` with ``x_t = alpha x0 + sigma eps``,
    ``eps_hat`` the network's prediction converted to noise (so that ``sigma s + eps = eps - eps_hat``) and
    ``R`` the mean or sum over dimensions. Weights: ``"sigma2"``: ``lambda = sigma^2``, ``w = 1``;
    ``"likelihood"``: ``lambda = g^2``, ``w = g^2 / sigma^2``, or with ``importance_sampling`` times drawn from
    ``p(t) ∝ g^2/sigma^2`` and the constant ``w = Z / (1 - t_min)`` (both estimate the same time average over
    ``U(t_min, 1)``; importance sampling removes the ``1/t`` variance near 0).

    Arguments:
        key: PRNG key (times and noise).
        apply_fn: ``apply_fn(x_t, t, cond) -> (n, d)`` raw network output (``cond`` may be ``None``).
        sde: the forward SDE.
        x0: clean data ``(n, d)``.
        cond: optional :class:`genjax.nn.Condition` with leading ``n``.
        parameterisation: what ``apply_fn`` outputs (:data:`PARAMETERISATIONS`).
        weighting: ``"sigma2"`` or ``"likelihood"``.
        reduction: ``"mean"`` or ``"sum"`` over dimensions.
        time_sampling: see :func:`sample_times`.
        importance_sampling: for ``weighting="likelihood"``, sample times from ``g^2 / sigma^2``.
        t_min: smallest time (``sigma(t_min) > 0``; 1e-5 is accurate in float32 thanks to ``expm1``).

    Returns:
        ``(loss, aux)``: float32 scalar; ``aux = {"eps_mse": unweighted mean squared noise error}``.

    Raises:
        ValueError: on unknown option names or ``t_min`` outside ``(0, 1)``.
    """
    check_dsm_options(parameterisation, weighting, reduction, time_sampling, t_min)
    n = x0.shape[0]
    key_t, key_eps = jax.random.split(key)
    u = sample_times(key_t, n, time_sampling)
    if weighting == "likelihood" and importance_sampling:
        t, z = sde.likelihood_weighting_time(u, t_min)
        w = jnp.broadcast_to(z / (1.0 - t_min), (n,))
    else:
        t = t_min + (1.0 - t_min) * u
        w = jnp.ones((n,)) if weighting == "sigma2" else sde.diffusion(t) ** 2 / sde.std(t) ** 2
    eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
    mean, std = sde.marginal(x0, t)
    xt = mean + std[:, None] * eps
    out = apply_fn(xt, t, cond)
    eps_hat = convert_output(out, xt, t, sde, parameterisation, "eps")
    sq = (eps_hat - eps) ** 2
    per_point = jnp.mean(sq, axis=-1) if reduction == "mean" else jnp.sum(sq, axis=-1)
    return jnp.mean(w * per_point), {"eps_mse": jnp.mean(sq)}


def make_dsm_loss(
    model: Any, sde: AbstractSDE, *, parameterisation: Parameterisation = "eps",
    weighting: Weighting = "sigma2", reduction: Reduction = "mean",
    time_sampling: TimeSampling = "stratified", importance_sampling: bool = True, t_min: float = 1e-5,
    cond_dropout: float = 0.0
) -> Callable[[Params, Any, PRNGKeyArray, Array], tuple[Array, dict]]:
    """Denoising score matching as ``loss_fn(params, batch, key, step) -> (loss, aux)`` for :func:`genjax.fit`.

    Arguments:
        model: a Flax module called as ``model.apply(params, x, t, cond)`` (e.g. :class:`genjax.nn.FieldNet`).
        sde: the forward SDE.
        parameterisation, weighting, reduction, time_sampling, importance_sampling, t_min: see :func:`dsm_loss`.
        cond_dropout: probability of replacing each attribute / covariate by its null token
            (:func:`genjax.nn.drop_condition`), to train the unconditional branch for classifier-free guidance.

    Returns:
        ``loss_fn``; ``batch`` is an array ``x0: (b, d)`` or a dict ``{"x": (b, d), "cond": Condition}``.

    Raises:
        ValueError: on invalid options (checked here, before any compute).
    """
    check_dsm_options(parameterisation, weighting, reduction, time_sampling, t_min, cond_dropout)

    def loss_fn(params, batch, key, step):
        del step
        x0, cond = split_field_batch(batch)
        key_drop, key_loss = jax.random.split(key)
        cond = drop_condition(key_drop, cond, cond_dropout)
        apply = lambda x, t, c: model.apply(params, x, t, c)
        return dsm_loss(
            key_loss, apply, sde, x0, cond=cond, parameterisation=parameterisation, weighting=weighting,
            reduction=reduction, time_sampling=time_sampling, importance_sampling=importance_sampling, t_min=t_min,
        )

    return loss_fn

