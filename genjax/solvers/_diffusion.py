"""Samplers and likelihoods for score-based diffusion, on diffrax.

* :func:`sample_reverse_sde`: the reverse-time SDE (Euler-Maruyama on a fixed grid by default; any diffrax SDE
  solver, e.g. the additive-noise ``ShARK`` with adaptive steps, as an option).
* :func:`sample_probability_flow_ode`: the probability-flow ODE (adaptive Tsit5 + PID by default; fixed steps or
  an explicit time grid as an option).
* :func:`sample_predictor_corrector`: Euler-Maruyama predictor + Langevin corrector (Song et al. 2021, alg. 2-4).
* :func:`log_likelihood`: exact log-density through the probability-flow ODE, with a Hutchinson trace estimator
  (Rademacher noise fixed for the whole solve) or the exact divergence.

Design. Each point is solved as its own ODE/SDE with its own PRNG key ``jax.random.split(key, n)[i]`` (prior draw
and Brownian path), and the per-point solve is ``jax.vmap``'d over the batch: a sample depends only on its key
(the first rows of a draw of ``n`` points are those of a draw of ``m > n`` points with the same key, except for
the predictor-corrector sampler, whose step size averages over the batch), adaptive solvers control
the error of every point separately, and the score network still sees a ``(n, d)`` batch (``vmap`` of
``score_fn(x[None], t[None])``). Under ``vmap`` an adaptive solve runs until its slowest point has finished, so
the number of (batched) score evaluations reported, ``nfe``, is that of the slowest point.

Reverse-time SDEs are integrated forward in ``s = 1 - t`` (the Brownian motion's sign is immaterial), which
sidesteps diffrax issue #598 (stochastic Runge-Kutta solvers such as ``ShARK`` are wrong when integrating with
``t0 > t1``); ODEs are integrated natively backwards in time. Fixed steps use ``UnsafeBrownianPath`` (cheap, no
bisection); adaptive steps need a ``VirtualBrownianTree``. ``max_steps`` is the number of steps for fixed grids
and a deliberate bound (default 4096) for adaptive solves, which raise an error when it is hit.

All samplers are jitted (``equinox.filter_jit``): Python scalars, the shape, the solver and a score function that
is a plain Python function are static; arrays (keys, network parameters inside a
:class:`genjax.ScoreFunction`, conditions) are traced, so a second call with new keys or new parameters does not
recompile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax
import numpy as np

from ..diffusion._sde import AbstractSDE, _expand, call_score
from .._typing import Array, PRNGKeyArray

__all__ = [
    "sample_reverse_sde",
    "sample_probability_flow_ode",
    "sample_predictor_corrector",
    "log_likelihood",
    "time_grid",
    "ProbabilityFlow",
]

_DEFAULT_MAX_STEPS = 4096
_BATCH_AXIS = "genjax_batch"


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def _check_common(shape, t_min: float, cond, n_steps: int | None = None, name: str = "sampler", *,
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
    _check_cond_leading(cond, n, name)
    return n, d


def _check_cond_leading(cond, n: int, name: str) -> None:
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


def _evals_per_step(solver) -> tuple[int, int]:
    """(score evaluations per step, extra evaluations at the start) of a diffrax solver's drift."""
    if isinstance(solver, _PredictorCorrector):
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


def _nfe(stats, solver) -> Array:
    """Batched score evaluations of a vmapped solve: those of its slowest point (``dt0`` is always given, so no
    evaluations are spent choosing the first step)."""
    per_step, start = _evals_per_step(solver)
    steps = stats["num_steps"]  # accepted + rejected
    return (per_step * jnp.max(steps) + start).astype(jnp.int32)


def _levy_area(solver) -> type:
    """The concrete Brownian increment type a diffrax SDE solver needs (plain increments for Euler)."""
    levy = getattr(solver, "minimal_levy_area", None)
    if levy is not None and issubclass(levy, diffrax.AbstractSpaceTimeTimeLevyArea):
        return diffrax.SpaceTimeTimeLevyArea
    if levy is not None and issubclass(levy, diffrax.AbstractSpaceTimeLevyArea):
        return diffrax.SpaceTimeLevyArea
    return diffrax.BrownianIncrement


