"""Padded point buffers and the blockwise pairwise computations shared by the two-sample statistics.

All pairwise computations are blockwise: two nested ``fori_loop``s walk over 256 x 256 tiles of squared
distances, so memory stays ``O(n + m)`` plus one tile (10k x 10k cells never form the 400 MB matrix). Point sets
are zero-padded into buffers of a few power-of-two capacities with a 0/1 weight per point and a *traced* block
count, so every set that fits a buffer (e.g. the cells of each condition) reuses one compiled function while the
work stays proportional to its actual size.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._typing import Array

__all__ = ["BLOCK", "Buffer", "capacity", "make_buffer", "buffer_block", "squared_distances", "check_point_pair",
           "float_dtype_of"]


BLOCK = 256
"""Side of the square tiles of the blockwise pairwise computations."""

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


def float_dtype_of(*arrays):
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
    dtype = float_dtype_of(x)
    points = np.zeros((cap, x.shape[1]), dtype)
    points[:n] = x
    return Buffer(jnp.asarray(points), jnp.asarray((np.arange(cap) < n).astype(dtype)),
                  jnp.asarray(-(-n // BLOCK), jnp.int32))


def buffer_block(buf: Buffer, i):
    start = jnp.asarray(i, jnp.int32) * BLOCK  # int32 also under x64, where loop indices are int64
    d = buf.points.shape[1]
    return (jax.lax.dynamic_slice(buf.points, (start, jnp.int32(0)), (BLOCK, d)),
            jax.lax.dynamic_slice(buf.weights, (start,), (BLOCK,)), start)


def squared_distances(a, b):
    """Squared distances (B, B'), clamped at 0 (the norm trick can go slightly below)."""
    return jnp.maximum(jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * a @ b.T, 0.0)


def check_point_pair(x, y, min_points: int = 2):
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
    dtype = float_dtype_of(x, y)
    return x.astype(dtype), y.astype(dtype)
