"""The shared training loop: correctness against closed forms, determinism, resume, checkpoints, errors."""

import os
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import genjax

N, D = 96, 3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype(np.float32)
    w = np.array([1.5, -2.0, 0.5], np.float32)
    y = (x @ w + 0.3 + 0.1 * rng.normal(size=N)).astype(np.float32)
    return {"x": x, "y": y}


def _loss(params, batch, key, step):
    # a noisy least-squares loss: the key enters through a tiny jitter so key handling is exercised
    jitter = 1e-3 * jax.random.normal(key, batch["y"].shape)
    pred = batch["x"] @ params["w"] + params["b"]
    return jnp.mean((pred - batch["y"] + jitter) ** 2), {"mae": jnp.mean(jnp.abs(pred - batch["y"]))}


def _params():
    return {"w": jnp.zeros(D), "b": jnp.zeros(())}


CFG = genjax.TrainConfig(max_epochs=6, batch_size=16, steps_per_dispatch=4, progress=False)


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fit_reaches_least_squares_solution():
    data = _data()
    res = genjax.fit(_loss, _params(), data, optimizer=optax.adam(0.05), config=CFG, max_epochs=60)
    xb = np.c_[data["x"], np.ones(N)]
    sol = np.linalg.lstsq(xb, data["y"], rcond=None)[0]
    np.testing.assert_allclose(res.state.params["w"], sol[:D], atol=2e-2)
    np.testing.assert_allclose(res.state.params["b"], sol[D], atol=2e-2)
    assert len(res.history) == 60
    assert res.history[-1]["step"] == 60 * (N // 16)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert {"loss", "mae", "epoch", "step", "time"} <= set(res.history[0])


def test_scan_chunk_equals_single_steps():
    data = jax.tree.map(jnp.asarray, _data())
    opt = optax.adam(0.1)
    step = genjax.make_train_step(_loss, opt)
    state = genjax.init_train_state(_params(), opt, jax.random.key(3))
    idx = jnp.arange(4 * 8, dtype=jnp.int32).reshape(4, 8)
    run = genjax.make_chunk_runner(step)
    s_chunk, m_chunk = run(state, data, idx)
    s_loop, losses = state, []
    for i in range(4):
        s_loop, m = step(s_loop, jax.tree.map(lambda a, ix=idx[i]: a[ix], data))
        losses.append(m["loss"])
    for a, b in zip(jax.tree.leaves(s_chunk), jax.tree.leaves(s_loop), strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m_chunk["loss"], np.array(losses), rtol=1e-5)
    assert int(s_chunk.step) == 4


def test_jit_step_equals_eager_and_no_retrace():
    data = jax.tree.map(jnp.asarray, _data())
    opt = optax.sgd(0.1)
    calls = {"n": 0}

    def counted(params, batch, key, step):
        calls["n"] += 1
        return _loss(params, batch, key, step)

    step = genjax.make_train_step(counted, opt)
    state = genjax.init_train_state(_params(), opt, jax.random.key(1))
    batch = jax.tree.map(lambda a: a[:8], data)
    eager, _ = step(state, batch)
    jstep = jax.jit(step)
    jitted, _ = jstep(state, batch)
    np.testing.assert_allclose(eager.params["w"], jitted.params["w"], rtol=1e-6)
    before = calls["n"]
    jstep(jitted, batch)
    assert calls["n"] == before, "jitted step retraced on the second call"
    # the chunk runner compiles once per (steps, batch) shape and is reused across dispatches
    run = genjax.make_chunk_runner(step)
    idx = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
    s1, _ = run(state, data, idx)
    n_traced = calls["n"]
    run(s1, data, idx + 16)
    assert calls["n"] == n_traced


def test_fit_is_deterministic_and_seed_dependent():
    data = _data()
    a = genjax.fit(_loss, _params(), data, config=CFG, seed=1)
    b = genjax.fit(_loss, _params(), data, config=CFG, seed=1)
    c = genjax.fit(_loss, _params(), data, config=CFG, seed=2)
    _same(a.state.params, b.state.params)
    assert not np.array_equal(a.state.params["w"], c.state.params["w"])


def test_host_source_matches_device_data():
    data = _data()
    host = genjax.HostSource(N, lambda rows: {"x": data["x"][rows], "y": data["y"][rows]})
    a = genjax.fit(_loss, _params(), data, config=CFG, seed=4)
    b = genjax.fit(_loss, _params(), host, config=CFG, seed=4)
    np.testing.assert_allclose(a.state.params["w"], b.state.params["w"], rtol=1e-6)


def test_host_validation_is_fetched_in_bounded_chunks():
    # 94 validation rows at batch 2: 47 batches, fetched 32 at a time from the host; same value as on device
    data, fetched = _data(), []
    val = {k: v[2:] for k, v in data.items()}

    def fetch(rows):
        fetched.append(len(rows))
        return {k: v[rows] for k, v in val.items()}

    kw = dict(optimizer=optax.sgd(0.0), config=CFG, max_epochs=1, batch_size=2, seed=1)
    on_device = genjax.fit(_loss, _params(), data, val_data=val, **kw)
    on_host = genjax.fit(_loss, _params(), data, val_data=genjax.HostSource(N - 2, fetch), **kw)
    assert fetched == [64, 30]
    np.testing.assert_allclose(on_host.history[-1]["val_loss"], on_device.history[-1]["val_loss"], rtol=1e-5)
    np.testing.assert_allclose(on_host.history[-1]["val_mae"], on_device.history[-1]["val_mae"], rtol=1e-5)


def test_validation_and_early_stopping():
    data = _data()
    tr, va = genjax.split_indices(N, 0.75, seed=0)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == N
    sub = lambda idx: {k: v[idx] for k, v in data.items()}  # noqa: E731
    # lr 0 -> the loss never improves after the first epoch -> stop after 1 + patience epochs
    res = genjax.fit(_loss, _params(), sub(tr), val_data=sub(va), optimizer=optax.sgd(0.0), config=CFG,
                     max_epochs=50, early_stopping=True, patience=3, min_delta=1e-2)
    assert len(res.history) == 4
    assert "val_loss" in res.history[0] and "val_mae" in res.history[0]
    # validation loss equals the loss of the parameters on all validation examples (one batch of 24 < 16*2)
    pred = sub(va)["x"] @ np.zeros(D)
    mse = np.mean((pred - sub(va)["y"]) ** 2)
    np.testing.assert_allclose(res.history[0]["val_loss"], mse, rtol=1e-3)


def test_ema_matches_manual_average():
    data = jax.tree.map(jnp.asarray, _data())
    opt = optax.sgd(0.1)
    step = genjax.make_train_step(_loss, opt, ema_decay=0.9)
    state = genjax.init_train_state(_params(), opt, jax.random.key(0), ema=True)
    ema = state.params
    for i in range(3):
        state, _ = step(state, jax.tree.map(lambda a, i=i: a[8 * i: 8 * i + 8], data))
        decay = min(0.9, (1 + i) / (10 + i))  # warm-up: 0.1, 0.18, 0.25 for steps 0, 1, 2
        ema = jax.tree.map(lambda e, p, d=decay: d * e + (1 - d) * p, ema, state.params)
    np.testing.assert_allclose(state.ema_params["w"], ema["w"], rtol=1e-6)


@pytest.mark.parametrize("every_steps", [None, 5])
def test_resume_equals_uninterrupted(tmp_path, every_steps):
    data = _data()
    cfg = genjax.TrainConfig(max_epochs=4, batch_size=16, steps_per_dispatch=4, progress=False,
                             checkpoint_every_steps=every_steps, ema_decay=0.5)
    full = genjax.fit(_loss, _params(), data, config=cfg, seed=3)
    d = tmp_path / "run"
    genjax.fit(_loss, _params(), data, config=cfg, seed=3, checkpoint_dir=d, max_epochs=2)
    if every_steps:  # drop the epoch-end checkpoint: resume from the mid-epoch one (step 10 of 12)
        mngr = genjax.CheckpointManager(d)
        last = mngr.latest_step()
        mngr.close()
        shutil.rmtree(d / "latest" / str(last))
    resumed = genjax.fit(_loss, _params(), data, config=cfg, seed=3, checkpoint_dir=d, resume=True)
    _same(full.state.params, resumed.state.params)
    _same(full.state.ema_params, resumed.state.ema_params)
    assert int(resumed.state.step) == int(full.state.step)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in full.history]
    np.testing.assert_allclose([h["loss"] for h in resumed.history], [h["loss"] for h in full.history],
                               rtol=1e-6)