def _denoise(score_fn, sde: AbstractSDE, x: Array, t_min: float, cond) -> Array:
    """Tweedie's formula at ``t_min``: ``E[x0 | x_t] = (x + sigma^2 score) / alpha`` (one extra evaluation)."""
    n = x.shape[0]
    t = jnp.full((n,), t_min, x.dtype)
    score = call_score(score_fn, x, t, cond)
    sigma = sde.std(t_min)
    return (x + sigma**2 * score) / sde.alpha(t_min)


def time_grid(sde: AbstractSDE, n_steps: int, t_min: float = 1e-3, *, kind: str = "uniform", rho: float = 7.0) -> Array:
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
    if kind == "uniform":
        return jnp.linspace(1.0, t_min, n_steps + 1, dtype=jnp.float32)
    if kind != "edm":
        raise ValueError(f"time_grid: kind must be 'uniform' or 'edm'; got {kind!r}")
    # sigma/alpha is increasing in t; invert it on a fine grid in float64 numpy (host side, static).
    fine = np.linspace(t_min, 1.0, 20001)
    with jax.enable_x64(True):
        ratio = np.asarray(sde.std(jnp.asarray(fine)) / sde.alpha(jnp.asarray(fine)), np.float64)
    lo, hi = ratio[0] ** (1 / rho), ratio[-1] ** (1 / rho)
    target = (hi + np.linspace(0.0, 1.0, n_steps + 1) * (lo - hi)) ** rho
    ts = np.interp(np.log(target), np.log(ratio), fine)
    ts[0], ts[-1] = 1.0, t_min
    return jnp.asarray(ts, jnp.float32)


# ---------------------------------------------------------------------------------------------------------------
# reverse SDE
# ---------------------------------------------------------------------------------------------------------------


def _reverse_terms(score_fn, sde: AbstractSDE, cond, brownian) -> diffrax.MultiTerm:
    """Reverse SDE in ``s = 1 - t``: ``dy = -[f y - g^2 score](y, 1 - s) ds + g(1 - s) dW_s``."""

    def drift(s, y, args):
        t = 1.0 - s
        return -(sde.drift(y, t) - sde.diffusion(t) ** 2 * _field_one(score_fn, y, t, cond))

    def diffusion(s, y, args):
        return lineax.DiagonalLinearOperator(jnp.broadcast_to(sde.diffusion(1.0 - s), y.shape))

    return diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, brownian))


@eqx.filter_jit
def _reverse_sde_impl(key, score_fn, sde, cond, n_steps, *, shape, solver, adaptive, rtol, atol, t_min, denoise,
                      max_steps, brownian, brownian_tol, pc):
    n, d = shape
    keys = jax.random.split(key, n)
    s1 = 1.0 - t_min
    # The grid size is a runtime value (``max_steps`` bounds it), so changing n_steps does not recompile.
    dt0 = s1 / n_steps.astype(jnp.float32)
    levy = _levy_area(solver)

    def solve_one(k, c):
        key_prior, key_bm, key_pc = jax.random.split(k, 3)
        y1 = sde.prior_sample(key_prior, (d,))
        if brownian == "virtual":
            bm = diffrax.VirtualBrownianTree(0.0, s1, tol=brownian_tol, shape=(d,), key=key_bm, levy_area=levy)
        else:
            bm = diffrax.UnsafeBrownianPath(shape=(d,), key=key_bm, levy_area=levy)
        if adaptive:
            controller = diffrax.PIDController(rtol=rtol, atol=atol)
        else:
            controller = diffrax.ConstantStepSize()
        solv = solver
        if pc is not None:
            snr, n_corrector = pc
            solv = _PredictorCorrector(lambda s, y: _field_one(score_fn, y, 1.0 - s, c), snr, n_corrector)
        sol = diffrax.diffeqsolve(
            _reverse_terms(score_fn, sde, c, bm), solv, 0.0, s1, dt0, y1, args=key_pc,
            stepsize_controller=controller, max_steps=max_steps, saveat=diffrax.SaveAt(t1=True),
            adjoint=diffrax.ForwardMode(),
        )
        return sol.ys[-1], sol.stats

    x, stats = jax.vmap(solve_one, axis_name=_BATCH_AXIS)(keys, cond)
    nfe = _nfe(stats, solver if pc is None else _PredictorCorrector(None, *pc))
    if denoise:
        x = _denoise(score_fn, sde, x, t_min, cond)
        nfe = nfe + 1
    return x, nfe


