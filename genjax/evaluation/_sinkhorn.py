"""Wasserstein-2 between point clouds by entropic optimal transport (log-domain Sinkhorn, blockwise in JAX).

* Wasserstein-2: entropic optimal transport with cost ``|x-y|^2``, log-domain Sinkhorn (Cuturi 2013; Peyre &
  Cuturi 2019, Sec. 4.4), uniform weights. The reported W2 is ``sqrt(S_eps)`` with the debiased Sinkhorn
  divergence ``S_eps = OT_eps(x, y) - OT_eps(x, x)/2 - OT_eps(y, y)/2`` (Feydy et al. 2019), whose entropic
  bias is ``O(eps^2)`` (Chizat et al. 2020); ``eps = 0.05 * mean |x_i - x_j|^2`` over the reference by default.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Array, Float, Points
from ._buffer import BLOCK, Buffer, buffer_block, capacity, check_point_pair, make_buffer, squared_distances

__all__ = ["SinkhornOutput", "sinkhorn_buffers", "default_epsilon", "sinkhorn", "w2_from_buffers", "sinkhorn_w2"]


class SinkhornOutput(NamedTuple):
    """Result of :func:`sinkhorn`.

    Fields:
        f: ``(n,)`` dual potential of x.
        g: ``(m,)`` dual potential of y.
        reg_ot_cost: ``OT_eps = <a, f> + <b, g>``, the entropic OT cost at convergence.
        transport_cost: ``<P, C>``, the squared-distance cost of the entropic plan P.
        n_iter: Sinkhorn iterations run (each one updates g, then f).
        error: L1 error of the x-marginal of the plan at the last iteration.
    """

    f: Float[Array, " n"]
    g: Float[Array, " m"]
    reg_ot_cost: Float[Array, ""]
    transport_cost: Float[Array, ""]
    n_iter: Array
    error: Float[Array, ""]


def _log_weights(w):
    return jnp.where(w > 0, jnp.log(jnp.where(w > 0, w / jnp.sum(w), 1.0)), -jnp.inf)


def _softmin(x: Buffer, y: Buffer, h, eps):
    """``-eps * logsumexp_j(h_j - |x_i - y_j|^2 / eps)`` for every row of x, with an online logsumexp over
    column tiles; rows past the last block are left at 0."""

    def row(i, out):
        xb, _, xs = buffer_block(x, i)

        def col(j, carry):
            mx, s = carry
            yb, _, ys = buffer_block(y, j)
            t = jax.lax.dynamic_slice(h, (ys,), (BLOCK,))[None, :] - squared_distances(xb, yb) / eps
            new = jnp.maximum(mx, jnp.max(t, axis=-1))
            s = s * jnp.exp(mx - new) + jnp.sum(jnp.exp(t - new[:, None]), axis=-1)
            return new, s

        init = (jnp.full((BLOCK,), -jnp.inf, xb.dtype), jnp.zeros((BLOCK,), xb.dtype))
        mx, s = jax.lax.fori_loop(0, y.blocks, col, init)
        return jax.lax.dynamic_update_slice(out, -eps * (mx + jnp.log(s)), (xs,))

    return jax.lax.fori_loop(0, x.blocks, row, jnp.zeros_like(x.weights))


DENSE_SINKHORN = 1 << 23
"""Sinkhorn forms the cost matrix when ``capacity(n) * capacity(m)`` is at most this (32 MB in float32), else it
recomputes 256 x 256 tiles every iteration (memory-safe for any size, several times slower)."""


def _softmin_dense(c, h, eps, axis):
    """``-eps * logsumexp(h - c / eps)`` over ``axis`` of the cost matrix (h broadcast along the other axis)."""
    h = h[None, :] if axis == 1 else h[:, None]
    return -eps * jax.nn.logsumexp(h - c / eps, axis=axis)


@functools.partial(jax.jit, static_argnames=("max_iter", "dense"))
def sinkhorn_buffers(x: Buffer, y: Buffer, eps, tol, max_iter: int, dense: bool):
    """Log-domain Sinkhorn on two buffers; returns (f, g, reg_ot_cost, transport_cost, n_iter, error)."""
    loga, logb = _log_weights(x.weights), _log_weights(y.weights)
    a, b = jnp.exp(loga), jnp.exp(logb)
    c = squared_distances(x.points, y.points) if dense else None

    def update_g(f):
        if dense:
            return _softmin_dense(c, loga + f / eps, eps, axis=0)
        return _softmin(y, x, loga + f / eps, eps)

    def update_f(g):
        if dense:
            return _softmin_dense(c, logb + g / eps, eps, axis=1)
        return _softmin(x, y, logb + g / eps, eps)

    def cond(state):
        it, _, _, err = state
        return (it < max_iter) & (err > tol)

    def body(state):
        it, f, _, _ = state
        g = update_g(f)
        f_new = update_f(g)
        # the x-marginal of the plan (f, g) is a * exp((f - f_new) / eps)
        err = jnp.sum(a * jnp.abs(jnp.expm1((f - f_new) / eps)))
        return it + 1, f_new, g, err

    dtype = x.points.dtype
    init = (jnp.zeros((), jnp.int32), jnp.zeros_like(x.weights), jnp.zeros_like(y.weights),
            jnp.asarray(jnp.inf, dtype))
    it, f, g, err = jax.lax.while_loop(cond, body, init)
    f, g = jnp.where(a > 0, f, 0.0), jnp.where(b > 0, g, 0.0)
    reg = jnp.sum(a * f) + jnp.sum(b * g)

    if dense:
        logp = loga[:, None] + logb[None, :] + (f[:, None] + g[None, :] - c) / eps
        return f, g, reg, jnp.sum(jnp.exp(logp) * c), it, err

    def row(i, acc):
        xb, _, xs = buffer_block(x, i)
        fi = jax.lax.dynamic_slice(f, (xs,), (BLOCK,))
        lai = jax.lax.dynamic_slice(loga, (xs,), (BLOCK,))

        def col(j, acc):
            yb, _, ys = buffer_block(y, j)
            gj = jax.lax.dynamic_slice(g, (ys,), (BLOCK,))
            lbj = jax.lax.dynamic_slice(logb, (ys,), (BLOCK,))
            cij = squared_distances(xb, yb)
            logp = lai[:, None] + lbj[None, :] + (fi[:, None] + gj[None, :] - cij) / eps
            return acc + jnp.sum(jnp.exp(logp) * cij)

        return jax.lax.fori_loop(0, y.blocks, col, acc)

    transport = jax.lax.fori_loop(0, x.blocks, row, jnp.zeros((), dtype))
    return f, g, reg, transport, it, err


def _solve(x: Buffer, y: Buffer, eps, tol, max_iter: int, dense: bool | None = None):
    if dense is None:
        dense = x.points.shape[0] * y.points.shape[0] <= DENSE_SINKHORN
    return sinkhorn_buffers(x, y, eps, tol, max_iter, dense)


def default_epsilon(x: Points, relative_epsilon: float = 0.05) -> float:
    """``relative_epsilon * mean_{i,j} |x_i - x_j|^2`` (all pairs) ``= relative_epsilon * 2 * sum_d Var(x_d)``.

    Raises:
        ValueError: all points of ``x`` coincide.
    """
    mean_cost = 2.0 * float(np.sum(np.var(np.asarray(x, np.float64), axis=0)))
    if not mean_cost > 0:
        raise ValueError("the reference points have zero variance (all coincide); pass epsilon=...")
    return relative_epsilon * mean_cost


def sinkhorn(
    x: Points,
    y: Points,
    *,
    epsilon: float | None = None,
    relative_epsilon: float = 0.05,
    max_iter: int = 2000,
    tol: float = 1e-3,
) -> SinkhornOutput:
    """Entropic optimal transport between uniform measures on ``x`` and ``y``, cost ``|x - y|^2``, solved by
    log-domain Sinkhorn iterations (Peyre & Cuturi 2019, Remark 4.23). While the padded sizes multiply to at
    most :data:`DENSE_SINKHORN` (e.g. 2048 x 4096) the cost matrix is formed once; beyond, every iteration
    recomputes 256 x 256 tiles (memory
    ``O(n + m)`` plus one tile).

    Arguments:
        x: ``(n, dim)`` points (the reference).
        y: ``(m, dim)`` points.
        epsilon: entropic regularisation; default :func:`default_epsilon` ``(x, relative_epsilon)``.
        max_iter: maximum iterations (one iteration = one update of each potential).
        tol: stop when the L1 error of the x-marginal falls below this.

    Returns:
        A :class:`SinkhornOutput`. If ``max_iter`` is reached first, ``error`` says how far from converged.

    Raises:
        ValueError: bad shapes, non-positive ``epsilon``.
    """
    x, y = check_point_pair(x, y, min_points=1)
    eps = default_epsilon(x, relative_epsilon) if epsilon is None else float(epsilon)
    if not eps > 0:
        raise ValueError(f"epsilon must be > 0; got {eps}")
    cap = capacity(max(x.shape[0], y.shape[0]))
    out = _solve(make_buffer(x, cap), make_buffer(y, cap), jnp.asarray(eps, x.dtype), jnp.asarray(tol, x.dtype),
                 max_iter)
    f, g, reg, transport, it, err = out
    return SinkhornOutput(f[: x.shape[0]], g[: y.shape[0]], reg, transport, it, err)


def w2_from_buffers(x: Buffer, y: Buffer, eps: float, *, debiased: bool = True, max_iter: int = 2000,
                    tol: float = 1e-3, dense: bool | None = None) -> tuple[float, float]:
    """W2 estimate (see :func:`sinkhorn_w2`) from buffers; returns (w2, max marginal error of the solves).

    ``dense``: form the cost matrix (None: when the buffers are small). The tiled form (False) does work
    proportional to the valid points, so one compilation serves sets of any size up to the buffer's capacity.
    """
    e, t = jnp.asarray(eps, x.points.dtype), jnp.asarray(tol, x.points.dtype)
    _, _, reg_xy, transport, _, err = _solve(x, y, e, t, max_iter, dense)
    if not debiased:
        return math.sqrt(max(float(transport), 0.0)), float(err)
    reg_xx, err_x = _solve(x, x, e, t, max_iter, dense)[2::3]
    reg_yy, err_y = _solve(y, y, e, t, max_iter, dense)[2::3]
    div = float(reg_xy) - 0.5 * (float(reg_xx) + float(reg_yy))
    return math.sqrt(max(div, 0.0)), max(float(err), float(err_x), float(err_y))


def sinkhorn_w2(
    x: Points,
    y: Points,
    *,
    epsilon: float | None = None,
    relative_epsilon: float = 0.05,
    debiased: bool = True,
    max_iter: int = 2000,
    tol: float = 1e-3,
) -> float:
    """Wasserstein-2 distance estimated by entropic optimal transport (see :func:`sinkhorn`).

    With ``debiased=True`` (default) returns ``sqrt(max(S_eps, 0))`` with the Sinkhorn divergence
    ``S_eps = OT_eps(x, y) - OT_eps(x, x)/2 - OT_eps(y, y)/2`` (Feydy et al. 2019): 0 for equal samples,
    exactly ``|delta|^2`` for a copy translated by ``delta``, and ``W2^2 + O(eps^2)`` for smooth densities
    (Chizat et al. 2020). With ``debiased=False`` returns ``sqrt(<P, C>)`` of the entropic plan (biased upwards
    by its blur). One ``epsilon`` (from x by default) serves all three problems.

    The entropic bias depends on ``eps`` relative to the scale of the point cloud's fine structure: in a 30-PC
    space of 527 vs 527 PBMC3k cells the exact empirical W2 (assignment problem) is 14.6, the debiased estimate
    11.5 at ``relative_epsilon=0.05`` (the default; about 300 iterations), 13.7 at 0.02 and 14.3 at 0.01 (the
    iteration count grows like ``1 / eps``). Compare values computed with the same ``eps``.

    Arguments:
        x: ``(n, dim)`` reference points; y: ``(m, dim)`` points; the rest as :func:`sinkhorn`.

    Returns:
        The W2 estimate (a Python float, same units as the points).
    """
    x, y = check_point_pair(x, y, min_points=1)
    eps = default_epsilon(x, relative_epsilon) if epsilon is None else float(epsilon)
    if not eps > 0:
        raise ValueError(f"epsilon must be > 0; got {eps}")
    cap = capacity(max(x.shape[0], y.shape[0]))
    w2, _ = w2_from_buffers(make_buffer(x, cap), make_buffer(y, cap), eps, debiased=debiased, max_iter=max_iter,
                            tol=tol)
    return w2
