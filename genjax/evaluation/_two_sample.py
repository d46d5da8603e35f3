"""Two-sample statistics between point clouds (cells in a PCA space), in JAX.

All pairwise computations are blockwise: two nested ``fori_loop``s walk over 256 x 256 tiles of squared
distances, so memory stays ``O(n + m)`` plus one tile (10k x 10k cells never form the 400 MB matrix). Point sets
are zero-padded into buffers of a few power-of-two capacities with a 0/1 weight per point and a *traced* block
count, so every set that fits a buffer (e.g. the cells of each condition) reuses one compiled function while the
work stays proportional to its actual size.

Conventions (x is the reference, e.g. the real cells; y the sample under test):

* energy distance (Szekely & Rizzo 2013): the *squared* form ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` with Euclidean
  distances; ``statistic="u"`` (default) averages the within-set terms over ``i != j`` (unbiased, can be
  slightly negative when the sets are alike), ``"v"`` over all pairs including ``i == j`` (biased upwards by
  about ``E|X-X'|/n + E|Y-Y'|/m``).
* MMD (Gretton et al. 2012): squared MMD with the kernel ``k = mean_s exp(-|x-y|^2 / (2 s^2))`` over bandwidths
  ``s = factor * median pairwise distance of x`` for ``factors = (0.25, 0.5, 1, 2, 4)``; U- or V-statistic as
  above.
* Wasserstein-2: entropic optimal transport with cost ``|x-y|^2``, log-domain Sinkhorn (Cuturi 2013; Peyre &
  Cuturi 2019, Sec. 4.4), uniform weights. The reported W2 is ``sqrt(S_eps)`` with the debiased Sinkhorn
  divergence ``S_eps = OT_eps(x, y) - OT_eps(x, x)/2 - OT_eps(y, y)/2`` (Feydy et al. 2019), whose entropic
  bias is ``O(eps^2)`` (Chizat et al. 2020); ``eps = 0.05 * mean |x_i - x_j|^2`` over the reference by default.
* k-NN two-sample accuracy (Lopez-Paz & Oquab 2017, the leave-one-out 1-NN test of Friedman & Rafsky
  generalised to k): subsample both sets to ``n = min(|x|, |y|)`` cells (balanced), pool them, predict each
  cell's origin by the majority of its ``k`` nearest other cells, report the accuracy (0.5: indistinguishable,
  1: separable). With even ``k`` a tied vote counts as half correct.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.distance import pdist

from .._typing import Array, Float, Points, PRNGKeyArray

__all__ = [
    "energy_distance",
    "mmd_rbf",
    "median_distance",
    "rbf_bandwidths",
    "MMD_FACTORS",
    "default_epsilon",
    "SinkhornOutput",
    "sinkhorn",
    "sinkhorn_w2",
    "knn_two_sample_accuracy",
]

BLOCK = 256
"""Side of the square tiles of the blockwise pairwise computations."""

MMD_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Default multipliers of the median pairwise distance that give the RBF bandwidths of :func:`mmd_rbf`."""

# ----------------------------------------------------------------------------------------------------------------
# buffers and tiles
#
# A point set lives in a zero-padded buffer of `capacity` rows (a power-of-two multiple of BLOCK) with 0/1
# weights and its number of BLOCK-row blocks, which is a *traced* integer: the loops over tiles are
# `fori_loop`s with dynamic trip counts, so one compiled function serves every set that fits the buffer and the
# work done is proportional to the actual sizes, not the capacity.


class Buffer(NamedTuple):
    """A padded point set: points (capacity, dim), weights (capacity,) in {0, 1}, blocks (int32 scalar)."""

    points: Array
    weights: Array
    blocks: Array


