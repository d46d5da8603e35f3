"""What every sampler and likelihood shares: host-side argument checks, the per-point evaluation of a batched
field, counting field evaluations, and the vmapped per-point ODE solves (sampling and change of variables).

Each point is solved as its own ODE/SDE with its own PRNG key ``jax.random.split(key, n)[i]`` (prior draw and
Brownian path), and the per-point solve is ``jax.vmap``'d over the batch: a sample depends only on its key,
adaptive solvers control the error of every point separately, and the field still sees a ``(n, d)`` batch
(``vmap`` of ``field(x[None], t[None])``). Under ``vmap`` an adaptive solve runs until its slowest point has
finished, so the number of (batched) field evaluations reported, ``nfe``, is that of the slowest point.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_choice
from .._typing import Array, Divergence
from ..diffusion import AbstractSDE
from ..nn import call_field
from ._predictor_corrector import PredictorCorrector

__all__ = ["DEFAULT_MAX_STEPS", "check_sampler_args", "check_cond_leading", "evals_per_step", "count_evaluations",
           "tweedie_denoise", "maybe_denoise", "field_at_point", "ode_step_settings", "solve_ode_batch", "check_likelihood_input",
           "log_likelihood_batch"]


DEFAULT_MAX_STEPS = 4096


def check_sampler_args(shape, t_min: float, cond, n_steps: int | None = None, name: str = "sampler", *,
                  zero_t_min: bool = False) -> tuple[int, int]:
    """Host-side checks shared by the samplers and likelihoods; ``zero_t_min`` admits ``t_min = 0`` (flows,
    whose velocity is finite at the data end; the diffusion score is not)."""
    if not (isinstance(shape, tuple | list) and len(shape) == 2 and all(isinstance(s, int | np.integer) for s in shape)):
        raise ValueError(f"{name}: shape must be a tuple (n, d) of two ints; got {shape!r}")
    n, d = (int(s) for s in shape)
    if n < 1 or d < 1:
        raise ValueError(f"{name}: shape must be positive; got {shape!r}")
    if not (0.0 <= t_min < 1.0 if zero_t_min else 0.0 < t_min < 1.0):
        raise ValueError(f"{name}: t_min must be in {'[0, 1)' if zero_t_min else '(0, 1)'}; got {t_min}")
    if n_steps is not None and (not isinstance(n_steps, int | np.integer) or n_steps < 1):
        raise ValueError(f"{name}: n_steps must be a positive int; got {n_steps!r}")
    check_cond_leading(cond, n, name)
    return n, d


def check_cond_leading(cond, n: int, name: str) -> None:
    if cond is None:
        return
    for path, leaf in jax.tree_util.tree_leaves_with_path(cond):
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != n:
            raise ValueError(
                f"{name}: every cond array needs leading size n={n}; cond{jax.tree_util.keystr(path)} has shape "
                f"{jnp.shape(leaf)}"
            )


def _one(tree):
    return jax.tree.map(lambda a: a[None], tree)


def evals_per_step(solver) -> tuple[int, int]:
    """(score evaluations per step, extra evaluations at the start) of a diffrax solver's drift."""
    if isinstance(solver, PredictorCorrector):
        return 1 + solver.n_corrector, 0
    if isinstance(solver, diffrax.Euler | diffrax.SEA):
        return 1, 0
    tableau = getattr(solver, "tableau", None)
    if isinstance(solver, diffrax.AbstractSRK):
        stages = len(tableau.b_sol)
        ignored = 0 if tableau.ignore_stage_f is None else int(np.sum(tableau.ignore_stage_f))
        return stages - ignored, 0
    if isinstance(tableau, diffrax.ButcherTableau):
        stages = len(tableau.c) + 1
        return (stages - 1, 1) if tableau.fsal else (stages, 0)
    raise ValueError(f"cannot count score evaluations of solver {type(solver).__name__}; use a diffrax Runge-Kutta or SRK solver")


def count_evaluations(stats, solver) -> Array:
    """Batched score evaluations of a vmapped solve: those of its slowest point (``dt0`` is always given, so no
    evaluations are spent choosing the first step)."""
    per_step, start = evals_per_step(solver)
    steps = stats["num_steps"]  # accepted + rejected
    return (per_step * jnp.max(steps) + start).astype(jnp.int32)


def tweedie_denoise(score_fn, sde: AbstractSDE, x: Array, t_min: float, cond) -> Array:
    """Tweedie's formula at ``t_min``: ``E[x0 | x_t] = (x + sigma^2 score) / alpha`` (one extra evaluation)."""
    n = x.shape[0]
    t = jnp.full((n,), t_min, x.dtype)
    score = call_field(score_fn, x, t, cond)
    sigma = sde.std(t_min)
    return (x + sigma**2 * score) / sde.alpha(t_min)


def maybe_denoise(score_fn, sde: AbstractSDE, x: Array, nfe: Array, t_min: float, cond, denoise: bool):
    """``(x, nfe)`` after Tweedie's denoising step at ``t_min`` when ``denoise`` (one more evaluation)."""
    if not denoise:
        return x, nfe
    return tweedie_denoise(score_fn, sde, x, t_min, cond), nfe + 1


def field_at_point(field, y: Array, t: Array, cond) -> Array:
    """A batched field at one point ``y: (d,)`` and scalar ``t`` (a batch of one)."""
    return call_field(field, y[None], jnp.reshape(t, (1,)), None if cond is None else _one(cond))[0]


