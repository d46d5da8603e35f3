"""Conditional flow matching (Lipman et al. 2023, eq. 9): the velocity network regresses the conditional velocity
``u_t = alpha'(t) x + sigma'(t) eps`` of a probability path at ``x_t = alpha(t) x + sigma(t) eps``; the minimiser is
the marginal velocity, whose ODE carries ``N(0, I)`` at ``t = 1`` to the data at ``t = 0``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._checks import check_choice, check_range
from .._typing import Array, Coupling, OTMethod, Params, PRNGKeyArray, Reduction, TimeSampling
from ..nn import drop_condition, sample_times, split_field_batch
from ._coupling import condition_groups, ot_coupling
from ._path import AbstractPath, LinearPath

__all__ = ["cfm_loss", "make_flow_loss", "check_flow_options"]


def cfm_loss(
    key: PRNGKeyArray, apply_fn: Callable[..., Array], path: AbstractPath, x: Array, *, cond: Any = None,
    coupling: Coupling = "independent", groups: Array | None = None, ot_method: OTMethod = "host",
    time_sampling: TimeSampling = "stratified", reduction: Reduction = "mean"
) -> tuple[Array, dict[str, Array]]:
    """Conditional flow matching loss for one batch (Lipman et al. 2023, eq. 9).

    ``loss = mean_i R_j (v(x_t, t, cond)_ij - u_t,ij)^2`` with ``x_t = alpha x + sigma eps``, ``u_t = alpha' x +
    sigma' eps`` (``R``: mean or sum over dimensions). Its minimiser is the marginal velocity ``E[u_t | x_t,
    cond]``; at it the loss equals ``E_t tr Cov(u_t | x_t) / d`` (the irreducible part).

    Arguments:
        key: PRNG key (times, noise).
        apply_fn: ``apply_fn(x_t, t, cond) -> (n, d)``, the velocity network (``cond`` may be ``None``).
        path: the probability path (:class:`LinearPath`, :class:`VPPath`).
        x: data ``(n, d)``.
        cond: optional :class:`genjax.nn.Condition` with leading ``n`` (what the network sees).
        coupling: ``"independent"`` (``eps`` i.i.d.) or ``"ot"`` (:func:`ot_coupling` within ``groups``).
        groups: group ids for the OT coupling (default: all one group).
        ot_method: how the OT assignment is solved, see :func:`ot_coupling`.
        time_sampling: see :func:`genjax.sample_times` (times uniform on ``[0, 1)``).
        reduction: ``"mean"`` or ``"sum"`` over dimensions.

    Returns:
        ``(loss, aux)``: float32 scalar; ``aux = {"velocity_mse": mean squared velocity error}``.

    Raises:
        ValueError: on unknown option names.
    """
    check_flow_options(path, coupling, ot_method, time_sampling, reduction, 0.0)
    n = x.shape[0]
    key_t, key_eps = jax.random.split(key)
    t = sample_times(key_t, n, time_sampling).astype(x.dtype)
    eps = jax.random.normal(key_eps, x.shape, x.dtype)
    if coupling == "ot":
        eps = ot_coupling(x, eps, groups=groups, method=ot_method)
    xt, ut = path.interpolate(x, eps, t)
    sq = (apply_fn(xt, t, cond) - ut) ** 2
    per_point = jnp.mean(sq, axis=-1) if reduction == "mean" else jnp.sum(sq, axis=-1)
    return jnp.mean(per_point), {"velocity_mse": jnp.mean(sq)}


def check_flow_options(path: AbstractPath, coupling: Coupling, ot_method: OTMethod, time_sampling: TimeSampling,
                       reduction: Reduction, cond_dropout: float = 0.0) -> None:
    """Host-side checks of the options of conditional flow matching (before any compute).

    Raises:
        ValueError: ``path`` not a genjax :class:`AbstractPath`, an unknown option value, or ``cond_dropout``
            outside ``[0, 1]``.
    """
    if not isinstance(path, AbstractPath):
        raise ValueError(f"path must be a genjax AbstractPath (LinearPath, VPPath); got {type(path).__name__}")
    check_choice("coupling", coupling, Coupling)
    check_choice("ot_method", ot_method, OTMethod)
    check_choice("time sampling", time_sampling, TimeSampling)
    check_choice("reduction", reduction, Reduction)
    check_range("cond_dropout", cond_dropout, low=0.0, high=1.0)


def make_flow_loss(
    model: Any, path: AbstractPath | None = None, *, coupling: Coupling = "independent",
    ot_method: OTMethod = "host", time_sampling: TimeSampling = "stratified", reduction: Reduction = "mean",
    cond_dropout: float = 0.0
) -> Callable[[Params, Any, PRNGKeyArray, Array], tuple[Array, dict]]:
    """Conditional flow matching as ``loss_fn(params, batch, key, step) -> (loss, aux)`` for :func:`genjax.fit`.

    Arguments:
        model: a Flax module called as ``model.apply(params, x, t, cond)`` (e.g. :class:`genjax.nn.FieldNet`).
        path: the probability path (default :class:`LinearPath`).
        coupling, ot_method, time_sampling, reduction: see :func:`cfm_loss`. With ``"ot"`` and a conditional
            batch, noise is matched within groups of identical labels (:func:`condition_groups`, before condition
            dropout).
        cond_dropout: as :func:`genjax.diffusion.make_dsm_loss` (condition dropout for classifier-free guidance).

    Returns:
        ``loss_fn(params, batch, key, step)`` with a batch ``x: (b, d)`` or ``{"x": (b, d), "cond": Condition}``.

    Raises:
        ValueError: an invalid path or option value, checked here before any compute.
    """
    path = LinearPath() if path is None else path
    check_flow_options(path, coupling, ot_method, time_sampling, reduction, cond_dropout)

    def loss_fn(params, batch, key, step):
        del step
        x, cond = split_field_batch(batch)
        key_drop, key_loss = jax.random.split(key)
        groups = condition_groups(cond, x.shape[0]) if coupling == "ot" else None
        cond = drop_condition(key_drop, cond, cond_dropout)
        apply = lambda x, t, c: model.apply(params, x, t, c)
        return cfm_loss(key_loss, apply, path, x, cond=cond, coupling=coupling, groups=groups, ot_method=ot_method,
                        time_sampling=time_sampling, reduction=reduction)

    return loss_fn