def sample_reverse_sde(
    key: PRNGKeyArray,
    score_fn: Callable[..., Array],
    sde: AbstractSDE,
    shape: tuple[int, int],
    n_steps: int = 500,
    *,
    cond: Any = None,
    solver: diffrax.AbstractSolver | None = None,
    adaptive: bool = False,
    rtol: float = 1e-2,
    atol: float = 1e-2,
    t_min: float = 1e-3,
    denoise: bool = True,
    max_steps: int | None = None,
    brownian: str | None = None,
    brownian_tol: float = 1e-4,
) -> tuple[Array, Array]:
    """Sample by integrating the reverse-time SDE from the prior at ``t = 1`` down to ``t_min``.

    ``dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dW_bar`` (Song et al. 2021, eq. 6), one diffrax solve per
    point, ``vmap``'d over per-point keys. Default: Euler-Maruyama with ``n_steps`` equal steps on an
    ``UnsafeBrownianPath``. With ``adaptive=True`` (default solver then ``diffrax.ShARK()``, strong order 1.5 for
    additive noise) a PID controller picks the steps on a ``VirtualBrownianTree``.

    Arguments:
        key: PRNG key (prior draw and Brownian paths).
        score_fn: batched ``score_fn(x, t)`` (or ``score_fn(x, t, cond)``), ``x: (n, d)``, ``t: (n,)`` ->
            ``(n, d)`` float32; e.g. a :class:`genjax.ScoreFunction`.
        sde: the forward SDE (:class:`genjax.VPSDE`, ...).
        shape: ``(n, d)``.
        n_steps: number of equal steps (the initial step is ``(1 - t_min) / n_steps`` when adaptive).
        cond: optional :class:`genjax.nn.Condition` (leading size ``n``) passed to ``score_fn``.
        solver: a diffrax SDE solver for additive noise; default ``diffrax.Euler()`` (fixed steps) or
            ``diffrax.ShARK()`` (adaptive).
        adaptive: adaptive step sizes (``diffrax.PIDController(rtol, atol)``).
        t_min: last time (the score is singular at 0); 1e-3 for VP-type SDEs (Song et al.), smaller for VE.
        denoise: finish with Tweedie's denoising step ``(x + sigma^2 score) / alpha`` at ``t_min``.
        max_steps: bound on the number of steps: default ``n_steps`` (fixed) or 4096 (adaptive; an error is
            raised when it is hit). ``n_steps`` is a runtime value, so with an explicit ``max_steps`` any
            ``n_steps <= max_steps`` reuses the compiled sampler.
        brownian: ``"unsafe"`` (``UnsafeBrownianPath``: fast; default for fixed steps) or ``"virtual"``
            (``VirtualBrownianTree``: the same path at every resolution, for convergence studies; required and
            default for adaptive steps).
        brownian_tol: time resolution of the ``VirtualBrownianTree``.

    Returns:
        ``(x, nfe)``: samples ``(n, d)`` float32 and the number of batched score evaluations (int32 scalar; the
        slowest point's for adaptive solves).

    Raises:
        ValueError: on a bad shape, ``n_steps``, ``t_min``, ``brownian``, ``max_steps < n_steps`` for fixed steps,
            or a ``cond`` whose leading size is not ``n``.
    """
    _check_common(shape, t_min, cond, n_steps, "sample_reverse_sde")
    if brownian is None:
        brownian = "virtual" if adaptive else "unsafe"
    if brownian not in ("unsafe", "virtual") or (adaptive and brownian != "virtual"):
        raise ValueError(f"sample_reverse_sde: brownian must be 'unsafe' or 'virtual' ('virtual' when adaptive); got {brownian!r}")
    if max_steps is None:
        max_steps = _DEFAULT_MAX_STEPS if adaptive else int(n_steps)
    if not adaptive and max_steps < n_steps:
        raise ValueError(f"sample_reverse_sde: max_steps={max_steps} is below n_steps={n_steps}")
    if solver is None:
        solver = diffrax.ShARK() if adaptive else diffrax.Euler()
    _evals_per_step(solver)  # raises early for solvers whose evaluations cannot be counted
    return _reverse_sde_impl(
        key, score_fn, sde, cond, jnp.asarray(n_steps, jnp.int32), shape=tuple(int(s) for s in shape),
        solver=solver, adaptive=bool(adaptive), rtol=rtol, atol=atol, t_min=float(t_min), denoise=bool(denoise),
        max_steps=int(max_steps), brownian=brownian, brownian_tol=brownian_tol, pc=None,
    )


