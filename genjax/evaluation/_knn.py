"""The k-NN two-sample test between point clouds (blockwise in JAX).

* k-NN two-sample accuracy (Lopez-Paz & Oquab 2017, the leave-one-out 1-NN test of Friedman & Rafsky
  generalised to k): subsample both sets to ``n = min(|x|, |y|)`` cells (balanced), pool them, predict each
  cell's origin by the majority of its ``k`` nearest other cells, report the accuracy (0.5: indistinguishable,
  1: separable). With even ``k`` a tied vote counts as half correct.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Points, PRNGKeyArray
from ._buffer import (
    BLOCK,
    Buffer,
    buffer_block,
    capacity,
    check_point_pair,
    float_dtype_of,
    make_buffer,
    squared_distances,
)

__all__ = ["knn_loo_accuracy", "knn_check", "host_rng", "knn_buffers", "knn_two_sample_accuracy"]


@functools.partial(jax.jit, static_argnames=("k",))
def knn_loo_accuracy(z: Buffer, lab, k: int):
    """Leave-one-out k-NN accuracy of predicting ``lab`` (0/1, ``(capacity,)``) over the valid rows of ``z``.

    Keeps a running top-k (distance, label) per row across column tiles.
    """
    dtype = z.points.dtype

    def row(i, acc):
        zb, wb, zs = buffer_block(z, i)
        rows = zs + jnp.arange(BLOCK)

        def col(j, best):
            bd, bl = best
            yb, wyb, ys = buffer_block(z, j)
            d2 = squared_distances(zb, yb)
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
    dtype = float_dtype_of(x, y)
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
    x, y = check_point_pair(x, y, min_points=1)
    knn_check(k, x.shape[0], y.shape[0])
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be >= 1; got {n_repeats}")
    return knn_buffers(host_rng(key), x, y, k, n_repeats)
