"""Time for field networks: its sinusoidal embedding, and the variance-reduced draws of training times.

* :class:`SinusoidalEmbedding`: times -> sin/cos features (Vaswani et al. 2017; DDPM's time embedding).
* :func:`sample_times`: uniforms on ``[0, 1)`` for diffusion and flow-matching losses, i.i.d. or stratified,
  low-discrepancy (Kingma et al. 2021) or antithetic.
"""

from __future__ import annotations

import math
from typing import get_args

import flax.linen as nn
import jax
import jax.numpy as jnp

from .._checks import check_choice
from .._typing import Array, PRNGKeyArray, TimeSampling

__all__ = ["SinusoidalEmbedding", "sample_times", "TIME_SAMPLING"]

TIME_SAMPLING = get_args(TimeSampling)
"""Names of the time-sampling schemes of :func:`sample_times`."""


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of a scalar time: ``[sin(s t w_k), cos(s t w_k)]``, ``w_k = max_period^(-k/half)``.

    Attributes:
        features: output size (even).
        scale: ``s``, multiplies ``t`` first (1000 maps ``t in [0, 1]`` to DDPM's integer-step range).
        max_period: the longest period.

    ``__call__(t)``: ``t`` of any shape ``(...)`` -> ``(..., features)``, float32 (float64 for float64 ``t``).
    """

    features: int = 64
    scale: float = 1000.0
    max_period: float = 10000.0

    @nn.compact
    def __call__(self, t: Array) -> Array:
        if self.features % 2:
            raise ValueError(f"SinusoidalEmbedding.features must be even; got {self.features}")
        half = self.features // 2
        t = jnp.asarray(t, jnp.result_type(t, jnp.float32))
        freqs = jnp.exp(-math.log(self.max_period) * jnp.arange(half, dtype=t.dtype) / half)
        arg = (self.scale * t)[..., None] * freqs
        return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


def sample_times(key: PRNGKeyArray, n: int, method: TimeSampling = "stratified") -> Array:
    """Uniforms on ``[0, 1)`` for diffusion / flow times, with optional variance reduction.

    Arguments:
        key: PRNG key.
        n: number of times (static).
        method: ``"uniform"`` (i.i.d.), ``"stratified"`` (one draw in each of the ``n`` strata ``[i/n, (i+1)/n)``,
            randomly assigned to the ``n`` positions), ``"low_discrepancy"`` (Kingma et al. 2021, VDM:
            ``(u0 + i/n) mod 1`` with one shared ``u0``) or ``"antithetic"`` (pairs ``u``, ``1 - u``).

    Returns:
        float32 ``(n,)`` in ``[0, 1)``; each entry is marginally uniform.

    Raises:
        ValueError: on an unknown method.
    """
    check_choice("time sampling", method, TimeSampling)
    key_u, key_perm = jax.random.split(key)
    if method == "uniform":
        return jax.random.uniform(key_u, (n,))
    if method == "stratified":
        u = (jnp.arange(n) + jax.random.uniform(key_u, (n,))) / n
        return jax.random.permutation(key_perm, u)
    if method == "low_discrepancy":
        return jnp.mod(jax.random.uniform(key_u, ()) + jnp.arange(n) / n, 1.0)
    half = (n + 1) // 2  # antithetic
    u = jax.random.uniform(key_u, (half,))
    return jnp.concatenate([u, 1.0 - u])[:n]