# ---------------------------------------------------------------------------------------------------------------
# predictor-corrector
# ---------------------------------------------------------------------------------------------------------------


class _PredictorCorrector(diffrax.AbstractItoSolver):
    """Langevin corrector at ``s0`` followed by an Euler-Maruyama predictor to ``s1`` (Song et al. 2021, alg. 2/4).

    Corrector step ``y <- y + e score + sqrt(2 e) z`` with ``e = 2 (snr |z| / |score|)^2``, the norms averaged over
    the batch (the solve must be vmapped with ``axis_name=_BATCH_AXIS``). The solver state is a
    PRNG key (from ``args``) split every step for the corrector noise.
    """

    score: Callable | None
    snr: float
    n_corrector: int = eqx.field(static=True)

    term_structure = diffrax.MultiTerm[tuple[diffrax.ODETerm, diffrax.AbstractTerm]]
    interpolation_cls = diffrax.LocalLinearInterpolation

    def order(self, terms):
        return 1

    def strong_order(self, terms):
        return 0.5

    def init(self, terms, t0, t1, y0, args):
        return args

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        key, key_step = jax.random.split(solver_state)
        y = y0
        for i in range(self.n_corrector):
            score = self.score(t0, y)
            z = jax.random.normal(jax.random.fold_in(key_step, i), y.shape, y.dtype)
            # Song et al. average the norms over the batch (the vmapped axis): per-point norms make the step
            # explode near a mode in low dimension.
            z_norm = jax.lax.pmean(jnp.linalg.norm(z), _BATCH_AXIS)
            score_norm = jax.lax.pmean(jnp.linalg.norm(score), _BATCH_AXIS)
            eps = 2.0 * (self.snr * z_norm / jnp.maximum(score_norm, 1e-12)) ** 2
            y = y + eps * score + jnp.sqrt(2.0 * eps) * z
        y1 = y + terms.vf_prod(t0, y, args, terms.contr(t0, t1))
        return y1, None, dict(y0=y0, y1=y1), key, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


