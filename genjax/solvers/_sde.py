"""Samplers of the reverse-time SDE (Song et al. 2021, eq. 6), on diffrax.

* :func:`sample_reverse_sde`: Euler-Maruyama on a fixed grid by default; any diffrax SDE solver, e.g. the
  additive-noise ``ShARK`` with adaptive steps, as an option.
* :func:`sample_predictor_corrector`: Euler-Maruyama predictor + Langevin corrector (Song et al. 2021, alg. 2-4).

Reverse-time SDEs are integrated forward in ``s = 1 - t`` (the Brownian motion's sign is immaterial), which
sidesteps diffrax issue #598 (stochastic Runge-Kutta solvers such as ``ShARK`` are wrong when integrating with
``t0 > t1``). Fixed steps use ``UnsafeBrownianPath`` (cheap, no bisection); adaptive steps need a
``VirtualBrownianTree``. ``max_steps`` is the number of steps for fixed grids and a deliberate bound (default
4096) for adaptive solves, which raise an error when it is hit.

All samplers are jitted (``equinox.filter_jit``): Python scalars, the shape, the solver and a field that is a
plain Python function are static; arrays (keys, network parameters inside a :class:`genjax.ScoreFunction`,
conditions) are traced, so a second call with new keys or new parameters does not recompile.
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

from .._checks import check_choice
from .._typing import Array, Brownian, PRNGKeyArray
from ..diffusion import AbstractSDE
from ._common import (
    DEFAULT_MAX_STEPS,
    check_sampler_args,
    count_evaluations,
    evals_per_step,
    field_at_point,
    maybe_denoise,
)
from ._predictor_corrector import BATCH_AXIS, PredictorCorrector

__all__ = ["sample_reverse_sde", "sample_predictor_corrector"]


def _levy_area(solver) -> type:
    """The concrete Brownian increment type a diffrax SDE solver needs (plain increments for Euler)."""
    levy = getattr(solver, "minimal_levy_area", None)
    if levy is not None and issubclass(levy, diffrax.AbstractSpaceTimeTimeLevyArea):
        return diffrax.SpaceTimeTimeLevyArea
    if levy is not None and issubclass(levy, diffrax.AbstractSpaceTimeLevyArea):
        return diffrax.SpaceTimeLevyArea
    return diffrax.BrownianIncrement


def _reverse_terms(score_fn, sde: AbstractSDE, cond, brownian) -> diffrax.MultiTerm:
    """Reverse SDE in ``s = 1 - t``: ``dy = -[f y - g^2 score](y, 1 - s) ds + g(1 - s) dW_s``."""

    def drift(s, y, args):
        t = 1.0 - s
        return -(sde.drift(y, t) - sde.diffusion(t) ** 2 * field_at_point(score_fn, y, t, cond))

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
            solv = PredictorCorrector(lambda s, y: field_at_point(score_fn, y, 1.0 - s, c), snr, n_corrector)
        sol = diffrax.diffeqsolve(
            _reverse_terms(score_fn, sde, c, bm), solv, 0.0, s1, dt0, y1, args=key_pc,
            stepsize_controller=controller, max_steps=max_steps, saveat=diffrax.SaveAt(t1=True),
            adjoint=diffrax.ForwardMode(),
        )
        return sol.ys[-1], sol.stats

    x, stats = jax.vmap(solve_one, axis_name=BATCH_AXIS)(keys, cond)
    nfe = count_evaluations(stats, solver if pc is None else PredictorCorrector(None, *pc))
    return maybe_denoise(score_fn, sde, x, nfe, t_min, cond, denoise)


def sample_reverse_sde(
    key: PRNGKeyArray, score_fn: Callable[..., Array], sde: AbstractSDE, shape: tuple[int, int],
    n_steps: int = 500, *, cond: Any = None, solver: diffrax.AbstractSolver | None = None,
    adaptive: bool = False, rtol: float = 1e-2, atol: float = 1e-2, t_min: float = 1e-3, denoise: bool = True,
    max_steps: int | None = None, brownian: Brownian | None = None, brownian_tol: float = 1e-4
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
    check_sampler_args(shape, t_min, cond, n_steps, "sample_reverse_sde")
    if brownian is None:
        brownian = "virtual" if adaptive else "unsafe"
    check_choice("sample_reverse_sde: brownian", brownian, Brownian)
    if adaptive and brownian != "virtual":
        raise ValueError(f"sample_reverse_sde: adaptive steps need brownian='virtual'; got {brownian!r}")
    if max_steps is None:
        max_steps = DEFAULT_MAX_STEPS if adaptive else int(n_steps)
    if not adaptive and max_steps < n_steps:
        raise ValueError(f"sample_reverse_sde: max_steps={max_steps} is below n_steps={n_steps}")
    if solver is None:
        solver = diffrax.ShARK() if adaptive else diffrax.Euler()
    evals_per_step(solver)  # raises early for solvers whose evaluations cannot be counted
    return _reverse_sde_impl(
        key, score_fn, sde, cond, jnp.asarray(n_steps, jnp.int32), shape=tuple(int(s) for s in shape),
        solver=solver, adaptive=bool(adaptive), rtol=rtol, atol=atol, t_min=float(t_min), denoise=bool(denoise),
        max_steps=int(max_steps), brownian=brownian, brownian_tol=brownian_tol, pc=None,
    )


def sample_predictor_corrector(
    key: PRNGKeyArray, score_fn: Callable[..., Array], sde: AbstractSDE, shape: tuple[int, int],
    n_steps: int = 500, *, snr: float = 0.16, n_corrector: int = 1, cond: Any = None, t_min: float = 1e-3,
    denoise: bool = True, max_steps: int | None = None
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
    check_sampler_args(shape, t_min, cond, n_steps, "sample_predictor_corrector")
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