def test_async_save_snapshots_meta(tmp_path):
    # the training loop keeps appending to its history while an asynchronous save is being written
    mngr = genjax.CheckpointManager(tmp_path / "run")
    state = {"w": jnp.arange(3.0)}
    history = [{"epoch": 0, "loss": 1.0}]
    mngr.save(7, state, {"history": history})
    history.append({"epoch": 1, "loss": 0.5})
    mngr.wait()
    _, meta, step = mngr.restore_latest(state)
    mngr.close()
    assert step == 7 and meta["history"] == [{"epoch": 0, "loss": 1.0}]
    other = genjax.CheckpointManager(tmp_path / "other")
    with pytest.raises(TypeError):  # raised in the caller, not in the writer thread
        other.save(1, state, {"bad": object()})
    other.close()


def test_corrupt_checkpoint_is_skipped_with_its_name(tmp_path):
    data = _data()
    d = tmp_path / "run"
    genjax.fit(_loss, _params(), data, config=CFG, seed=0, checkpoint_dir=d, max_epochs=2, keep=3)
    latest = d / "latest"
    steps = sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit())
    bad = latest / str(steps[-1]) / "state"
    for root, _, files in os.walk(bad):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = genjax.fit(_loss, _params(), data, config=CFG, seed=0, checkpoint_dir=d, resume=True,
                         max_epochs=2)
    assert any(str(steps[-1]) in str(w.message) and "corrupt" in str(w.message) for w in caught)
    # resumed from the previous (epoch-1) checkpoint and redid epoch 2: same result as a clean run
    clean = genjax.fit(_loss, _params(), data, config=CFG, seed=0, max_epochs=2)
    _same(res.state.params, clean.state.params)


