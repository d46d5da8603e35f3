"""IWAE as a training objective of genjax.VAE (``objective="iwae"`` / ``"iwae-dreg"``, ``n_importance=K``).

Checks: K = 1 is the ELBO loss exactly; the loss equals an independent scipy computation of the IWAE-K bound
(observed and latent library); the bound rises with K; the DReG encoder gradient is unbiased against the plain
IWAE gradient (and the decoder gradients are the same); jit == eager; training improves the held-out IWAE
marginal log-likelihood; save / load keeps the option; bad options are named.
"""

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

import genjax
from genjax.vae import draw_noise, make_vae_eval_loss, make_vae_loss, vae_decode, vae_encode, vae_prior

ENCODER = ("z_encoder", "z_mean", "z_logvar", "l_encoder", "l_mean", "l_logvar")
FULL = jnp.asarray(10**6)  # an optimizer step past any warm-up: KL weight 1


def _counts(n_cells=120, n_genes=12, seed=0):
    """Counts with a 2-d latent structure (NB around a low-rank mean)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_cells, 2))
    w = rng.normal(size=(2, n_genes))
    mu = np.exp(1.0 + 0.8 * z @ w)
    x = rng.negative_binomial(5, 5 / (5 + mu)).astype(np.float32)
    x[:, 0] += 1  # no empty cell
    a = ad.AnnData(x)
    a.var_names = [f"g{i}" for i in range(n_genes)]
    a.obs_names = [f"c{seed}_{i}" for i in range(n_cells)]
    return a


@pytest.fixture(scope="module")
def adata():
    return _counts()


def _model(adata, **kw):
    opts = dict(n_hidden=8, n_latent=2, dropout=0.0, seed=1)
    opts.update(kw)
    return genjax.VAE(adata, **opts)


def _batch(m, n=16):
    return jax.tree.map(jnp.asarray, m.batch(rows=np.arange(n)))


def _split(tree):
    """(encoder leaves, decoder / prior leaves) of a VAE parameter tree."""
    enc = {k: v for k, v in tree.items() if k in ENCODER}
    dec = {k: v for k, v in tree.items() if k not in ENCODER}
    return enc, dec


# -- the bound itself ------------------------------------------------------------------------------------------


def test_k1_is_the_elbo_loss(adata):
    """K = 1: the IWAE objectives are the ELBO loss, value and gradient, at KL weight 0.3 and 1."""
    m = _model(adata, dropout=0.1)
    batch, key = _batch(m), jax.random.key(4)
    vg = lambda f: jax.jit(jax.value_and_grad(f, has_aux=True))  # noqa: E731
    elbo = vg(make_vae_loss(m.module, warmup_steps=10))
    for objective in ("iwae", "iwae-dreg"):
        iwae = vg(make_vae_loss(m.module, warmup_steps=10, objective=objective, n_importance=1))
        for step in (jnp.asarray(3), FULL):
            (l0, _), g0 = elbo(m.params, batch, key, step)
            (l1, _), g1 = iwae(m.params, batch, key, step)
            assert float(l0) == float(l1)
            assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True))
    m1 = _model(adata, objective="iwae", n_importance=1)
    assert float(m1.functions().loss(m1.params, batch, key, FULL)[0]) == float(
        make_vae_loss(m1.module)(m1.params, batch, key, FULL)[0])


def _scipy_iwae(m, batch, key, k):
    """Per-cell IWAE-k bound from the public encode / decode / prior and scipy densities (float64)."""
    n, lat = batch.x.shape[0], m.config.n_latent
    latent_lib = m.config.library == "latent"
    d = lat + latent_lib
    eps = np.asarray(draw_noise(key, n, k * d, 0)[0], np.float64).reshape(n, k, d)
    enc = {a: np.asarray(b, np.float64) for a, b in vae_encode(m.module, m.params, batch.x, batch.cond).items()}
    pm, pv = (np.asarray(a, np.float64) for a in vae_prior(m.module, m.params, batch.cond, n))
    x = np.asarray(batch.x, np.float64)
    log_w, ratio = np.zeros((k, n)), np.zeros((k, n))
    for j in range(k):
        z = enc["z_mean"] + np.sqrt(enc["z_var"]) * eps[:, j, :lat]
        log_w[j] = (stats.norm.logpdf(z, pm, np.sqrt(pv)).sum(1)
                    - stats.norm.logpdf(z, enc["z_mean"], np.sqrt(enc["z_var"])).sum(1))
        if latent_lib:
            lib = enc["l_mean"] + np.sqrt(enc["l_var"]) * eps[:, j, -1]
            lm, lv = (np.asarray(a, np.float64) for a in m.module.apply(
                {"params": m.params}, batch.cond, n, method="library_prior_params"))
            log_w[j] += stats.norm.logpdf(lib, lm, np.sqrt(lv)) - stats.norm.logpdf(lib, enc["l_mean"],
                                                                                    np.sqrt(enc["l_var"]))
        else:
            lib = np.asarray(batch.log_lib, np.float64)
        ratio[j] = log_w[j]
        out = vae_decode(m.module, m.params, jnp.asarray(z, jnp.float32), jnp.asarray(lib, jnp.float32), batch.cond)
        mu = np.exp(np.asarray(out["log_mu"], np.float64))
        theta = np.broadcast_to(np.exp(np.asarray(out["log_theta"], np.float64)), mu.shape)
        log_w[j] += stats.nbinom.logpmf(x, theta, theta / (theta + mu)).sum(1)
    return logsumexp(log_w, axis=0) - np.log(k), log_w, ratio


@pytest.mark.parametrize(("library", "objective"), [("observed", "iwae"), ("latent", "iwae-dreg")])
def test_loss_equals_scipy_iwae_bound(adata, library, objective):
    m = _model(adata, library=library)
    batch, key, k = _batch(m), jax.random.key(7), 4
    bound, log_w, ratio = _scipy_iwae(m, batch, key, k)
    loss, aux = jax.jit(make_vae_loss(m.module, objective=objective, n_importance=k))(m.params, batch, key, FULL)
    np.testing.assert_allclose(float(loss), -bound.mean(), rtol=2e-5)
    np.testing.assert_allclose(float(aux["iwae"]), bound.mean(), rtol=2e-5)
    np.testing.assert_allclose(float(aux["elbo"]), log_w.mean(), rtol=2e-5)
    # without dropout the validation loss is the same bound
    v_loss, _ = jax.jit(make_vae_eval_loss(m.module, objective=objective, n_importance=k))(m.params, batch, key)
    np.testing.assert_allclose(float(v_loss), -bound.mean(), rtol=2e-5)
    # a KL weight w scales the log-ratio inside each log-weight: log w_k = rec_k + w (log p - log q)
    rec = log_w - ratio
    half = make_vae_loss(m.module, warmup_steps=10, objective=objective, n_importance=k)
    np.testing.assert_allclose(float(jax.jit(half)(m.params, batch, key, jnp.asarray(5))[0]),
                               -(logsumexp(rec + 0.5 * ratio, axis=0) - np.log(k)).mean(), rtol=2e-5)


def test_bound_rises_with_k(adata):
    """E[-loss]: ELBO <= IWAE-5 <= IWAE-20 (Burda et al. 2016, Theorem 1), beyond Monte Carlo error."""
    m = _model(adata)
    batch = _batch(m, 16)
    keys = jax.random.split(jax.random.key(0), 48)
    means, ses = [], []
    for k in (1, 5, 20):
        f = make_vae_loss(m.module, objective="iwae", n_importance=k)
        b = -np.asarray(jax.jit(jax.vmap(lambda kk, f=f: f(m.params, batch, kk, FULL)[0]))(keys), np.float64)
        means.append(b.mean())
        ses.append(b.std() / np.sqrt(len(b)))
    assert means[0] + 3 * (ses[0] + ses[1]) < means[1]
    assert means[1] + 3 * (ses[1] + ses[2]) < means[2]


# -- the DReG gradient -------------------------------------------------------------------------------------------


def test_dreg_is_unbiased_and_keeps_the_decoder_gradient(adata):
    """Mean over keys of the DReG encoder gradient == that of the plain IWAE gradient (paired z-scores), at KL
    weight 1 and 0.5; the decoder / prior gradients are the same for the same key; DReG has lower variance."""
    m = _model(adata, library="latent")  # the library latent is drawn K times and takes the DReG gradient too
    batch, k, n_keys = _batch(m, 8), 5, 1500
    keys = jax.random.split(jax.random.key(11), n_keys)
    fns = {}
    for obj in ("iwae", "iwae-dreg"):
        f = make_vae_loss(m.module, warmup_steps=10, objective=obj, n_importance=k)
        fns[obj] = jax.jit(jax.vmap(lambda kk, step, f=f: jax.grad(lambda p: f(p, batch, kk, step)[0])(m.params),
                                    in_axes=(0, None)))
    for step in (FULL, jnp.asarray(5)):
        grads = {obj: _split(fn(keys, step)) for obj, fn in fns.items()}
        # decoder: identical estimator, different graph -> equal to float32 rounding, key by key
        for a, b in zip(jax.tree.leaves(grads["iwae"][1]), jax.tree.leaves(grads["iwae-dreg"][1]), strict=True):
            a, b = np.asarray(a), np.asarray(b)
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
        # encoder: same mean (the paired difference has mean 0)
        plain = np.concatenate([np.asarray(x, np.float64).reshape(n_keys, -1)
                                for x in jax.tree.leaves(grads["iwae"][0])], 1)
        dreg = np.concatenate([np.asarray(x, np.float64).reshape(n_keys, -1)
                               for x in jax.tree.leaves(grads["iwae-dreg"][0])], 1)
        diff = dreg - plain
        se = diff.std(0) / np.sqrt(n_keys)
        z = np.abs(diff.mean(0)) / np.maximum(se, 1e-12)
        assert np.all(z < 5.0), f"max z-score {z.max():.2f} at step {int(step)}"
        # the test can see a bias of 5% of the gradient's scale: the check is not vacuous
        assert np.median(se / (np.abs(plain.mean(0)) + 1e-12)) < 0.05
        if int(step) == int(FULL):
            assert dreg.var(0).sum() < plain.var(0).sum()


def test_jit_equals_eager(adata):
    m = _model(adata, library="latent", dropout=0.1)
    batch, key = _batch(m), jax.random.key(2)
    f = make_vae_loss(m.module, warmup_steps=10, objective="iwae-dreg", n_importance=3)
    vg = jax.value_and_grad(f, has_aux=True)
    (l0, _), g0 = vg(m.params, batch, key, jnp.asarray(4))
    (l1, _), g1 = jax.jit(vg)(m.params, batch, key, jnp.asarray(4))
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(a).max()))


# -- the model class -----------------------------------------------------------------------------------------------


def test_training_with_iwae_improves_held_out_marginal_ll(adata, tmp_path):
    held_out = _counts(60, seed=1)
    m = _model(adata, objective="iwae-dreg", n_importance=5, n_hidden=16)
    assert m.options["objective"] == "iwae-dreg" and m.options["n_importance"] == 5
    before = m.marginal_ll(held_out, n_samples=50)
    hist = m.fit(max_epochs=20, batch_size=32, lr=1e-2, kl_warmup_epochs=None, progress=False)
    after = m.marginal_ll(held_out, n_samples=50)
    assert np.isfinite(after) and after > before + 1.0, (before, after)
    assert {"iwae", "elbo", "val_loss"} <= set(hist[-1])
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert m.fingerprint()["option.objective"] == "iwae-dreg"
    m.save(tmp_path / "m")
    back = genjax.VAE.load(tmp_path / "m", held_out)
    assert back.config == m.config
    np.testing.assert_allclose(back.marginal_ll(n_samples=50), after, rtol=1e-6)


def test_default_objective_keeps_old_fingerprints(adata):
    assert not any(k in _model(adata).fingerprint() for k in ("option.objective", "option.n_importance"))
    assert _model(adata, objective="iwae").config.n_importance == 5


@pytest.mark.parametrize(("kw", "match"), [
    (dict(objective="vimco"), "objective must be one of .*'vimco'"),
    (dict(objective="iwae", n_importance=0), "n_importance must be an integer >= 1; got 0"),
    (dict(objective="iwae", n_importance=2.5), "n_importance must be an integer >= 1; got 2.5"),
    (dict(n_importance=5), "n_importance=5 is only used with objective='iwae'"),
])
def test_bad_options_are_named(adata, kw, match):
    with pytest.raises(ValueError, match=match):
        _model(adata, **kw)


def test_bad_loss_options_are_named(adata):
    m = _model(adata)
    with pytest.raises(ValueError, match="objective must be one of"):
        make_vae_loss(m.module, objective="IWAE")
    with pytest.raises(ValueError, match="n_importance must be an integer >= 1; got -1"):
        make_vae_eval_loss(m.module, objective="iwae", n_importance=-1)
