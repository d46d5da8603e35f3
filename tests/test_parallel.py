"""Data-parallel training on 2 forced CPU devices equals single-device training on the same global batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import genjax

N, D = 96, 3
CFG = genjax.TrainConfig(max_epochs=4, batch_size=16, steps_per_dispatch=4, progress=False)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    return {"x": x, "y": (x @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)}


def _loss(params, batch, key, step):
    return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2), {}


def _noisy_loss(params, batch, key, step):
    # stochastic, like a VAE's reparameterised ELBO: noise drawn from the (per-device) key
    eps = jax.random.normal(key, batch["y"].shape)
    pred = batch["x"] @ params["w"] + params["b"]
    return jnp.mean((pred - batch["y"] + 0.1 * eps) ** 2), {"noise": jnp.mean(eps)}


P0 = {"w": jnp.zeros(D), "b": jnp.zeros(())}


def _close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("host", [False, True])
def test_two_devices_equal_single_device(host):
    assert jax.local_device_count() >= 2, "conftest forces 2 host devices"
    data = _data()
    src = genjax.HostSource(N, lambda r: {k: v[r] for k, v in data.items()}) if host else data
    # plain SGD: any error in the gradient scale (e.g. summing instead of averaging shards) shows directly
    single = genjax.fit(_loss, P0, data, optimizer=optax.sgd(0.05), config=CFG)
    multi = genjax.fit(_loss, P0, src, optimizer=optax.sgd(0.05), config=CFG, devices=2)
    # same loss trajectory and parameters up to float32 reduction order (tolerance 1e-5 relative)
    _close(single.state.params, multi.state.params)
    np.testing.assert_allclose([h["loss"] for h in single.history], [h["loss"] for h in multi.history],
                               rtol=1e-5)
    assert int(multi.state.step) == int(single.state.step)


def _trainer(name):
    """(loss_fn, params, data) of a genjax trainer on tiny data: the toy stochastic loss, the VAE's ELBO,
    denoising score matching, and flow matching with minibatch-OT coupling (a host callback per device)."""
    if name == "toy":
        return _noisy_loss, P0, jax.tree.map(jnp.asarray, _data())
    if name == "vae":
        adata = genjax.datasets.synthetic_counts(64, 12, 2, seed=0)
        vae = genjax.VAE(adata, n_hidden=16, n_latent=2, conditions=["cell_type"])
        return vae.functions(warmup_steps=4).loss, vae.params, jax.tree.map(jnp.asarray, vae.batch())
    net = genjax.nn.FieldNet(n_hidden=16, n_layers=1, time_features=8)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(64, 2)), jnp.float32)
    params = net.init(jax.random.key(0), x[:1], jnp.ones((1,)))
    if name == "score":
        return genjax.make_dsm_loss(net, genjax.VPSDE()), params, {"x": x}
    return genjax.make_flow_loss(net, coupling="ot"), params, {"x": x}


@pytest.mark.parametrize("name", ["toy", "vae", "score", "flow"])
def test_data_parallel_equals_virtual_shards_on_one_device(name):
    """A stochastic loss: each device uses fold_in(step_key, device_index); the same step vmapped over two
    virtual shards with the same axis name on one device gives the same trajectory. Run for the losses of every
    genjax trainer (VAE, score model, flow model) through the step and chunk runner that genjax.fit uses."""
    loss_fn, params, data = _trainer(name)
    opt = optax.adam(1e-2)
    step = genjax.make_train_step(loss_fn, opt, axis_name=genjax.DATA_AXIS)
    state = genjax.init_train_state(params, opt, jax.random.key(7))
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:2]), (genjax.DATA_AXIS,))
    run = genjax.make_chunk_runner(step, mesh=mesh)
    idx = jnp.arange(4 * 16, dtype=jnp.int32).reshape(4, 16)
    s_dev, m_dev = run(state, data, idx)

    def virtual(state, idx_shard):  # one device, two shards mapped with vmap under the same axis name
        return jax.lax.scan(lambda st, ix: step(st, jax.tree.map(lambda a: a[ix], data)), state, idx_shard)

    shards = idx.reshape(4, 2, 8).transpose(1, 0, 2)
    s_virt, m_virt = jax.vmap(virtual, in_axes=(None, 0), axis_name=genjax.DATA_AXIS)(state, shards)
    # float32, different reduction order across devices: 1e-4 relative on parameters after 4 Adam steps
    _close(s_dev.params, jax.tree.map(lambda x: x[0], s_virt.params), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m_dev["loss"], m_virt["loss"][0], rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(m_dev["loss"])))


def test_step_runs_under_jax_pmap():
    data = jax.tree.map(jnp.asarray, _data())
    opt = optax.sgd(0.1)
    step = genjax.make_train_step(_loss, opt, axis_name=genjax.DATA_AXIS)
    state = genjax.init_train_state(P0, opt, jax.random.key(0))
    batch = jax.tree.map(lambda a: a[:16].reshape(2, 8, *a.shape[1:]), data)
    rep = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    out, _ = jax.pmap(step, axis_name=genjax.DATA_AXIS)(rep, batch)
    ref, _ = genjax.make_train_step(_loss, opt)(state, jax.tree.map(lambda a: a[:16], data))
    _close(jax.tree.map(lambda x: x[0], out.params), ref.params)


def test_batch_must_divide_by_devices():
    with pytest.raises(ValueError, match="batch_size 15 does not divide by the 2 devices"):
        genjax.fit(_loss, P0, _data(), config=CFG, batch_size=15, devices=2)
    with pytest.raises(ValueError, match="devices=64"):
        genjax.fit(_loss, P0, _data(), config=CFG, devices=64)