def test_bad_inputs_raise_named_errors(tmp_path):
    with pytest.raises(ValueError, match="leading"):
        genjax.data.num_examples({"x": np.zeros((4, 2)), "y": np.zeros(5)})
    with pytest.raises(ValueError, match="resume=True needs a checkpoint_dir"):
        genjax.fit(_loss, _params(), _data(), config=CFG, resume=True)
    with pytest.raises(ValueError, match="batch_size"):
        genjax.TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="ema_decay"):
        genjax.TrainConfig(ema_decay=1.5)
    with pytest.raises(ValueError, match="train_size"):
        genjax.split_indices(10, 0.0)
    d = tmp_path / "r"
    genjax.fit(_loss, _params(), _data(), config=CFG, checkpoint_dir=d, max_epochs=1)
    with pytest.raises(ValueError, match="batch_size: checkpoint has 16, this run has 8"):
        genjax.fit(_loss, _params(), _data(), config=CFG, checkpoint_dir=d, resume=True, batch_size=8)


def test_save_load_pytree_roundtrip(tmp_path):
    tree = {"a": jnp.arange(5.0), "b": {"c": jnp.ones((2, 3), jnp.int32)}}
    p = tmp_path / "params.msgpack"
    genjax.save_pytree(p, tree, metadata={"hello": 1})
    back = genjax.load_pytree(p, tree)
    _same(tree, back)
    assert back["b"]["c"].dtype == np.int32
    with pytest.raises(FileNotFoundError):
        genjax.load_pytree(tmp_path / "missing")
