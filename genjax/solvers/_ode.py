"""Samplers that integrate an ODE from prior draws at ``t = 1`` backwards in time, on diffrax.

* :func:`sample_probability_flow_ode`: the probability-flow ODE of a diffusion (Song et al. 2021, eq. 13),
  ``dx/dt = f x - g^2/2 score``; adaptive Tsit5 + PID by default, fixed steps or an explicit grid
  (:func:`time_grid`, e.g. Karras et al.'s EDM grid) as options.
* :func:`sample_flow`: a flow-matching velocity field ``dx/dt = v(x, t, cond)`` (adaptive Dopri5 by default; Euler /
  Heun on fixed steps).

Both are the same per-point solves (:func:`genjax.solvers.solve_ode_batch`), so a velocity field, a guided field
and a diffusion's :class:`genjax.ProbabilityFlow` are interchangeable. ODEs are integrated natively backwards in
time. Jitted with ``equinox.filter_jit``: new keys or parameters do not recompile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_choice
from .._typing import Array, GridKind, PRNGKeyArray
from ..diffusion import AbstractSDE
from ..fields import ProbabilityFlow
from ..flow import AbstractPath, LinearPath
from ._common import check_sampler_args, evals_per_step, maybe_denoise, ode_step_settings, solve_ode_batch

__all__ = ["time_grid", "sample_probability_flow_ode", "sample_flow"]


def time_grid(sde: AbstractSDE, n_steps: int, t_min: float = 1e-3, *, kind: GridKind = "uniform", rho: float = 7.0) -> Array:
    """A decreasing time grid ``1 = t_0 > ... > t_n = t_min`` for fixed-step reverse solvers.

    Arguments:
        sde: the forward SDE (used by ``kind="edm"``).
        n_steps: number of steps ``n``.
        t_min: last time.
        kind: ``"uniform"`` in ``t``, or ``"edm"``: uniform in ``(sigma/alpha)^(1/rho)`` (Karras et al. 2022,
            eq. 5), which concentrates steps at low noise where the probability-flow trajectories bend.
        rho: the EDM exponent.

    Returns:
        float32 array ``(n_steps + 1,)``.

    Raises:
        ValueError: on an unknown ``kind`` or invalid ``n_steps`` / ``t_min``.
    """
    if not isinstance(n_steps, int | np.integer) or n_steps < 1:
        raise ValueError(f"time_grid: n_steps must be a positive int; got {n_steps!r}")
    if not 0.0 < t_min < 1.0:
        raise ValueError(f"time_grid: t_min must be in (0, 1); got {t_min}")
    check_choice("time_grid: kind", kind, GridKind)
    if kind == "uniform":
        return jnp.linspace(1.0, t_min, n_steps + 1, dtype=jnp.float32)
    # sigma/alpha is increasing in t; invert it on a fine grid in float64 numpy (host side, static).
    fine = np.linspace(t_min, 1.0, 20001)
    with jax.enable_x64(True):
        ratio = np.asarray(sde.std(jnp.asarray(fine)) / sde.alpha(jnp.asarray(fine)), np.float64)
    lo, hi = ratio[0] ** (1 / rho), ratio[-1] ** (1 / rho)
    target = (hi + np.linspace(0.0, 1.0, n_steps + 1) * (lo - hi)) ** rho
    ts = np.interp(np.log(target), np.log(ratio), fine)
    ts[0], ts[-1] = 1.0, t_min
    return jnp.asarray(ts, jnp.float32)


@eqx.filter_jit
def _pf_ode_impl(key, score_fn, sde, cond, n_steps, ts, *, shape, solver, rtol, atol, t_min, denoise, max_steps):
    n, d = shape
    x, nfe = solve_ode_batch(
        ProbabilityFlow(score_fn, sde), sde, jax.random.split(key, n), cond, n_steps, ts, d=d, solver=solver,
        rtol=rtol, atol=atol, t0=1.0, t1=t_min, max_steps=max_steps,
    )
    return maybe_denoise(score_fn, sde, x, nfe, t_min, cond, denoise)


def sample_probability_flow_ode(
    key: PRNGKeyArray, score_fn: Callable[..., Array], sde: AbstractSDE, shape: tuple[int, int],
    rtol: float = 1e-5, atol: float = 1e-5, *, cond: Any = None, solver: diffrax.AbstractSolver | None = None,
    n_steps: int | None = None, ts: Array | None = None, t_min: float = 1e-3, denoise: bool = True,
    max_steps: int | None = None
) -> tuple[Array, Array]:
    """Sample by integrating the probability-flow ODE ``dx/dt = f(t) x - g(t)^2/2 score(x, t)`` from ``t = 1``
    (prior draw) backwards to ``t_min`` (Song et al. 2021, eq. 13).

    Default: adaptive ``diffrax.Tsit5()`` with a PID controller (``rtol``, ``atol``), one solve per point (per-point
    error control), ``vmap``'d. Fixed steps: give ``n_steps`` (uniform grid) or an explicit decreasing grid ``ts``
    from 1 to ``t_min`` (e.g. :func:`time_grid` with ``kind="edm"``), typically with ``diffrax.Heun()``.

    Arguments:
        key: PRNG key (prior draw only; the ODE is deterministic).
        score_fn, sde, shape, cond, t_min, denoise: as :func:`sample_reverse_sde`.
        rtol, atol: tolerances of the adaptive solve.
        solver: a diffrax ODE solver (default ``Tsit5``).
        n_steps: fixed equal steps instead of adaptive ones (a runtime value bounded by ``max_steps``).
        ts: explicit time grid, ``(m + 1,)`` decreasing from 1 to ``t_min`` (overrides ``n_steps``).
        max_steps: bound on the number of steps (default: ``n_steps``, the grid's length, or 4096 when adaptive,
            where an error is raised when it is hit).

    Returns:
        ``(x, nfe)``: samples ``(n, d)`` and the batched score evaluations (int32 scalar).

    Raises:
        ValueError: on a bad shape, ``t_min``, ``n_steps``, a grid that is not decreasing from 1 to ``t_min``, or
            ``cond``.
    """
    check_sampler_args(shape, t_min, cond, n_steps, "sample_probability_flow_ode")
    n_steps, ts, max_steps = ode_step_settings(n_steps, ts, max_steps, t_min, "sample_probability_flow_ode")
    if solver is None:
        solver = diffrax.Tsit5()
    evals_per_step(solver)
    return _pf_ode_impl(
        key, score_fn, sde, cond, n_steps, ts, shape=tuple(int(s) for s in shape), solver=solver, rtol=rtol,
        atol=atol, t_min=float(t_min), denoise=bool(denoise), max_steps=int(max_steps),
    )


@eqx.filter_jit
def _sample_flow_impl(key, velocity_fn, path, cond, n_steps, ts, *, shape, solver, rtol, atol, t_min, max_steps):
    n, d = shape
    return solve_ode_batch(velocity_fn, path, jax.random.split(key, n), cond, n_steps, ts, d=d, solver=solver,
                            rtol=rtol, atol=atol, t0=1.0, t1=t_min, max_steps=max_steps)


def sample_flow(
    key: PRNGKeyArray, velocity_fn: Callable[..., Array], shape: tuple[int, int], *,
    path: AbstractPath | None = None, cond: Any = None, solver: diffrax.AbstractSolver | None = None,
    n_steps: int | None = None, ts: Array | None = None, rtol: float = 1e-5, atol: float = 1e-5,
    t_min: float = 0.0, max_steps: int | None = None
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
    check_sampler_args(shape, t_min, cond, n_steps, "sample_flow", zero_t_min=True)
    n_steps, ts, max_steps = ode_step_settings(n_steps, ts, max_steps, t_min, "sample_flow")
    if solver is None:
        solver = diffrax.Dopri5() if n_steps is None and ts is None else diffrax.Euler()
    evals_per_step(solver)  # raises early for solvers whose evaluations cannot be counted
    return _sample_flow_impl(key, velocity_fn, path, cond, n_steps, ts, shape=tuple(int(s) for s in shape),
                             solver=solver, rtol=rtol, atol=atol, t_min=float(t_min), max_steps=int(max_steps))
