"""bfloat16 matrix multiplies (mixed precision for accelerators): parameters and losses stay float32, training
reaches a finite, decreasing loss, and the low-precision path is really taken."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import genjax


def test_vae_bfloat16_trains_to_a_finite_decreasing_loss():
    adata = genjax.datasets.synthetic_counts(200, 30, 2, seed=0)
    vae = genjax.VAE(adata, conditions=["cell_type"], n_hidden=32, n_latent=3, compute_dtype="bfloat16")
    batch = jax.tree.map(jnp.asarray, vae.batch())
    jaxpr = str(jax.make_jaxpr(lambda p: vae.functions().loss(p, batch, jax.random.key(0), jnp.int32(0)))(vae.params))
    assert "bf16[200,32]" in jaxpr  # the hidden layers compute in bfloat16
    history = vae.fit(max_epochs=20, batch_size=32, progress=False, kl_warmup_epochs=None)
    losses = np.array([h["loss"] for h in history])
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(vae.params))
    assert vae.latent(adata).dtype == np.float32
    with pytest.raises(ValueError, match="compute_dtype"):
        genjax.VAE(adata, compute_dtype="int8")


def test_field_net_bfloat16_flow_trains_to_a_finite_decreasing_loss():
    x = np.random.default_rng(0).normal(size=(4096, 2)).astype(np.float32) * [2.0, 0.5] + [1.0, -1.0]
    net = genjax.nn.FieldNet(n_hidden=32, n_layers=2, time_features=16, dtype=jnp.bfloat16)
    res = genjax.fit_flow_model(x, net, max_steps=300, batch_size=128, progress=False, steps_per_dispatch=100,
                                optimizer=optax.adam(3e-3))
    losses = np.array([h["loss"] for h in res.fit.history])
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(res.params))
    y, _ = genjax.sample_flow(jax.random.key(1), res.velocity_fn, (2000, 2), n_steps=20)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y).mean(0), [1.0, -1.0], atol=0.25)