def capacity(n: int) -> int:
    """Buffer rows for n points: BLOCK * 2^j >= n."""
    blocks = max(1, -(-n // BLOCK))
    return BLOCK * (1 << (blocks - 1).bit_length())


def _float_dtype(*arrays):
    """float32, or float64 when an input is float64 and x64 is enabled."""
    return jax.dtypes.canonicalize_dtype(np.result_type(*[a.dtype for a in arrays], np.float32))


def make_buffer(x, cap: int | None = None) -> Buffer:
    """Pad ``x`` (n, dim) into a :class:`Buffer` of ``cap`` rows (default :func:`capacity` (n)).

    The padding is done with numpy on the host: eager JAX ops would compile once per input shape.
    """
    x = np.asarray(x)
    n = x.shape[0]
    cap = capacity(n) if cap is None else cap
    if cap < n or cap % BLOCK:
        raise ValueError(f"capacity {cap} must be a multiple of {BLOCK} and >= {n}")
    dtype = _float_dtype(x)
    points = np.zeros((cap, x.shape[1]), dtype)
    points[:n] = x
    return Buffer(jnp.asarray(points), jnp.asarray((np.arange(cap) < n).astype(dtype)),
                  jnp.asarray(-(-n // BLOCK), jnp.int32))


def _block(buf: Buffer, i):
    start = jnp.asarray(i, jnp.int32) * BLOCK  # int32 also under x64, where loop indices are int64
    d = buf.points.shape[1]
    return (jax.lax.dynamic_slice(buf.points, (start, jnp.int32(0)), (BLOCK, d)),
            jax.lax.dynamic_slice(buf.weights, (start,), (BLOCK,)), start)


def _sq_dist(a, b):
    """Squared distances (B, B'), clamped at 0 (the norm trick can go slightly below)."""
    return jnp.maximum(jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T, 0.0)


def _check_pair(x, y, min_points: int = 2):
    x, y = np.asarray(x), np.asarray(y)
    for name, v in (("x", x), ("y", y)):
        if v.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n, dim); got shape {v.shape}")
        if v.shape[0] < min_points:
            raise ValueError(f"{name} needs at least {min_points} points; got {v.shape[0]}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension; got {x.shape[1]} and {y.shape[1]}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("points must be finite (found NaN or inf)")
    dtype = _float_dtype(x, y)
    return x.astype(dtype), y.astype(dtype)


# ----------------------------------------------------------------------------------------------------------------
# energy distance and MMD


@functools.partial(jax.jit, static_argnames=("same",))
def pair_sums(x: Buffer, y: Buffer, bandwidths, *, same: bool):
    """``sum_ij wx_i wy_j [|x_i - y_j|, exp(-|x_i - y_j|^2 / (2 s_1^2)), ...]`` as a ``(1 + K,)`` vector.

    With ``same=True`` (y is x) the ``i == j`` terms are left out.
    """
    k = bandwidths.shape[0]

    def row(i, acc):
        xb, wxb, xs = _block(x, i)

        def col(j, acc):
            yb, wyb, ys = _block(y, j)
            d2 = _sq_dist(xb, yb)
            w = wxb[:, None] * wyb[None, :]
            if same:
                w = jnp.where((xs + jnp.arange(BLOCK))[:, None] == (ys + jnp.arange(BLOCK))[None, :], 0.0, w)
            dist = jnp.sum(jnp.sqrt(d2) * w)
            rbf = jnp.sum(jnp.exp(-d2[None] / (2.0 * bandwidths[:, None, None] ** 2)) * w, axis=(-2, -1))
            return acc + jnp.concatenate([dist[None], rbf])

        return jax.lax.fori_loop(0, y.blocks, col, acc)

    return jax.lax.fori_loop(0, x.blocks, row, jnp.zeros((1 + k,), x.points.dtype))


def _u_or_v(statistic: str) -> bool:
    if statistic not in ("u", "v"):
        raise ValueError(f"statistic must be 'u' (unbiased, i != j) or 'v' (all pairs); got {statistic!r}")
    return statistic == "u"


def energy_and_mmd(x: Buffer, n: int, y: Buffer, m: int, bandwidths, unbiased: bool) -> tuple[float, float]:
    """Squared energy distance and multi-bandwidth RBF MMD^2 (mean over bandwidths) from three pair sums.

    ``n``, ``m``: the numbers of valid points (>= 2). Returns two floats (MMD^2 is NaN when K = 0). The final
    arithmetic is done in float64 on the host.
    """
    xy = np.asarray(pair_sums(x, y, bandwidths, same=False), np.float64) / (n * m)
    # within-set sums always leave out i == j (the norm trick would give noise instead of |x_i - x_i| = 0)
    xx = np.asarray(pair_sums(x, x, bandwidths, same=True), np.float64)
    yy = np.asarray(pair_sums(y, y, bandwidths, same=True), np.float64)
    if unbiased:
        xx, yy = xx / (n * (n - 1)), yy / (m * (m - 1))
    else:
        diag = np.r_[0.0, np.ones(bandwidths.shape[0])]  # f(0) per statistic
        xx, yy = (xx + n * diag) / n**2, (yy + m * diag) / m**2
    energy = 2.0 * xy[0] - xx[0] - yy[0]
    mmd = float(np.mean(xx[1:] + yy[1:] - 2.0 * xy[1:])) if bandwidths.shape[0] else math.nan
    return float(energy), mmd


def energy_distance(x: Points, y: Points, *, statistic: str = "u") -> float:
    """Squared energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` between two point sets (Szekely & Rizzo 2013).

    Arguments:
        x: ``(n, dim)`` points (the reference).
        y: ``(m, dim)`` points.
        statistic: ``"u"`` (default): within-set means over ``i != j`` (unbiased; may be slightly negative for
            alike sets); ``"v"``: over all pairs including ``i == j`` (the plug-in estimate, always >= 0).

    Returns:
        A Python float (pair sums accumulated in float32, or float64 under x64), 0 in expectation for samples of
        one distribution. For 1-D
        ``N(0, 1)`` vs ``N(delta, 1)`` the population value is ``2 E|delta + sqrt2 Z| - 2 E|sqrt2 Z|``
        ``= 4 sqrt2 phi(delta/sqrt2) + 2 delta (2 Phi(delta/sqrt2) - 1) - 4/sqrt(pi)``.

    Raises:
        ValueError: non-2-D inputs, different dimensions, fewer than 2 points, unknown ``statistic``.
    """
    x, y = _check_pair(x, y)
    unbiased = _u_or_v(statistic)
    cap = capacity(max(x.shape[0], y.shape[0]))  # one buffer size for x and y: fewer compilations
    energy, _ = energy_and_mmd(make_buffer(x, cap), x.shape[0], make_buffer(y, cap), y.shape[0],
                               jnp.zeros((0,), x.dtype), unbiased)
    return energy


def median_distance(x: Points, *, max_points: int = 1000, seed: int = 0) -> float:
    """Median Euclidean distance between distinct points of ``x`` (the median heuristic of kernel bandwidths).

    Arguments:
        x: ``(n, dim)`` points, ``n >= 2``.
        max_points: at most this many points (a seeded random subset) enter the median.
        seed: numpy seed of the subset.

    Returns:
        A Python float (> 0 unless all points coincide).
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"median_distance needs (n >= 2, dim) points; got shape {x.shape}")
    if x.shape[0] > max_points:
        x = x[np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False)]
    return float(np.median(pdist(x)))


def rbf_bandwidths(x: Points, factors: Sequence[float] = MMD_FACTORS) -> np.ndarray:
    """The median-heuristic bandwidths ``factors * median_distance(x)``.

    Raises:
        ValueError: all points of ``x`` coincide.
    """
    med = median_distance(x)
    if not med > 0:
        raise ValueError("median distance of the reference points is 0 (all points coincide); pass bandwidths")
    return np.asarray(factors, np.float64) * med


def mmd_rbf(
    x: Points,
    y: Points,
    *,
    bandwidths: Sequence[float] | None = None,
    factors: Sequence[float] = MMD_FACTORS,
    statistic: str = "u",
) -> float:
    """Squared maximum mean discrepancy with a multi-bandwidth RBF kernel (Gretton et al. 2012).

    The kernel is ``k(a, b) = mean_s exp(-|a - b|^2 / (2 s^2))`` over the bandwidths ``s``;
    ``MMD^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y)``.

    Arguments:
        x: ``(n, dim)`` reference points.
        y: ``(m, dim)`` points.
        bandwidths: the bandwidths ``s``; default ``factors * median_distance(x)`` (median heuristic on the
            reference, so two samples compared against one reference share a kernel).
        factors: multipliers of the median distance used when ``bandwidths`` is None.
        statistic: ``"u"`` (unbiased, ``i != j`` within sets) or ``"v"`` (all pairs).

    Returns:
        MMD^2 as a Python float. For Gaussians ``N(a, s_x^2 I)`` and ``N(b, s_y^2 I)`` in ``dim`` dimensions,
        ``E k_s(X, Y) = (s^2 / (s^2 + s_x^2 + s_y^2))^(dim/2) exp(-|a - b|^2 / (2 (s^2 + s_x^2 + s_y^2)))``.

    Raises:
        ValueError: bad shapes, non-positive bandwidths, unknown ``statistic``.
    """
    x, y = _check_pair(x, y)
    unbiased = _u_or_v(statistic)
    bw = rbf_bandwidths(x, factors) if bandwidths is None else np.asarray(bandwidths, np.float64).reshape(-1)
    if bw.size == 0 or not np.all(bw > 0):
        raise ValueError(f"bandwidths must be a non-empty list of positive numbers; got {list(bw)}")
    cap = capacity(max(x.shape[0], y.shape[0]))
    _, mmd = energy_and_mmd(make_buffer(x, cap), x.shape[0], make_buffer(y, cap), y.shape[0],
                            jnp.asarray(bw, x.dtype), unbiased)
    return mmd


# ----------------------------------------------------------------------------------------------------------------
# Sinkhorn


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
        xb, _, xs = _block(x, i)

        def col(j, carry):
            mx, s = carry
            yb, _, ys = _block(y, j)
            t = jax.lax.dynamic_slice(h, (ys,), (BLOCK,))[None, :] - _sq_dist(xb, yb) / eps
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
    c = _sq_dist(x.points, y.points) if dense else None

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
        xb, _, xs = _block(x, i)
        fi = jax.lax.dynamic_slice(f, (xs,), (BLOCK,))
        lai = jax.lax.dynamic_slice(loga, (xs,), (BLOCK,))

        def col(j, acc):
            yb, _, ys = _block(y, j)
            gj = jax.lax.dynamic_slice(g, (ys,), (BLOCK,))
            lbj = jax.lax.dynamic_slice(logb, (ys,), (BLOCK,))
            cij = _sq_dist(xb, yb)
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
    x, y = _check_pair(x, y, min_points=1)
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
    x, y = _check_pair(x, y, min_points=1)
    eps = default_epsilon(x, relative_epsilon) if epsilon is None else float(epsilon)
    if not eps > 0:
        raise ValueError(f"epsilon must be > 0; got {eps}")
    cap = capacity(max(x.shape[0], y.shape[0]))
    w2, _ = w2_from_buffers(make_buffer(x, cap), make_buffer(y, cap), eps, debiased=debiased, max_iter=max_iter,
                            tol=tol)
    return w2


# ----------------------------------------------------------------------------------------------------------------
# k-NN two-sample accuracy


@functools.partial(jax.jit, static_argnames=("k",))
def knn_loo_accuracy(z: Buffer, lab, k: int):
    """Leave-one-out k-NN accuracy of predicting ``lab`` (0/1, ``(capacity,)``) over the valid rows of ``z``.

    Keeps a running top-k (distance, label) per row across column tiles.
    """
    dtype = z.points.dtype

    def row(i, acc):
        zb, wb, zs = _block(z, i)
        rows = zs + jnp.arange(BLOCK)

        def col(j, best):
            bd, bl = best
            yb, wyb, ys = _block(z, j)
            d2 = _sq_dist(zb, yb)
            d2 = jnp.where((rows[:, None] == (ys + jnp.arange(BLOCK))[None, :]) | (wyb[None, :] == 0), jnp.inf, d2)
            lj = jnp.broadcast_to(jax.lax.dynamic_slice(lab, (ys,), (BLOCK,))[None, :], d2.shape)
            cand_d = jnp.concatenate([bd, -d2], axis=1)
            cand_l = jnp.concatenate([bl, lj], axis=1)
            top, idx = jax.lax.top_k(cand_d, k)
            return top, jnp.take_along_axis(cand_l, idx, axis=1)

        init = (jnp.full((BLOCK, k), -jnp.inf, dtype), jnp.zeros((BLOCK, k), dtype))
        _, labels = jax.lax.fori_loop(0, z.blocks, col, init)
        vote = jnp.mean(labels, axis=-1)
        truth = jax.lax.dynamic_slice(lab, (zs,), (BLOCK,))
        correct = jnp.where(vote == 0.5, 0.5, ((vote > 0.5) == (truth > 0.5)).astype(dtype))
        return acc + jnp.sum(correct * wb)

    return jax.lax.fori_loop(0, z.blocks, row, jnp.zeros((), dtype)) / jnp.sum(z.weights)


def knn_check(k: int, n_x: int, n_y: int) -> None:
    """Raise ValueError unless ``1 <= k <= 2 min(n_x, n_y) - 1`` (and ``k <= BLOCK``)."""
    if not 1 <= k <= BLOCK:
        raise ValueError(f"k must be in [1, {BLOCK}]; got {k}")
    if 2 * min(n_x, n_y) - 1 < k:
        raise ValueError(f"k={k} needs at least {(k + 2) // 2} points in each set; got {n_x} and {n_y}")


def host_rng(key: PRNGKeyArray) -> np.random.Generator:
    """A numpy generator seeded from a JAX key, for host-side subsampling (eager JAX permutations would
    compile once per set size)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def knn_buffers(rng: np.random.Generator, x, y, k: int, n_repeats: int, cap: int | None = None) -> float:
    """Subsample (numpy ``rng``), pool and score (see :func:`knn_two_sample_accuracy`); ``cap`` fixes the pooled
    buffer size."""
    x, y = np.asarray(x), np.asarray(y)
    n = min(x.shape[0], y.shape[0])
    cap = capacity(2 * n) if cap is None else cap
    dtype = _float_dtype(x, y)
    lab = jnp.asarray(np.concatenate([np.zeros(n), np.ones(n), np.zeros(cap - 2 * n)]).astype(dtype))
    accs = []
    for _ in range(n_repeats):
        xs = x[rng.permutation(x.shape[0])[:n]]
        ys = y[rng.permutation(y.shape[0])[:n]]
        accs.append(float(knn_loo_accuracy(make_buffer(np.concatenate([xs, ys]), cap), lab, k)))
    return float(np.mean(accs))


def knn_two_sample_accuracy(
    key: PRNGKeyArray,
    x: Points,
    y: Points,
    *,
    k: int = 5,
    n_repeats: int = 1,
) -> float:
    """Balanced leave-one-out k-NN two-sample accuracy (0.5: indistinguishable, 1: separable).

    Each repeat draws ``n = min(|x|, |y|)`` points from each set without replacement (numpy generator seeded
    from ``key``), pools the ``2n`` points
    and predicts, for every point, whether it came from x or y by the majority of its ``k`` nearest other
    points (Euclidean); the accuracy is averaged over points and repeats.

    Arguments:
        key: PRNG key of the subsampling.
        x: ``(n_x, dim)`` points; y: ``(n_y, dim)`` points.
        k: neighbours (odd avoids ties; a tie counts as half correct); ``k <= 2 min(n_x, n_y) - 1``.
        n_repeats: independent subsamples averaged (useful when the sets differ in size).

    Returns:
        Accuracy in [0, 1] (a Python float). Very small sets are biased below 0.5 (each point has one same-set candidate
        neighbour fewer than other-set ones).

    Raises:
        ValueError: bad shapes, ``k`` out of range, ``n_repeats < 1``.
    """
    x, y = _check_pair(x, y, min_points=1)
    knn_check(k, x.shape[0], y.shape[0])
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be >= 1; got {n_repeats}")
    return knn_buffers(host_rng(key), x, y, k, n_repeats)
