"""Energy distance and MMD between point clouds (cells in a PCA space), blockwise in JAX.

Conventions (x is the reference, e.g. the real cells; y the sample under test):

* energy distance (Szekely & Rizzo 2013): the *squared* form ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` with Euclidean
  distances; ``statistic="u"`` (default) averages the within-set terms over ``i != j`` (unbiased, can be
  slightly negative when the sets are alike), ``"v"`` over all pairs including ``i == j`` (biased upwards by
  about ``E|X-X'|/n + E|Y-Y'|/m``).
* MMD (Gretton et al. 2012): squared MMD with the kernel ``k = mean_s exp(-|x-y|^2 / (2 s^2))`` over bandwidths
  ``s = factor * median pairwise distance of x`` for ``factors = (0.25, 0.5, 1, 2, 4)``; U- or V-statistic as
  above.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.distance import pdist

from .._checks import check_choice
from .._typing import Points, Statistic
from ._buffer import BLOCK, Buffer, buffer_block, capacity, check_point_pair, make_buffer, squared_distances

__all__ = ["MMD_FACTORS", "pair_sums", "energy_and_mmd", "energy_distance", "median_distance", "rbf_bandwidths",
           "mmd_rbf"]

MMD_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Default multipliers of the median pairwise distance that give the RBF bandwidths of :func:`mmd_rbf`."""

@functools.partial(jax.jit, static_argnames=("same",))
def pair_sums(x: Buffer, y: Buffer, bandwidths, *, same: bool):
    """``sum_ij wx_i wy_j [|x_i - y_j|, exp(-|x_i - y_j|^2 / (2 s_1^2)), ...]`` as a ``(1 + K,)`` vector.

    With ``same=True`` (y is x) the ``i == j`` terms are left out.
    """
    k = bandwidths.shape[0]

    def row(i, acc):
        xb, wxb, xs = buffer_block(x, i)

        def col(j, acc):
            yb, wyb, ys = buffer_block(y, j)
            d2 = squared_distances(xb, yb)
            w = wxb[:, None] * wyb[None, :]
            if same:
                w = jnp.where((xs + jnp.arange(BLOCK))[:, None] == (ys + jnp.arange(BLOCK))[None, :], 0.0, w)
            dist = jnp.sum(jnp.sqrt(d2) * w)
            rbf = jnp.sum(jnp.exp(-d2[None] / (2.0 * bandwidths[:, None, None] ** 2)) * w, axis=(-2, -1))
            return acc + jnp.concatenate([dist[None], rbf])

        return jax.lax.fori_loop(0, y.blocks, col, acc)

    return jax.lax.fori_loop(0, x.blocks, row, jnp.zeros((1 + k,), x.points.dtype))


def _u_or_v(statistic: Statistic) -> bool:
    """True for the U-statistic (``"u"``: pairs ``i != j``), False for the V-statistic (``"v"``: all pairs)."""
    return check_choice("statistic", statistic, Statistic) == "u"


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
    x, y = check_point_pair(x, y)
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
    x, y = check_point_pair(x, y)
    unbiased = _u_or_v(statistic)
    bw = rbf_bandwidths(x, factors) if bandwidths is None else np.asarray(bandwidths, np.float64).reshape(-1)
    if bw.size == 0 or not np.all(bw > 0):
        raise ValueError(f"bandwidths must be a non-empty list of positive numbers; got {list(bw)}")
    cap = capacity(max(x.shape[0], y.shape[0]))
    _, mmd = energy_and_mmd(make_buffer(x, cap), x.shape[0], make_buffer(y, cap), y.shape[0],
                            jnp.asarray(bw, x.dtype), unbiased)
    return mmd


# Sinkhorn


# k-NN two-sample accuracy

