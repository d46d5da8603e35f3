"""genjax.VAE and its pure pieces: fused loss == public log-pmfs, recovery of known truth on synthetic counts,
conditional generation, counterfactuals, IWAE, save/load, resume, CSR == dense, and input errors.

Compilation dominates the cost on CPU, so one conditional model is trained once per module and shared.
"""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import gammaln

import genjax
from genjax.data import CountBatch, PaddedEntries, padded_entries
from genjax.likelihoods import SMALL, fast_count_log_lik, small_count_histogram, small_count_tables
from genjax.vae import gaussian_kl

# -- the fused loss is the public log-pmf ----------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
def test_fused_count_loss_equals_public_log_prob(rng, likelihood):
    b, g = 12, 30
    x = rng.negative_binomial(1, 0.3, (b, g)).astype(np.float32) * (rng.random((b, g)) < 0.5)
    x[:, 0] += 3
    x[0, 1] = 4000.0  # a large count
    x[1, :10] = np.arange(10)  # every small count of the table route
    idx, val = padded_entries(x, int((x > 0).sum(1).max()))
    big_idx, big_val = padded_entries(x, int((x > SMALL).sum(1).max()), SMALL)
    lfact = jnp.asarray(gammaln(x.astype(np.float64) + 1).sum(1), jnp.float32)
    batch = CountBatch(jnp.asarray(x), jnp.zeros(b), lfact=lfact, nonzero=PaddedEntries(idx, val))
    table_batch = CountBatch(batch.x, batch.log_lib, lfact=lfact, large=PaddedEntries(big_idx, big_val))
    log_mu = jnp.asarray(rng.normal(0.5, 2.0, (b, g)), jnp.float32)
    log_theta = jnp.asarray(rng.uniform(-4, 12, (g,)), jnp.float32)  # theta from 0.02 to 1.6e5
    zi = jnp.asarray(rng.normal(0, 1.5, (b, g)), jnp.float32)
    w = jnp.asarray(rng.normal(size=b), jnp.float32)  # a random cotangent per cell

    def fused(lm, lt, z, b=batch):
        return fast_count_log_lik(b.x, lm, b.lfact, log_theta=None if likelihood == "poisson" else lt,
                                  zi_logits=z if likelihood == "zinb" else None, nonzero=b.nonzero, large=b.large)

    def fused_table(lm, lt, z):  # gene-wise theta: small counts from the per-gene table
        return fused(lm, lt, z, table_batch)

    def public(lm, lt, z):
        xx = batch.x
        if likelihood == "nb":
            lp = genjax.nb_log_prob_log(xx, lm, lt)
        elif likelihood == "zinb":
            lp = genjax.zinb_log_prob_log(xx, lm, lt, z)
        else:
            lp = genjax.poisson_log_prob_log(xx, lm)
        return jnp.sum(lp, axis=-1)

    @jax.jit
    def both(lm, lt, z):
        out = []
        for f in (fused, fused_table, public):
            out.append((f(lm, lt, z), jax.grad(lambda *a, f=f: jnp.dot(f(*a), w), argnums=(0, 1, 2))(lm, lt, z)))
        return out

    (v1, g1), (vt, gt), (v2, g2) = both(log_mu, log_theta, zi)
    for v, gr in ((v1, g1), (vt, gt)):
        np.testing.assert_allclose(v, v2, rtol=2e-6, atol=2e-3)
        for a, c, name in zip(gr, g2, ("log_mu", "log_theta", "zi_logits"), strict=True):
            np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4 * (1 + float(jnp.max(jnp.abs(c)))), err_msg=name)
    if likelihood == "zinb":  # per-cell theta (gene-cell dispersion) gathers per row and sums back exactly
        v3, g3 = jax.jit(jax.value_and_grad(lambda lt: jnp.dot(fused(log_mu, lt, zi), w)))(
            jnp.broadcast_to(log_theta, (b, g)))
        np.testing.assert_allclose(v3, jnp.dot(v1, w), rtol=1e-6)
        np.testing.assert_allclose(g3.sum(0), g1[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_split_loss_total_equals_public_log_prob(rng, likelihood):
    """The training loss's split: per-cell terms without the small-count part plus its batch total from the
    histogram give the public log-pmf's batch total, value and gradients (the loss weighs cells equally)."""
    b, g = 9, 25
    x = rng.negative_binomial(1, 0.3, (b, g)).astype(np.float32) * (rng.random((b, g)) < 0.6)
    x[0, 1] = 900.0
    x[1, :10] = np.arange(10)
    big_idx, big_val = padded_entries(x, int((x > SMALL).sum(1).max()), SMALL)
    batch = CountBatch(jnp.asarray(x), jnp.zeros(b), lfact=jnp.asarray(gammaln(x.astype(np.float64) + 1).sum(1),
                                                                        jnp.float32),
                       large=PaddedEntries(big_idx, big_val))
    zi_of = (lambda z: z) if likelihood == "zinb" else (lambda z: None)
    log_mu = jnp.asarray(rng.normal(0.5, 2.0, (b, g)), jnp.float32)
    log_theta = jnp.asarray(rng.uniform(-4, 12, (g,)), jnp.float32)
    zi = jnp.asarray(rng.normal(0, 1.5, (b, g)), jnp.float32)

    def split_total(lm, lt, z):
        per_cell, shared = fast_count_log_lik(batch.x, lm, batch.lfact, log_theta=lt, zi_logits=zi_of(z),
                                              large=batch.large, split=True)
        return jnp.sum(per_cell) + shared

    def public_total(lm, lt, z):
        if likelihood == "nb":
            return jnp.sum(genjax.nb_log_prob_log(batch.x, lm, lt))
        return jnp.sum(genjax.zinb_log_prob_log(batch.x, lm, lt, z))

    v1, g1 = jax.jit(jax.value_and_grad(split_total, argnums=(0, 1, 2)))(log_mu, log_theta, zi)
    v2, g2 = jax.jit(jax.value_and_grad(public_total, argnums=(0, 1, 2)))(log_mu, log_theta, zi)
    np.testing.assert_allclose(v1, v2, rtol=2e-6)
    for a, c, name in zip(g1, g2, ("log_mu", "log_theta", "zi_logits"), strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4 * (1 + float(jnp.max(jnp.abs(c)))), err_msg=name)
    per_cell, shared = fast_count_log_lik(batch.x, log_mu, batch.lfact, log_theta=log_theta, zi_logits=zi_of(zi),
                                          large=batch.large, split=True)
    assert float(shared) != 0.0  # the histogram route was taken (P(v, theta) != 0 for v >= 2)


def test_small_count_tables_match_mpmath():
    """The per-gene tables of the fused loss (by recurrence) against high-precision lgamma / digamma."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    log_theta = jnp.linspace(np.log(1e-4), np.log(1e8), 25, dtype=jnp.float32)
    t, dt = map(np.asarray, small_count_tables(log_theta))
    assert t.shape == dt.shape == (25, SMALL)
    for i, th in enumerate(np.asarray(jnp.exp(log_theta)).astype(np.float64)):
        th = mpmath.mpf(float(th))
        for v in range(1, SMALL + 1):
            exact = mpmath.loggamma(v + th) - mpmath.loggamma(th) - v * mpmath.log(th)
            dexact = th * (mpmath.digamma(v + th) - mpmath.digamma(th) - v / th)
            assert abs(float(t[i, v - 1]) - exact) <= 5e-7 * abs(exact) + (0 if v > 1 else 1e-30), (th, v)
            assert abs(float(dt[i, v - 1]) - dexact) <= 5e-7 * abs(dexact) + (0 if v > 1 else 1e-30), (th, v)


@pytest.mark.parametrize("n", [1, 3, 127, 128, 255, 256, 1024, 70000])
def test_small_count_histogram_is_exact_for_every_field_width(rng, n):
    """Packed uint32 bit fields: no carry between values at the largest batch each field width allows."""
    x = rng.integers(0, SMALL + 3, size=(n, 7)).astype(np.float32)
    x[:, 0] = 5.0  # one gene where every cell has the same count: its field reaches n
    expected = np.stack([(x == v).sum(0) for v in range(1, SMALL + 1)], axis=1)
    np.testing.assert_array_equal(np.asarray(small_count_histogram(jnp.asarray(x))), expected)


def test_gaussian_kl_closed_form(rng):
    mq, mp = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    vq, vp = rng.uniform(0.1, 3, (4, 3)), rng.uniform(0.1, 3, (4, 3))
    # KL by quadrature-free identity: E_q[log q - log p] for each dimension, summed
    ref = np.sum(0.5 * np.log(vp / vq) + (vq + (mq - mp) ** 2) / (2 * vp) - 0.5, axis=-1)
    np.testing.assert_allclose(gaussian_kl(mq, vq, mp, vp), ref, rtol=1e-5)
    np.testing.assert_allclose(gaussian_kl(mq, vq, mq, vq), 0.0, atol=1e-6)


def test_kl_warmup_schedule():
    w = [float(genjax.vae_kl_weight(s, beta=2.0, warmup_steps=10)) for s in (0, 5, 10, 50)]
    assert w == [0.0, 1.0, 2.0, 2.0]
    assert float(genjax.vae_kl_weight(3, beta=0.5)) == 0.5


# -- one conditional model trained once -------------------------------------------------------------------------

N_TYPES = 3


@pytest.fixture(scope="module")
def syn():
    # 1200 cells: the 10% validation split is a single batch (one evaluator compilation)
    return genjax.datasets.synthetic_counts(1200, 60, N_TYPES, library_size=2000, theta_median=4.0,
                                            theta_sd=1.0, de_fraction=0.5, de_sd=1.0, seed=0)


@pytest.fixture(scope="module")
def cvae(syn):
    model = genjax.VAE(syn, conditions=["cell_type"], conditional_prior=True, n_hidden=32, n_latent=4)
    model.fit(max_epochs=60, kl_warmup_epochs=10, lr=1e-2, progress=False, seed=0)
    return model


def _proportions(adata):
    return adata.varm["true_proportion"]  # genes x types


def test_fit_history_and_loss_decrease(cvae):
    h = cvae.history
    assert len(h) == 60 and h[-1]["step"] == 60 * (1080 // 128)
    assert {"loss", "rec", "kl_z", "elbo", "val_loss", "val_elbo", "kl_weight"} <= set(h[-1])
    assert h[-1]["val_loss"] < h[0]["val_loss"] - 10
    assert h[-1]["kl_weight"] == 1.0 and h[0]["kl_weight"] < 0.1


def test_recovers_known_dispersions(cvae, syn):
    theta_hat = np.exp(np.asarray(cvae.params["log_disp"]))
    theta = syn.var["true_theta"].to_numpy()
    expressed = _proportions(syn).mean(1) > 3e-3  # dispersion is only identifiable with enough counts
    assert expressed.sum() > 30
    r = np.corrcoef(np.log(theta_hat[expressed]), np.log(theta[expressed]))[0, 1]
    assert r > 0.85, r
    # no systematic bias: median log ratio within a factor of 1.5
    assert abs(np.median(np.log(theta_hat[expressed] / theta[expressed]))) < np.log(1.5)


def test_recovers_cell_type_means(cvae, syn):
    rho_hat = cvae.normalized_expression()
    np.testing.assert_allclose(rho_hat.sum(1), 1.0, rtol=1e-4)
    types = syn.obs["cell_type"].cat.codes.to_numpy()
    rho = _proportions(syn)
    for t in range(N_TYPES):
        est = np.log(rho_hat[types == t].mean(0))
        corr = [np.corrcoef(est, np.log(rho[:, u]))[0, 1] for u in range(N_TYPES)]
        assert corr[t] > 0.97 and corr[t] == max(corr), (t, corr)


def test_conditional_generation_reproduces_condition_means(cvae, syn):
    rho = _proportions(syn)
    for t in range(N_TYPES):
        gen = cvae.generate(2000, seed=t, cell_type=f"type_{t}")
        assert gen.shape == (2000, 60) and set(gen.obs["cell_type"]) == {f"type_{t}"}
        assert list(gen.obs["cell_type"].cat.categories) == [f"type_{u}" for u in range(N_TYPES)]
        x = np.asarray(gen.X)
        assert np.all(x >= 0) and np.all(x == np.round(x))
        est = np.log(x.sum(0) / x.sum() + 1e-6)
        corr = [np.corrcoef(est, np.log(rho[:, u] + 1e-6))[0, 1] for u in range(N_TYPES)]
        assert corr[t] > 0.95 and corr[t] == max(corr), (t, corr)
        # library sizes come from training cells of that type
        lib = gen.obs["library_size"].to_numpy()
        np.testing.assert_allclose(np.median(lib), np.median(np.asarray(syn.X.sum(1))), rtol=0.15)
    mixed = cvae.generate(3000, seed=9)  # conditions in training proportions
    frac = mixed.obs["cell_type"].value_counts(normalize=True).sort_index().to_numpy()
    true_frac = syn.obs["cell_type"].value_counts(normalize=True).sort_index().to_numpy()
    np.testing.assert_allclose(frac, true_frac, atol=0.04)
    np.testing.assert_array_equal(cvae.generate(5, seed=3).X, cvae.generate(5, seed=3).X)


def test_counterfactual_moves_cells_to_the_new_condition(cvae, syn):
    cells = syn[syn.obs["cell_type"] == "type_0"][:200]
    cf = cvae.counterfactual(cells, cell_type="type_1")
    assert cf.shape == cells.shape and set(cf.obs["cell_type"]) == {"type_1"}
    rho = _proportions(syn)
    mean = cf.layers["mean"]
    est = np.log(mean.sum(0) / mean.sum())
    assert np.corrcoef(est, np.log(rho[:, 1]))[0, 1] > np.corrcoef(est, np.log(rho[:, 0]))[0, 1] + 0.05
    # library sizes are the cells' own
    np.testing.assert_allclose(mean.sum(1), np.asarray(cells.X.sum(1)).ravel(), rtol=1e-3)


def test_elbo_and_importance_weighted_bound(cvae, syn):
    sub = syn[:300]
    elbo = cvae.elbo(sub)
    iw = cvae.marginal_ll(sub, n_samples=30)
    assert np.isfinite(elbo) and elbo < 0
    assert elbo < iw < elbo + 0.05 * abs(elbo)  # a tighter bound, by a few nats per cell
    np.testing.assert_allclose(cvae.elbo(sub), elbo)  # seeded: deterministic


def test_latent_and_posterior_predictive(cvae, syn):
    z, v = cvae.latent(give_var=True)
    assert z.shape == (1200, 4) and np.all(v > 0)
    # conditional prior: posterior means of each type sit near that type's prior mean
    fns = cvae.functions()
    codes = cvae.encode_conditions(N_TYPES, cell_type=[f"type_{t}" for t in range(N_TYPES)])
    pm, _ = fns.prior(cvae.params, cvae.condition(codes))
    types = syn.obs["cell_type"].cat.codes.to_numpy()
    for t in range(N_TYPES):
        d = np.linalg.norm(z[types == t].mean(0)[None] - np.asarray(pm), axis=1)
        assert np.argmin(d) == t
    pp = cvae.posterior_predictive(syn[:200], n_samples=1)  # shares its compilation with counterfactual
    assert pp.shape == (1, 200, 60)
    totals = np.asarray(syn[:200].X.sum(1)).ravel()
    np.testing.assert_allclose(pp.sum(2).mean(), totals.mean(), rtol=0.1)
    assert np.corrcoef(pp[0].sum(1), totals)[0, 1] > 0.5


def test_pure_functions_round_trip(cvae, syn):
    fns = cvae.functions()
    b = cvae.batch(rows=np.arange(8))

    @jax.jit
    def run(params, b):
        enc = fns.encode(params, b.x, b.cond)
        return enc, fns.decode(params, enc["z_mean"], b.log_lib, b.cond)

    enc, out = run(cvae.params, b)
    np.testing.assert_allclose(enc["z_mean"], cvae.latent(syn[:8]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.exp(out["log_mu"]).sum(1), np.exp(b.log_lib), rtol=1e-4)
    np.testing.assert_allclose(np.exp(out["log_scale"]), cvae.normalized_expression(syn[:8]), rtol=1e-5)


def test_save_load_round_trip_is_identical(cvae, syn, tmp_path):
    cvae.save(tmp_path / "m")
    loaded = genjax.VAE.load(tmp_path / "m")
    for a, b in zip(jax.tree.leaves(cvae.params), jax.tree.leaves(loaded.params), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert loaded.module == cvae.module and loaded.registry == cvae.registry
    assert loaded.history == cvae.history
    np.testing.assert_array_equal(loaded.latent(syn[:40]), cvae.latent(syn[:40]))
    np.testing.assert_array_equal(loaded.generate(20, seed=4, cell_type="type_2").X,
                                  cvae.generate(20, seed=4, cell_type="type_2").X)
    with pytest.raises(ValueError, match="loaded without data"):
        loaded.latent()
    cvae.save(tmp_path / "m")  # overwriting is atomic and leaves one directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    with pytest.raises(FileExistsError):
        cvae.save(tmp_path / "m", overwrite=False)
    with pytest.raises(FileNotFoundError):
        genjax.VAE.load(tmp_path / "nothing")
    with pytest.raises(ValueError, match="gene set"):
        genjax.VAE.load(tmp_path / "m", adata=syn[:, :50])


def test_inference_input_errors(cvae, syn):
    with pytest.raises(ValueError, match="gene set.*gene_59"):
        cvae.latent(syn[:, :59])
    reordered = syn[:20, ::-1]
    np.testing.assert_allclose(cvae.latent(reordered), cvae.latent(syn[:20]), rtol=1e-5, atol=1e-6)
    other = syn[:10].copy()
    other.obs["cell_type"] = other.obs["cell_type"].astype(str)
    other.obs.iloc[4, other.obs.columns.get_loc("cell_type")] = "type_9"
    with pytest.raises(ValueError, match="unknown category 'type_9'.*'cell_4'"):
        cvae.latent(other)
    del other.obs["cell_type"]
    with pytest.raises(KeyError, match="'cell_type'"):
        cvae.latent(other)
    bad = syn[:10].copy()
    x = bad.X.toarray()
    x[3, 7] = 1.5
    bad.X = sp.csr_matrix(x)
    with pytest.raises(ValueError, match="integer.*'cell_3'.*'gene_7'"):
        cvae.latent(bad)
    with pytest.raises(KeyError, match="'tissue' is not a condition"):
        cvae.generate(3, tissue="liver")
    with pytest.raises(ValueError, match="unknown category 'B cells'"):
        cvae.generate(3, cell_type="B cells")
    with pytest.raises(ValueError, match="at least one condition"):
        cvae.counterfactual(syn[:5])


def test_constructor_errors(syn):
    with pytest.raises(ValueError, match="likelihood"):
        genjax.VAE(syn, likelihood="binomial")
    with pytest.raises(ValueError, match="dispersion"):
        genjax.VAE(syn, dispersion="cell")
    with pytest.raises(ValueError, match="needs a categorical condition"):
        genjax.VAE(syn, dispersion="gene-category")
    with pytest.raises(KeyError, match="'tissue'"):
        genjax.VAE(syn, conditions=["tissue"])
    with pytest.raises(KeyError, match="'counts'"):
        genjax.VAE(syn, layer="counts")
    neg = syn[:20].copy()
    x = neg.X.toarray()
    x[2, 5] = -3
    neg.X = x
    with pytest.raises(ValueError, match="non-negative.*'cell_2'.*'gene_5'"):
        genjax.VAE(neg)
    empty = syn[:20].copy()
    x = empty.X.toarray()
    x[6] = 0
    empty.X = x
    with pytest.raises(ValueError, match="'cell_6'.*zero total counts"):
        genjax.VAE(empty)
    with pytest.raises(ValueError, match="library_key"):
        genjax.VAE(syn, conditions=["cell_type"], library_key="cell_type")
    with pytest.raises(KeyError, match="'sf'"):
        genjax.VAE(syn, size_factor_key="sf")


# -- ZINB fits excess zeros that NB cannot ----------------------------------------------------------------------


def test_zinb_fits_excess_zeros_that_nb_cannot(rng):
    adata = genjax.datasets.synthetic_counts(800, 30, 2, library_size=600, theta_median=10.0, theta_sd=0.3,
                                             expression_sd=0.5, seed=2)
    x = adata.X.toarray()
    x[rng.random(x.shape) < 0.4] = 0.0  # 40% technical zeros on top of the NB zeros
    x[:, 0] += 1
    adata.X = sp.csr_matrix(x)
    fits = {}
    for lik in ("nb", "zinb"):
        m = genjax.VAE(adata, likelihood=lik, n_hidden=16, n_latent=2)
        m.fit(max_epochs=30, kl_warmup_epochs=5, lr=1e-2, train_size=1.0, progress=False)
        fits[lik] = m
    nb, zinb = (np.mean([r["elbo"] for r in fits[k].history[-5:]]) for k in ("nb", "zinb"))
    assert zinb > nb + 1.0, (nb, zinb)  # a clearly better ELBO per cell (30 genes)
    m = fits["zinb"]
    b = m.batch(rows=np.arange(200))
    fns = m.functions()
    enc = fns.encode(m.params, b.x)
    out = fns.decode(m.params, enc["z_mean"], jnp.asarray(b.log_lib))
    pi = float(jnp.mean(jax.nn.sigmoid(out["zi_logits"])))
    assert 0.25 < pi < 0.55, pi  # the fitted zero-inflation probability is near the 40% that was added


# -- training-loop integration: resume and CSR == dense ---------------------------------------------------------


def test_resume_equals_uninterrupted_and_csr_equals_dense(tmp_path):
    adata = genjax.datasets.synthetic_counts(220, 15, 2, library_size=300, seed=5, sparse=True)
    dense = adata.copy()
    dense.X = adata.X.toarray()
    kw = dict(likelihood="poisson", n_hidden=8, n_latent=2)
    fit = dict(batch_size=32, kl_warmup_epochs=2, train_size=1.0, progress=False, seed=3, keep=10,
               checkpoint_dir=tmp_path / "ck")
    a = genjax.VAE(dense, **kw)  # uninterrupted, dense, 4 epochs, a checkpoint after every epoch
    a.fit(max_epochs=4, **fit)
    steps = sorted(int(p.name) for p in (tmp_path / "ck" / "latest").iterdir() if p.name.isdigit())
    assert len(steps) == 4
    for step in steps[2:]:  # an interruption after epoch 2: the later checkpoints were never written
        shutil.rmtree(tmp_path / "ck" / "latest" / str(step))
    c = genjax.VAE(adata, **kw)  # resumed from epoch 2, reading the CSR matrix through a HostSource
    c.fit(max_epochs=4, resume=True, **fit)
    assert len(c.history) == 4 and c.history[:2] == a.history[:2]
    np.testing.assert_array_equal([r["loss"] for r in c.history], [r["loss"] for r in a.history])
    for p, q in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params), strict=True):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))


# -- other observation models and options ------------------------------------------------------------------------


def test_options_train_to_finite_losses(rng):
    adata = genjax.datasets.synthetic_counts(300, 20, 2, library_size=500, seed=4)
    adata.obs["batch"] = rng.choice(["b0", "b1"], adata.n_obs)
    adata.obs["age"] = rng.normal(40, 5, adata.n_obs)
    m = genjax.VAE(adata, likelihood="zinb", conditions=["cell_type", "batch"], continuous=["age"],
                   dispersion="gene-cell", library="latent", library_key="batch", n_layers=2,
                   inject_all_layers=True, n_hidden=16, n_latent=3)
    h = m.fit(max_epochs=4, kl_warmup_epochs=1, train_size=1.0, progress=False)
    assert all(np.isfinite(r["loss"]) for r in h)
    assert h[-1]["kl_l"] > 0 and h[-1]["loss"] < h[0]["loss"]
    rho = m.normalized_expression(batch="b1")  # decoded under a swapped condition, latent library
    assert rho.shape == (300, 20) and np.all(np.isfinite(rho))
    np.testing.assert_allclose(rho.sum(1), 1.0, rtol=1e-4)


def test_gaussian_and_gene_category_losses(rng):
    adata = genjax.datasets.synthetic_counts(64, 20, 2, library_size=500, seed=4)
    adata.X = np.log1p(adata.X.toarray())
    m = genjax.VAE(adata, likelihood="gaussian", dispersion="gene-category", conditions=["cell_type"],
                   n_hidden=16, n_latent=3)
    assert m.params["log_disp"].shape == (2, 20)
    b = m.batch()
    loss_fn = m.functions().loss

    @jax.jit
    def descend(params):  # plain gradient descent on one batch lowers the negative ELBO
        def body(p, i):
            loss, grads = jax.value_and_grad(lambda q: loss_fn(q, b, jax.random.key(0), i)[0])(p)
            return jax.tree.map(lambda q, g: q - 3e-3 * g, p, grads), loss

        return jax.lax.scan(body, params, jnp.arange(30))[1]

    losses = np.asarray(descend(m.params))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 1.0


def test_host_init_matches_module_structure_and_scales():
    module = genjax.VAEModule(50, "zinb", dispersion="gene-cell", n_categories=(3, 2), n_continuous=1,
                              library="latent", conditional_prior=True, n_layers=2, n_hidden=64)
    params = genjax.vae_init(module, seed=1)
    abstract = jax.eval_shape(module.init, jax.random.key(0), genjax.vae.dummy_batch(module))["params"]
    assert jax.tree.structure(params) == jax.tree.structure(abstract)
    for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(abstract), strict=True):
        assert p.shape == a.shape and p.dtype == a.dtype
    k = np.asarray(params["z_encoder"]["dense_0"]["kernel"])  # lecun normal: variance 1 / fan_in
    np.testing.assert_allclose(k.var(), 1 / 50, rtol=0.1)
    assert np.abs(k).max() <= 2 / 0.8796 / np.sqrt(50) + 1e-6
    assert float(jnp.abs(params["prior_mean_0"]).max()) == 0.0
    same = genjax.vae_init(module, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(same), strict=True))


def test_training_loss_equals_the_per_cell_negative_elbo(cvae):
    """make_vae_loss / make_vae_eval_loss (split small-count total) == the mean of the exact per-cell terms."""
    from genjax.vae import make_vae_eval_loss, make_vae_loss, vae_elbo_terms

    batch = jax.tree.map(jnp.asarray, cvae.batch(rows=np.arange(64)))
    assert batch.large is not None  # the gene-dispersion NB route, where the histogram total applies
    key = jax.random.key(3)
    loss, aux = jax.jit(make_vae_loss(cvae.module))(cvae.params, batch, key, jnp.asarray(10**6))
    t = vae_elbo_terms(cvae.module, cvae.params, batch, key)
    expected = -jnp.mean(t["rec"] - t["kl_z"] - t["kl_l"])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(aux["rec"], -jnp.mean(t["rec"]), rtol=1e-6)
    v_loss, _ = jax.jit(make_vae_eval_loss(cvae.module))(cvae.params, batch, key)
    t = vae_elbo_terms(cvae.module, cvae.params, batch, key, deterministic=True)
    np.testing.assert_allclose(v_loss, -jnp.mean(t["rec"] - t["kl_z"] - t["kl_l"]), rtol=1e-6)
