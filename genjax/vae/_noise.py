"""The random draws of a VAE step from one ``jax.random.bits`` call.

Randomness: every step draws its noise with ONE ``jax.random.bits`` call (threefry), split into standard
normals (inverse-CDF of 24-bit uniforms) and 16-bit dropout draws. Each separate threefry call costs about a
second of XLA compilation on CPU and ~10 ns per word at run time, so this keeps both small.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["normal_from_bits", "dropout_units", "draw_noise"]


def normal_from_bits(bits):
    """Standard normals from uint32 draws: ``sqrt(2) erfinv(v)`` with ``v = 2u - 1`` on a 23-bit grid strictly
    inside (-1, 1).

    ``v = (k + 1/2) 2^-22 - 1`` for ``k`` in ``[0, 2^23)`` is exact in float32 at both ends (|v| <= 1 - 2^-23,
    so |normal| <= 5.3). A 24-bit ``u = (k + 1/2) 2^-24`` is not: its top value rounds to 1 in float32 and
    ``erfinv(1) = inf``, which made one draw in 2^24 infinite and a long VAE run NaN.
    """
    v = ((bits >> 9).astype(jnp.float32) + 0.5) * (1.0 / (1 << 22)) - 1.0
    return math.sqrt(2.0) * jax.lax.erf_inv(v)


def dropout_units(module) -> int:
    """Number of 16-bit dropout draws per cell a training-mode encoder needs."""
    if module.dropout <= 0:
        return 0
    return module.n_layers * module.n_hidden * (2 if module.library == "latent" else 1)


def draw_noise(key, n: int, n_normal: int, n_drop: int):
    """``(normals (n, n_normal) float32, dropout draws (n, n_drop) uint32 in [0, 2^16))`` from one bits call."""
    n_words = n_normal + (n_drop + 1) // 2
    bits = jax.random.bits(key, (n, max(n_words, 1)), jnp.uint32)
    normals = normal_from_bits(bits[:, :n_normal])
    halves = bits[:, n_normal:n_words]
    drop = jnp.concatenate([halves & 0xFFFF, halves >> 16], axis=1)[:, :n_drop] if n_drop else None
    return normals, drop