def sample_predictor_corrector(
    key: PRNGKeyArray,
    score_fn: Callable[..., Array],
    sde: AbstractSDE,
    shape: tuple[int, int],
    n_steps: int = 500,
    *,
    snr: float = 0.16,
    n_corrector: int = 1,
    cond: Any = None,
    t_min: float = 1e-3,
    denoise: bool = True,
    max_steps: int | None = None,
) -> tuple[Array, Array]:
    """Predictor-corrector sampling: Euler-Maruyama predictor + Langevin corrector (Song et al. 2021, alg. 2-4).

    At each of ``n_steps`` grid times, ``n_corrector`` Langevin MCMC steps with step size
    ``e = 2 (snr |z| / |score|)^2`` (norms averaged over the batch, as Song et al.) correct toward ``p_t``; then an Euler-Maruyama step of the
    reverse SDE moves to the next time. Implemented as a custom diffrax solver on ``UnsafeBrownianPath``.

    Arguments:
        key, score_fn, sde, shape, n_steps, cond, t_min, denoise, max_steps: as :func:`sample_reverse_sde`.
        snr: signal-to-noise ratio of the corrector (Song et al. use 0.16 for VE models, 0.01-0.1 for VP).
        n_corrector: Langevin steps per grid time.

    Returns:
        ``(x, nfe)``: samples ``(n, d)`` and the batched score evaluations, ``n_steps (1 + n_corrector)``
        (``+ 1`` with ``denoise``).

    Raises:
        ValueError: on a bad shape, ``n_steps``, ``t_min``, ``snr <= 0``, ``n_corrector < 0`` or ``cond``.
    """
    _check_common(shape, t_min, cond, n_steps, "sample_predictor_corrector")
    if not snr > 0:
        raise ValueError(f"sample_predictor_corrector: snr must be positive; got {snr}")
    if not isinstance(n_corrector, int | np.integer) or n_corrector < 0:
        raise ValueError(f"sample_predictor_corrector: n_corrector must be a non-negative int; got {n_corrector!r}")
    if max_steps is None:
        max_steps = int(n_steps)
    if max_steps < n_steps:
        raise ValueError(f"sample_predictor_corrector: max_steps={max_steps} is below n_steps={n_steps}")
    return _reverse_sde_impl(
        key, score_fn, sde, cond, jnp.asarray(n_steps, jnp.int32), shape=tuple(int(s) for s in shape),
        solver=diffrax.Euler(), adaptive=False, rtol=0.0, atol=0.0, t_min=float(t_min), denoise=bool(denoise),
        max_steps=int(max_steps), brownian="unsafe", brownian_tol=0.0, pc=(float(snr), int(n_corrector)),
    )


# ---------------------------------------------------------------------------------------------------------------
# probability-flow ODE
# ---------------------------------------------------------------------------------------------------------------


class ProbabilityFlow(eqx.Module):
    """The probability-flow velocity ``v(x, t, cond) = f(t) x - g(t)^2 / 2 score(x, t, cond)`` as a batched
    callable (``x: (n, d)``, ``t: (n,)`` -> ``(n, d)``), the vector field of :func:`sample_probability_flow_ode`
    and :func:`log_likelihood`. A pytree: the parameters inside ``score_fn`` stay traced."""

    score_fn: Callable[..., Array]
    sde: AbstractSDE

    def __call__(self, x: Array, t: Array, cond: Any = None) -> Array:
        g2 = self.sde.diffusion(t) ** 2
        return self.sde.drift(x, t) - 0.5 * _expand(g2, x) * call_score(self.score_fn, x, t, cond)


def _field_one(field, y: Array, t: Array, cond) -> Array:
    """A batched field at one point ``y: (d,)`` and scalar ``t`` (a batch of one)."""
    return call_score(field, y[None], jnp.reshape(t, (1,)), None if cond is None else _one(cond))[0]


def _ode_steps(n_steps, ts, max_steps, t_min: float, name: str):
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
    return None, None, _DEFAULT_MAX_STEPS if max_steps is None else int(max_steps)


def _solve_ode_batch(field, prior, keys, cond, n_steps, ts, *, d, solver, rtol, atol, t0, t1, max_steps):
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
        term = diffrax.ODETerm(lambda t, y, args: _field_one(field, y, t, c))
        sol = diffrax.diffeqsolve(
            term, solver, t0, t1, dt0, y0, stepsize_controller=controller, max_steps=max_steps,
            saveat=diffrax.SaveAt(t1=True), adjoint=diffrax.ForwardMode(),
        )
        return sol.ys[-1], sol.stats

    x, stats = jax.vmap(solve_one)(keys, cond)
    return x, _nfe(stats, solver)


@eqx.filter_jit
def _pf_ode_impl(key, score_fn, sde, cond, n_steps, ts, *, shape, solver, rtol, atol, t_min, denoise, max_steps):
    n, d = shape
    x, nfe = _solve_ode_batch(
        ProbabilityFlow(score_fn, sde), sde, jax.random.split(key, n), cond, n_steps, ts, d=d, solver=solver,
        rtol=rtol, atol=atol, t0=1.0, t1=t_min, max_steps=max_steps,
    )
    if denoise:
        x = _denoise(score_fn, sde, x, t_min, cond)
        nfe = nfe + 1
    return x, nfe


