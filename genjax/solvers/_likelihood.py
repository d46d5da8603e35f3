"""Exact log-densities through an ODE, by the instantaneous change of variables (Chen et al. 2018; Grathwohl
et al. 2019, FFJORD): :func:`log_likelihood` for a diffusion's probability-flow ODE (Song et al. 2021, app. D.2),
:func:`flow_log_likelihood` for a flow-matching velocity field. The divergence is exact (``d`` Jacobian-vector
products, for small ``d``) or Hutchinson's estimate with one Rademacher probe per point held fixed for the whole
solve (unbiased for ``log p``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax

from .._typing import Array, Divergence, PRNGKeyArray
from ..diffusion import AbstractSDE
from ..fields import ProbabilityFlow
from ..flow import AbstractPath, LinearPath
from ._common import DEFAULT_MAX_STEPS, check_likelihood_input, log_likelihood_batch

__all__ = ["log_likelihood", "flow_log_likelihood"]


@eqx.filter_jit
def _log_likelihood_impl(key, score_fn, sde, x, cond, divergence, solver, rtol, atol, t_min, max_steps):
    return log_likelihood_batch(
        ProbabilityFlow(score_fn, sde), sde, x, jax.random.split(key, x.shape[0]), cond, divergence=divergence,
        solver=solver, rtol=rtol, atol=atol, t0=t_min, t1=1.0, max_steps=max_steps,
    )


def log_likelihood(
    key: PRNGKeyArray, score_fn: Callable[..., Array], sde: AbstractSDE, x: Array, *, cond: Any = None,
    divergence: Divergence = "hutchinson", solver: diffrax.AbstractSolver | None = None, rtol: float = 1e-5,
    atol: float = 1e-5, t_min: float = 1e-5, max_steps: int = DEFAULT_MAX_STEPS
) -> Array:
    """Log-density of points under the model defined by the probability-flow ODE (Song et al. 2021, app. D.2;
    Grathwohl et al. 2019, FFJORD).

    Integrates ``d/dt [y, l] = [v(y, t), div v(y, t)]`` from ``(x, 0)`` at ``t_min`` to ``t = 1`` with
    ``v = f y - g^2/2 score``; then ``log p_{t_min}(x) = log prior(y(1)) + l(1)``. ``divergence="hutchinson"``
    estimates ``div v = E[e^T (dv/dy) e]`` with one Rademacher vector ``e`` per point, fixed for the whole solve
    (one Jacobian-vector product per evaluation; unbiased for ``log p``); ``"exact"`` takes the trace of the full
    Jacobian (``d`` Jacobian-vector products: for small ``d``).

    Arguments:
        key: PRNG key (Hutchinson probes; unused for ``"exact"``).
        score_fn, sde, cond: as :func:`sample_reverse_sde`.
        x: points ``(n, d)`` float32.
        divergence: ``"hutchinson"`` or ``"exact"``.
        solver: diffrax ODE solver (default ``Tsit5``); rtol, atol: PID tolerances.
        t_min: the time whose marginal density is returned (``p_{t_min}`` approximates the data density).
        max_steps: bound on adaptive steps (an error is raised when hit).

    Returns:
        ``log p(x)`` in nats, ``(n,)`` float32.

    Raises:
        ValueError: if ``x`` is not 2-d or not finite, ``divergence`` is unknown, ``t_min`` is outside ``(0, 1)``,
            or ``cond`` has the wrong leading size.
    """
    x = check_likelihood_input(x, divergence, t_min, cond, "log_likelihood")
    if solver is None:
        solver = diffrax.Tsit5()
    return _log_likelihood_impl(key, score_fn, sde, x, cond, divergence, solver, rtol, atol, float(t_min),
                                int(max_steps))


@eqx.filter_jit
def _flow_log_likelihood_impl(key, velocity_fn, path, x, cond, divergence, solver, rtol, atol, t_min, max_steps):
    return log_likelihood_batch(velocity_fn, path, x, jax.random.split(key, x.shape[0]), cond,
                                 divergence=divergence, solver=solver, rtol=rtol, atol=atol, t0=t_min, t1=1.0,
                                 max_steps=max_steps)


def flow_log_likelihood(
    key: PRNGKeyArray, velocity_fn: Callable[..., Array], x: Array, *, path: AbstractPath | None = None,
    cond: Any = None, divergence: Divergence = "hutchinson", solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5, atol: float = 1e-5, t_min: float = 0.0, max_steps: int = DEFAULT_MAX_STEPS
) -> Array:
    """Exact log-density of points under a flow-matching model (continuous normalising flow; Chen et al. 2018).

    Integrates ``d/dt [y, l] = [v(y, t), div v(y, t)]`` from ``(x, 0)`` at ``t_min`` to ``t = 1``; then
    ``log p_{t_min}(x) = log N(y(1); 0, I) + l(1)``. ``divergence="hutchinson"``: one Rademacher probe per point,
    fixed for the whole solve (one Jacobian-vector product per evaluation, unbiased for ``log p``);
    ``"exact"``: the trace of the full Jacobian (``d`` products; for small ``d``).

    Arguments:
        velocity_fn, path, cond: as :func:`sample_flow`.
        key, x, divergence, rtol, atol, max_steps: as :func:`log_likelihood`.
        solver: diffrax ODE solver (default ``Dopri5``).
        t_min: the time whose marginal density is returned, in ``[0, 1)`` (0: the model's data density; for a
            :class:`genjax.LinearPath` with ``sigma_min > 0`` that is the data convolved with
            ``N(0, sigma_min^2 I)``).

    Returns:
        ``log p(x)`` in nats, ``(n,)`` float32.

    Raises:
        ValueError: if ``x`` is not 2-d or not finite, ``divergence`` or ``path`` is invalid, ``t_min`` is outside
            ``[0, 1)``, or ``cond`` has the wrong leading size.
    """
    path = LinearPath() if path is None else path
    if not isinstance(path, AbstractPath):
        raise ValueError(f"flow_log_likelihood: path must be a genjax AbstractPath; got {type(path).__name__}")
    x = check_likelihood_input(x, divergence, t_min, cond, "flow_log_likelihood", zero_t_min=True)
    solver = diffrax.Dopri5() if solver is None else solver
    return _flow_log_likelihood_impl(key, velocity_fn, path, x, cond, divergence, solver, rtol, atol,
                                     float(t_min), int(max_steps))