def ode_step_settings(n_steps, ts, max_steps, t_min: float, name: str):
    """Resolve the step options of an ODE sampler from ``t = 1`` to ``t_min``: an explicit grid ``ts``
    (strictly decreasing from 1 to ``t_min``), ``n_steps`` equal steps (a runtime int32 bounded by
    ``max_steps``), or adaptive steps (``max_steps`` default 4096). Returns ``(n_steps, ts, max_steps)``."""
    if ts is not None:
        ts_np = np.asarray(ts)
        if ts_np.ndim != 1 or ts_np.size < 2 or not np.all(np.diff(ts_np) < 0):
            raise ValueError(f"{name}: ts must be a strictly decreasing 1-d grid; got {ts_np!r}")
        if not (np.isclose(ts_np[0], 1.0) and np.isclose(ts_np[-1], t_min)):
            raise ValueError(f"{name}: ts must run from 1 to t_min={t_min}; got {ts_np[0]} .. {ts_np[-1]}")
        return None, jnp.asarray(ts_np, jnp.float32), ts_np.size - 1
    if n_steps is not None:
        max_steps = int(n_steps) if max_steps is None else int(max_steps)
        if max_steps < n_steps:
            raise ValueError(f"{name}: max_steps={max_steps} is below n_steps={n_steps}")
        return jnp.asarray(n_steps, jnp.int32), None, max_steps
    return None, None, DEFAULT_MAX_STEPS if max_steps is None else int(max_steps)


def solve_ode_batch(field, prior, keys, cond, n_steps, ts, *, d, solver, rtol, atol, t0, t1, max_steps):
    """Per-point solves of ``dx/dt = field(x, t, cond)`` from a ``prior`` draw at ``t0`` to ``t1`` (either
    direction), vmapped over ``keys``; adaptive (PID) unless ``ts`` (grid) or ``n_steps`` (equal steps) is given.
    Shared by the diffusion probability-flow sampler and velocity-field (flow-matching) samplers.

    Returns:
        ``(x, nfe)``: end points ``(n, d)`` and the slowest point's number of field evaluations.
    """
    mode = "grid" if ts is not None else "fixed" if n_steps is not None else "adaptive"

    def solve_one(k, c):
        y0 = prior.prior_sample(k, (d,))
        if mode == "grid":
            controller, dt0 = diffrax.StepTo(ts=ts), None
        elif mode == "fixed":
            controller, dt0 = diffrax.ConstantStepSize(), (t1 - t0) / n_steps.astype(jnp.float32)
        else:
            # An explicit first step (what diffrax picks for time-reversed terms anyway) keeps nfe exact.
            controller, dt0 = diffrax.PIDController(rtol=rtol, atol=atol), 0.01 * (t1 - t0)
        term = diffrax.ODETerm(lambda t, y, args: field_at_point(field, y, t, c))
        sol = diffrax.diffeqsolve(
            term, solver, t0, t1, dt0, y0, stepsize_controller=controller, max_steps=max_steps,
            saveat=diffrax.SaveAt(t1=True), adjoint=diffrax.ForwardMode(),
        )
        return sol.ys[-1], sol.stats

    x, stats = jax.vmap(solve_one)(keys, cond)
    return x, count_evaluations(stats, solver)


def check_likelihood_input(x, divergence: Divergence, t_min: float, cond, name: str, *, zero_t_min: bool = False):
    """Host-side checks of a likelihood evaluation; returns ``x`` as a float array ``(n, d)``."""
    x_np = np.asarray(x)
    if x_np.ndim != 2:
        raise ValueError(f"{name}: x must be (n, d); got shape {x_np.shape}")
    finite = np.isfinite(x_np).all(axis=-1)
    if not finite.all():
        raise ValueError(f"{name}: x has non-finite values (first in row {int(np.argmin(finite))})")
    check_choice(f"{name}: divergence", divergence, Divergence)
    check_sampler_args(x_np.shape, t_min, cond, None, name, zero_t_min=zero_t_min)
    return jnp.asarray(x)


def log_likelihood_batch(field, prior, x, keys, cond, *, divergence, solver, rtol, atol, t0, t1, max_steps):
    """Instantaneous change of variables along ``dy/dt = field(y, t, cond)`` from ``x`` at ``t0`` to ``t1``:
    ``log p_{t0}(x) = log prior(y(t1)) + int_{t0}^{t1} div field dt`` (Chen et al. 2018; Grathwohl et al. 2019),
    per point, vmapped; the divergence is exact (``d`` JVPs) or Hutchinson with one Rademacher probe per point
    held fixed for the whole solve (unbiased)."""
    d = x.shape[-1]

    def solve_one(x0, k, c):
        v = lambda t, y: field_at_point(field, y, t, c)
        if divergence == "exact":

            def aug(t, state, args):
                y, _ = state
                out, jvp = jax.linearize(lambda z: v(t, z), y)
                return out, jnp.trace(jax.vmap(jvp)(jnp.eye(d, dtype=y.dtype)))

        else:
            probe = jax.random.rademacher(k, (d,), dtype=x0.dtype)

            def aug(t, state, args):
                y, _ = state
                out, jv = jax.jvp(lambda z: v(t, z), (y,), (probe,))
                return out, jnp.dot(probe, jv)

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(aug), solver, t0, t1, 0.01 * (t1 - t0), (x0, jnp.zeros((), x0.dtype)),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps,
            saveat=diffrax.SaveAt(t1=True),
        )
        z1, delta = sol.ys[0][-1], sol.ys[1][-1]
        return prior.prior_log_prob(z1) + delta

    return jax.vmap(solve_one)(x, keys, cond)