def sample_probability_flow_ode(
    key: PRNGKeyArray,
    score_fn: Callable[..., Array],
    sde: AbstractSDE,
    shape: tuple[int, int],
    rtol: float = 1e-5,
    atol: float = 1e-5,
    *,
    cond: Any = None,
    solver: diffrax.AbstractSolver | None = None,
    n_steps: int | None = None,
    ts: Array | None = None,
    t_min: float = 1e-3,
    denoise: bool = True,
    max_steps: int | None = None,
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
    _check_common(shape, t_min, cond, n_steps, "sample_probability_flow_ode")
    n_steps, ts, max_steps = _ode_steps(n_steps, ts, max_steps, t_min, "sample_probability_flow_ode")
    if solver is None:
        solver = diffrax.Tsit5()
    _evals_per_step(solver)
    return _pf_ode_impl(
        key, score_fn, sde, cond, n_steps, ts, shape=tuple(int(s) for s in shape), solver=solver, rtol=rtol,
        atol=atol, t_min=float(t_min), denoise=bool(denoise), max_steps=int(max_steps),
    )


# ---------------------------------------------------------------------------------------------------------------
# log-likelihood
# ---------------------------------------------------------------------------------------------------------------


def _check_likelihood_input(x, divergence: str, t_min: float, cond, name: str, *, zero_t_min: bool = False):
    """Host-side checks of a likelihood evaluation; returns ``x`` as a float array ``(n, d)``."""
    x_np = np.asarray(x)
    if x_np.ndim != 2:
        raise ValueError(f"{name}: x must be (n, d); got shape {x_np.shape}")
    finite = np.isfinite(x_np).all(axis=-1)
    if not finite.all():
        raise ValueError(f"{name}: x has non-finite values (first in row {int(np.argmin(finite))})")
    if divergence not in ("hutchinson", "exact"):
        raise ValueError(f"{name}: divergence must be 'hutchinson' or 'exact'; got {divergence!r}")
    _check_common(x_np.shape, t_min, cond, None, name, zero_t_min=zero_t_min)
    return jnp.asarray(x)


def _log_likelihood_batch(field, prior, x, keys, cond, *, divergence, solver, rtol, atol, t0, t1, max_steps):
    """Instantaneous change of variables along ``dy/dt = field(y, t, cond)`` from ``x`` at ``t0`` to ``t1``:
    ``log p_{t0}(x) = log prior(y(t1)) + int_{t0}^{t1} div field dt`` (Chen et al. 2018; Grathwohl et al. 2019),
    per point, vmapped; the divergence is exact (``d`` JVPs) or Hutchinson with one Rademacher probe per point
    held fixed for the whole solve (unbiased)."""
    d = x.shape[-1]

    def solve_one(x0, k, c):
        v = lambda t, y: _field_one(field, y, t, c)
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


@eqx.filter_jit
def _log_likelihood_impl(key, score_fn, sde, x, cond, divergence, solver, rtol, atol, t_min, max_steps):
    return _log_likelihood_batch(
        ProbabilityFlow(score_fn, sde), sde, x, jax.random.split(key, x.shape[0]), cond, divergence=divergence,
        solver=solver, rtol=rtol, atol=atol, t0=t_min, t1=1.0, max_steps=max_steps,
    )


def log_likelihood(
    key: PRNGKeyArray,
    score_fn: Callable[..., Array],
    sde: AbstractSDE,
    x: Array,
    *,
    cond: Any = None,
    divergence: str = "hutchinson",
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float = 1e-5,
    max_steps: int = _DEFAULT_MAX_STEPS,
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
    x = _check_likelihood_input(x, divergence, t_min, cond, "log_likelihood")
    if solver is None:
        solver = diffrax.Tsit5()
    return _log_likelihood_impl(key, score_fn, sde, x, cond, divergence, solver, rtol, atol, float(t_min),
                                int(max_steps))
