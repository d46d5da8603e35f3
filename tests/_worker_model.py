"""A small stochastic model shared by the subprocess training tests: a 2-layer MLP regression with dropout-like
multiplicative noise, so the step key matters."""

import jax
import jax.numpy as jnp
import numpy as np

_rng = np.random.default_rng(0)
_x = _rng.normal(size=(128, 4)).astype(np.float32)
DATA = {"x": _x, "y": np.sin(_x @ np.array([1.0, -0.5, 0.3, 2.0], np.float32)).astype(np.float32)}


def init_params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w1": 0.5 * jax.random.normal(k1, (4, 16)), "b1": jnp.zeros(16),
            "w2": 0.5 * jax.random.normal(k2, (16,)), "b2": jnp.zeros(())}


def loss_fn(params, batch, key, step):
    h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    h = h * (1.0 + 0.1 * jax.random.normal(key, h.shape))
    pred = h @ params["w2"] + params["b2"]
    return jnp.mean((pred - batch["y"]) ** 2), {}
