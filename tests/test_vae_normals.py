"""The VAE's reparameterisation normals (drawn from raw bits) are finite at every bit pattern and N(0, 1)."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from genjax.vae import normal_from_bits


def test_extreme_bit_patterns_are_finite():
    # the all-ones pattern used to map to u = 1 in float32 and erfinv(1) = inf (a NaN VAE after ~4000 steps)
    bits = jnp.array([0, 1, 511, 512, 2**31, 2**32 - 512, 2**32 - 2, 2**32 - 1], jnp.uint32)
    z = np.asarray(normal_from_bits(bits))
    assert np.all(np.isfinite(z))
    assert z[-1] == -z[0] and z.max() < 5.4


def test_draws_are_standard_normal():
    z = np.asarray(normal_from_bits(jax.random.bits(jax.random.key(1), (200_000,), jnp.uint32)))
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
