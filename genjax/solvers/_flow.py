"""Sampling and exact likelihood of flow-matching models, on the ODE machinery of :mod:`genjax._sampling`.

A velocity field ``v(x, t, cond)`` trained by flow matching (:func:`genjax.cfm_loss`) carries the prior
``N(0, I)`` at ``t = 1`` to the data at ``t = 0`` along ``dx/dt = v``. :func:`sample_flow` integrates that ODE
backwards in time from prior draws; :func:`flow_log_likelihood` integrates it forwards from the data with the
instantaneous change of variables. Both are the same per-point diffrax solves as the probability-flow ODE of the
diffusion models (one solve per point, ``vmap``'d; adaptive solves control every point's error), so a velocity
field, a guided field (:class:`genjax.GuidedField`) and a diffusion's :class:`genjax.ProbabilityFlow` are
interchangeable here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax

from ..flow._flow import AbstractPath, LinearPath
from ._diffusion import (
    _DEFAULT_MAX_STEPS,
    _check_common,
    _check_likelihood_input,
    _evals_per_step,
    _log_likelihood_batch,
    _ode_steps,
    _solve_ode_batch,
)
from .._typing import Array, PRNGKeyArray

__all__ = ["sample_flow", "flow_log_likelihood"]


@eqx.filter_jit
def _sample_flow_impl(key, velocity_fn, path, cond, n_steps, ts, *, shape, solver, rtol, atol, t_min, max_steps):
    n, d = shape
    return _solve_ode_batch(velocity_fn, path, jax.random.split(key, n), cond, n_steps, ts, d=d, solver=solver,
                            rtol=rtol, atol=atol, t0=1.0, t1=t_min, max_steps=max_steps)


def sample_flow(
    key: PRNGKeyArray,
    velocity_fn: Callable[..., Array],
    shape: tuple[int, int],
    *,
    path: AbstractPath | None = None,
    cond: Any = None,
    solver: diffrax.AbstractSolver | None = None,
    n_steps: int | None = None,
    ts: Array | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float = 0.0,
    max_steps: int | None = None,
) -> tuple[Array, Array]:
    """Sample a flow-matching model: integrate ``dx/dt = v(x, t, cond)`` from a prior draw at ``t = 1`` backwards
    to ``t_min`` (default 0, the data end), one diffrax solve per point, ``vmap``'d over per-point keys.

    Default: adaptive ``diffrax.Dopri5()`` with a PID controller (``rtol``, ``atol``). Fixed steps: ``n_steps``
    equal steps (default solver then ``diffrax.Euler()``, the rectified-flow sampler; ``diffrax.Heun()`` is
    second order at two evaluations per step) or an explicit decreasing grid ``ts`` from 1 to ``t_min``.

    Arguments:
        key: PRNG key (the prior draws; the ODE is deterministic).
        velocity_fn: batched ``v(x, t)`` (or ``v(x, t, cond)``), ``x: (n, d)``, ``t: (n,)`` -> ``(n, d)`` float32;
            e.g. a :class:`genjax.VelocityField` or a :class:`genjax.GuidedField` around one.
        shape: ``(n, d)``.
        path: the probability path the field was trained on (its prior is what is drawn at ``t = 1``; default
            :class:`genjax.LinearPath`, whose prior, like every genjax path's, is ``N(0, I)``).
        cond: optional :class:`genjax.nn.Condition` with leading size ``n``, passed to ``velocity_fn``.
        solver: a diffrax ODE solver (default ``Dopri5`` adaptive, ``Euler`` for fixed steps).
        n_steps: equal steps instead of adaptive ones (a runtime value: any ``n_steps <= max_steps`` reuses the
            compiled sampler).
        ts: explicit time grid ``(m + 1,)`` strictly decreasing from 1 to ``t_min`` (overrides ``n_steps``).
        rtol, atol: tolerances of the adaptive solve.
        t_min: end time in ``[0, 1)``.
        max_steps: bound on the number of steps (default ``n_steps``, the grid's length, or 4096 when adaptive,
            where an error is raised when it is hit).

    Returns:
        ``(x, nfe)``: samples ``(n, d)`` float32 and the number of batched evaluations of ``velocity_fn`` (int32
        scalar; the slowest point's for adaptive solves; a guided field evaluates its network ``1 + groups``
        times per evaluation).

    Raises:
        ValueError: on a bad shape, ``n_steps``, ``t_min``, grid, path, or a ``cond`` whose leading size is not
            ``n``.
    """
    path = LinearPath() if path is None else path
    if not isinstance(path, AbstractPath):
        raise ValueError(f"sample_flow: path must be a genjax AbstractPath (LinearPath, VPPath); got {type(path).__name__}")
    _check_common(shape, t_min, cond, n_steps, "sample_flow", zero_t_min=True)
    n_steps, ts, max_steps = _ode_steps(n_steps, ts, max_steps, t_min, "sample_flow")
    if solver is None:
        solver = diffrax.Dopri5() if n_steps is None and ts is None else diffrax.Euler()
    _evals_per_step(solver)  # raises early for solvers whose evaluations cannot be counted
    return _sample_flow_impl(key, velocity_fn, path, cond, n_steps, ts, shape=tuple(int(s) for s in shape),
                             solver=solver, rtol=rtol, atol=atol, t_min=float(t_min), max_steps=int(max_steps))


@eqx.filter_jit
def _flow_log_likelihood_impl(key, velocity_fn, path, x, cond, divergence, solver, rtol, atol, t_min, max_steps):
    return _log_likelihood_batch(velocity_fn, path, x, jax.random.split(key, x.shape[0]), cond,
                                 divergence=divergence, solver=solver, rtol=rtol, atol=atol, t0=t_min, t1=1.0,
                                 max_steps=max_steps)


def flow_log_likelihood(
    key: PRNGKeyArray,
    velocity_fn: Callable[..., Array],
    x: Array,
    *,
    path: AbstractPath | None = None,
    cond: Any = None,
    divergence: str = "hutchinson",
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float = 0.0,
    max_steps: int = _DEFAULT_MAX_STEPS,
) -> Array:
    """Exact log-density of points under a flow-matching model (continuous normalising flow; Chen et al. 2018).

    Integrates ``d/dt [y, l] = [v(y, t), div v(y, t)]`` from ``(x, 0)`` at ``t_min`` to ``t = 1``; then
    ``log p_{t_min}(x) = log N(y(1); 0, I) + l(1)``. ``divergence="hutchinson"``: one Rademacher probe per point,
    fixed for the whole solve (one Jacobian-vector product per evaluation, unbiased for ``log p``);
    ``"exact"``: the trace of the full Jacobian (``d`` products; for small ``d``).

    Arguments:
        key: PRNG key (Hutchinson probes; unused for ``"exact"``).
        velocity_fn, path, cond: as :func:`sample_flow`.
        x: points ``(n, d)`` float32.
        divergence: ``"hutchinson"`` or ``"exact"``.
        solver: diffrax ODE solver (default ``Dopri5``); rtol, atol: PID tolerances.
        t_min: the time whose marginal density is returned, in ``[0, 1)`` (0: the model's data density; for a
            :class:`genjax.LinearPath` with ``sigma_min > 0`` that is the data convolved with
            ``N(0, sigma_min^2 I)``).
        max_steps: bound on adaptive steps (an error is raised when hit).

    Returns:
        ``log p(x)`` in nats, ``(n,)`` float32.

    Raises:
        ValueError: if ``x`` is not 2-d or not finite, ``divergence`` or ``path`` is invalid, ``t_min`` is outside
            ``[0, 1)``, or ``cond`` has the wrong leading size.
    """
    path = LinearPath() if path is None else path
    if not isinstance(path, AbstractPath):
        raise ValueError(f"flow_log_likelihood: path must be a genjax AbstractPath; got {type(path).__name__}")
    x = _check_likelihood_input(x, divergence, t_min, cond, "flow_log_likelihood", zero_t_min=True)
    solver = diffrax.Dopri5() if solver is None else solver
    return _flow_log_likelihood_impl(key, velocity_fn, path, x, cond, divergence, solver, rtol, atol,
                                     float(t_min), int(max_steps))
