"""Test configuration: two forced host CPU devices (for pmap tests), a key fixture, strict float32.

``XLA_FLAGS`` must be set before JAX is imported anywhere, so it is set at the top of this file, which pytest
imports before any test module.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GENJAX_NO_COMPILATION_CACHE", "1")  # in-process CLI calls keep the test JAX config
# one BLAS thread per test worker: two xdist workers on two cores, each with a multi-threaded OpenBLAS spinning for
# the other's cores, made a 2000 x 500 SVD take 12 s instead of 0.2 s
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def key():
    """A fresh PRNG key per test."""
    return jax.random.key(0)


@pytest.fixture
def rng():
    """A seeded numpy generator per test."""
    return np.random.default_rng(0)
