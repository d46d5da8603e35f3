"""scvi-tools' vocabulary on :class:`genjax.VAE`: constructor aliases, ``train``, the ``get_*`` methods, the
history as a dict of DataFrames, scalable posterior predictive draws, save / load.

Each alias is compared with the genjax call it wraps (equal arrays at the same seed), and the results are checked
against what they must satisfy independently: proportions that sum to the requested library size, NB means that
sum to the observed totals, dispersions equal to the fitted per-batch table, standardised latent draws that are
N(0, 1) by a KS test, the ELBO below the negative reconstruction error by the (non-negative) KL. One model is
trained once (two epochs on 240 tiny cells) and shared; XLA's optimisation passes are off while the module runs
(compilation dominates at this size; both sides of every comparison run the same compiled code).
"""

from collections.abc import Mapping, Sequence

import jax
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

import genjax
from genjax.models import TrainingHistory, resolve_scvi_aliases

N_CELLS, N_GENES = 240, 20
TINY = dict(n_hidden=8, n_latent=2)


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="module")
def adata():
    a = genjax.datasets.synthetic_counts(N_CELLS, N_GENES, 3, library_size=300, seed=3)
    rng = np.random.default_rng(0)
    a.obs["batch"] = pd.Categorical(rng.choice(["b0", "b1", "b2"], N_CELLS))
    a.obs["donor"] = pd.Categorical(rng.choice(["d0", "d1"], N_CELLS))
    a.obs["age"] = rng.normal(40.0, 10.0, N_CELLS)
    return a


SCVI_KW = dict(batch_key="batch", labels_key="cell_type", categorical_covariate_keys=["donor"],
               continuous_covariate_keys="age", gene_likelihood="zinb", dispersion="gene-batch")
GENJAX_KW = dict(likelihood="zinb", conditions=["batch", "donor"], continuous=["age"], dispersion="gene-category",
                 dispersion_key="batch")
FIT = dict(max_epochs=2, batch_size=64, seed=1)


@pytest.fixture(scope="module")
def model(adata):
    m = genjax.VAE(adata, **SCVI_KW, **TINY)
    m.train(**FIT, plan_kwargs={"lr": 5e-3, "n_epochs_kl_warmup": 1}, enable_progress_bar=False)
    return m


# -- constructor ------------------------------------------------------------------------------------------------


def test_constructor_aliases_build_the_genjax_model(adata, model):
    plain = genjax.VAE(adata, **GENJAX_KW, **TINY)
    aliased = genjax.VAE(adata, **SCVI_KW, **TINY)
    assert aliased.module == plain.module and aliased.registry == plain.registry
    for p, q in zip(jax.tree.leaves(aliased.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
    assert aliased.batch_key == "batch" and aliased.labels_key == "cell_type" and plain.batch_key is None
    assert list(aliased.conditions) == ["batch", "donor"] and "cell_type" not in aliased.conditions
    assert aliased.config.dispersion == "gene-category" and aliased.config.dispersion_key == "batch"
    assert aliased.fingerprint() == plain.fingerprint()  # the names of roles do not change a checkpoint's identity
    # a key named both as a genjax condition and as the batch is one condition
    both = genjax.VAE(adata, conditions=["donor", "batch"], batch_key="batch", **TINY)
    assert list(both.conditions) == ["donor", "batch"] and both.batch_key == "batch"


def test_alias_resolution():
    base = dict(likelihood=None, gene_likelihood=None, conditions=None, continuous=None, batch_key=None,
                labels_key=None, categorical_covariate_keys=None, continuous_covariate_keys=None,
                dispersion="gene", dispersion_key=None)
    assert resolve_scvi_aliases(**base)["likelihood"] == "nb"  # genjax's default, not scvi-tools' zinb
    assert resolve_scvi_aliases(**{**base, "gene_likelihood": "normal"})["likelihood"] == "gaussian"
    assert resolve_scvi_aliases(**{**base, "likelihood": "zinb", "gene_likelihood": "zinb"})["likelihood"] == "zinb"
    label = resolve_scvi_aliases(**{**base, "conditions": ["cell_type"], "labels_key": "cell_type",
                                    "dispersion": "gene-label"})
    assert (label["dispersion"], label["dispersion_key"]) == ("gene-category", "cell_type")
    merged = resolve_scvi_aliases(**{**base, "conditions": "a", "batch_key": "b", "categorical_covariate_keys":
                                     ["c", "a"], "continuous": ["x"], "continuous_covariate_keys": ["y", "x"]})
    assert merged["conditions"] == ("a", "b", "c") and merged["continuous"] == ("x", "y")


@pytest.mark.parametrize("kwargs, match", [
    (dict(likelihood="nb", gene_likelihood="zinb"), "likelihood='nb' and gene_likelihood='zinb' disagree"),
    (dict(dispersion="gene-batch"), "gene-batch.*batch_key"),
    (dict(batch_key="batch", dispersion="gene-batch", dispersion_key="donor"), "dispersion_key='donor'"),
    (dict(labels_key="cell_type", dispersion="gene-label"), "labels_key 'cell_type'.*conditions="),
    (dict(dispersion="gene-label"), "gene-label.*labels_key"),
])
def test_conflicting_or_unmappable_aliases_are_named(adata, kwargs, match):
    with pytest.raises(ValueError, match=match):
        genjax.VAE(adata, **kwargs, **TINY)


def test_missing_keys_are_named(adata):
    with pytest.raises(KeyError, match="labels_key 'celltype' not found"):
        genjax.VAE(adata, labels_key="celltype", **TINY)
    with pytest.raises(KeyError, match="plate"):
        genjax.VAE(adata, batch_key="plate", **TINY)


# -- train and history ------------------------------------------------------------------------------------------


def test_train_is_fit_with_scvi_keywords(adata, model):
    plain = genjax.VAE(adata, **GENJAX_KW, **TINY)
    records = plain.fit(**FIT, lr=5e-3, kl_warmup_epochs=1, progress=False)
    untimed = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
    assert isinstance(records, list) and untimed(records) == untimed(model.history)
    for p, q in zip(jax.tree.leaves(model.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
    with pytest.raises(ValueError, match=r"plan_kwargs \['reduce_lr_on_plateau'\]"):
        plain.train(max_epochs=1, plan_kwargs={"reduce_lr_on_plateau": True})
    with pytest.raises(ValueError, match="must add up to 1"):
        plain.train(max_epochs=1, train_size=0.8, validation_size=0.1)
    with pytest.raises(ValueError, match="disagree"):
        plain.train(max_epochs=1, plan_kwargs={"lr": 1e-3}, lr=1e-2)


def test_history_reads_as_records_and_as_scvi_dataframes(model):
    h = model.history
    records = h.records
    assert len(h) == 2 and [r["epoch"] for r in h] == [0, 1] and h[-1] is records[-1] and h[:1] == records[:1]
    assert isinstance(h, Sequence) and not isinstance(h, Mapping)  # genjax.plots reads it as one stage's records
    # the keys of scvi-tools 1.4's SCVI.history (train(..., check_val_every_n_epoch=1)), and kl_weight
    expected = {"train_loss", "elbo_train", "reconstruction_loss_train", "kl_local_train", "kl_global_train",
                "validation_loss", "elbo_validation", "reconstruction_loss_validation", "kl_local_validation",
                "kl_global_validation", "kl_weight"}
    assert expected <= set(h.keys()) and "elbo_train" in h and "loss" in h and "nope" not in h
    elbo = h["elbo_train"]
    assert list(elbo.columns) == ["elbo_train"] and elbo.index.name == "epoch" and list(elbo.index) == [0, 1]
    # scvi-tools' elbo_* is the negative ELBO: reconstruction loss plus local KL
    np.testing.assert_allclose(elbo["elbo_train"], [-r["elbo"] for r in records], rtol=1e-6)
    np.testing.assert_allclose(h["kl_local_train"]["kl_local_train"], [r["kl_z"] + r["kl_l"] for r in records])
    np.testing.assert_allclose(h["elbo_validation"]["elbo_validation"],
                               h["reconstruction_loss_validation"]["reconstruction_loss_validation"]
                               + h["kl_local_validation"]["kl_local_validation"], rtol=1e-5)
    np.testing.assert_allclose(h["elbo_validation"]["elbo_validation"], [-r["val_elbo"] for r in records], rtol=1e-6)
    assert (h["kl_global_train"]["kl_global_train"] == 0).all()
    assert dict(h.items()).keys() == set(h.keys()) and h.get("nope", 7) == 7
    with pytest.raises(KeyError, match="'elbo_tran' is not in this training history"):
        h["elbo_tran"]


def test_history_assignment_wraps_records():
    h = TrainingHistory([{"epoch": 3, "loss": 2.0}, {"epoch": 4, "loss": 1.0, "val_loss": 1.5}])
    assert h.keys() == ["train_loss", "train_loss_epoch", "validation_loss", "loss", "val_loss"]
    assert list(h["validation_loss"].index) == [4]  # only the epochs that have the value
    assert h == [{"epoch": 3, "loss": 2.0}, {"epoch": 4, "loss": 1.0, "val_loss": 1.5}] and h != [{}]
    with pytest.raises(TypeError, match="record 0 is a float"):
        TrainingHistory([1.0])


# -- inference --------------------------------------------------------------------------------------------------


def test_latent_representation(model, adata):
    mean, var = model.latent(give_var=True)
    np.testing.assert_array_equal(model.get_latent_representation(), mean)
    m, v = model.get_latent_representation(return_dist=True)
    np.testing.assert_array_equal(m, mean)
    np.testing.assert_array_equal(v, var)
    idx = [5, 0, 17]
    np.testing.assert_array_equal(model.get_latent_representation(indices=idx), model.latent(adata[idx]))
    z = model.get_latent_representation(give_mean=False, seed=4)
    assert stats.kstest(((z - mean) / np.sqrt(var)).ravel(), "norm").pvalue > 1e-3  # draws from q(z | x)


def test_normalized_expression_dataframe_genes_and_cells(model, adata):
    df = model.get_normalized_expression(seed=2)
    assert isinstance(df, pd.DataFrame) and df.shape == (N_CELLS, N_GENES)
    assert list(df.index) == list(adata.obs_names) and list(df.columns) == list(adata.var_names)
    # n_samples=1 is one posterior draw, as in scvi-tools: normalized_expression(n_samples=1) at the same seed
    np.testing.assert_array_equal(df.to_numpy(), model.normalized_expression(n_samples=1, seed=2))
    genes = ["gene_7", "gene_2"]
    sub = model.get_normalized_expression(gene_list=genes, seed=2)
    assert list(sub.columns) == genes
    np.testing.assert_array_equal(sub.to_numpy(), df[genes].to_numpy())
    idx = np.array([3, 9, 11])
    cells = model.get_normalized_expression(indices=idx, library_size=1e4, seed=2, return_numpy=True)
    np.testing.assert_array_equal(cells, model.normalized_expression(adata[idx], n_samples=1, seed=2,
                                                                     library_size=1e4))
    np.testing.assert_allclose(cells.sum(1), 1e4, rtol=1e-4)  # proportions scaled to the library size
    mask = np.zeros(N_CELLS, bool)
    mask[idx] = True
    assert list(model.get_normalized_expression(indices=mask).index) == list(adata.obs_names[idx])
    with pytest.raises(KeyError, match="gene 'CD3E' of gene_list is not a gene of the model"):
        model.get_normalized_expression(gene_list=["gene_1", "CD3E"])
    with pytest.raises(ValueError, match=r"indices must be cell positions in \[-240, 240\); found 240"):
        model.get_normalized_expression(indices=[0, 240])


def test_transform_batch_averages_the_batches(model):
    one = {b: model.get_normalized_expression(transform_batch=b, n_samples=2, seed=5, return_numpy=True)
           for b in ("b0", "b2")}
    np.testing.assert_array_equal(one["b0"], model.normalized_expression(n_samples=2, seed=5, batch="b0"))
    both = model.get_normalized_expression(transform_batch=["b0", "b2"], n_samples=2, seed=5, return_numpy=True)
    np.testing.assert_allclose(both, (one["b0"] + one["b2"]) / 2, rtol=1e-6)
    assert not np.allclose(one["b0"], one["b2"], rtol=1e-3)  # the batch reaches the decoder
    np.testing.assert_array_equal(model.get_normalized_expression(transform_batch=2, seed=5, return_numpy=True),
                                  model.get_normalized_expression(transform_batch="b2", seed=5, return_numpy=True))
    with pytest.raises(ValueError, match=r"transform_batch 'b9' is not a category of batch_key 'batch'"):
        model.get_normalized_expression(transform_batch=["b0", "b9"])


def test_every_draw_and_latent_library(model):
    draws = model.get_normalized_expression(n_samples=3, return_mean=False, seed=6)
    assert isinstance(draws, np.ndarray) and draws.shape == (3, N_CELLS, N_GENES)
    mean = model.get_normalized_expression(n_samples=3, seed=6, return_numpy=True)
    np.testing.assert_allclose(draws.mean(0), mean, rtol=1e-6)
    assert not np.allclose(draws[0], draws[1])
    with pytest.raises(ValueError, match="return_numpy=True"):
        model.get_normalized_expression(n_samples=3, return_mean=False, return_numpy=False)
    # library_size="latent": the NB mean mu at the cell's library, what get_likelihood_parameters calls "mean"
    mu = model.get_normalized_expression(library_size="latent", seed=6, return_numpy=True)
    np.testing.assert_array_equal(mu, model.get_likelihood_parameters(seed=6)["mean"])


def test_no_batch_key_means_no_transform_batch(adata):
    plain = genjax.VAE(adata, conditions=["batch"], **TINY)
    with pytest.raises(ValueError, match="transform_batch needs a model with a batch_key"):
        plain.get_normalized_expression(transform_batch="b0")


def test_likelihood_parameters(model, adata):
    p = model.get_likelihood_parameters(indices=np.arange(40), seed=1)
    assert set(p) == {"mean", "dispersions", "dropout"} and all(v.shape == (40, N_GENES) for v in p.values())
    totals = np.asarray(adata.X[:40].sum(1)).ravel()
    np.testing.assert_allclose(p["mean"].sum(1), totals, rtol=1e-4)  # mu = l * rho, rho sums to 1
    # gene-batch dispersion: each cell's theta is its batch's row of the fitted table
    table = np.exp(np.asarray(model.params["log_disp"]))
    codes = adata.obs["batch"].cat.codes.to_numpy()[:40]
    np.testing.assert_allclose(p["dispersions"], table[codes], rtol=1e-6)
    assert np.all((p["dropout"] > 0) & (p["dropout"] < 1))
    several = model.get_likelihood_parameters(indices=np.arange(40), n_samples=3, seed=1)
    assert several["mean"].shape == (3, 40, N_GENES)
    averaged = model.get_likelihood_parameters(indices=np.arange(40), n_samples=3, seed=1, give_mean=True)
    np.testing.assert_allclose(averaged["mean"], several["mean"].mean(0), rtol=1e-6)


def test_elbo_marginal_ll_reconstruction_and_library(model, adata):
    assert model.get_elbo(seed=3) == model.elbo(seed=3)
    per_cell = model.get_elbo(return_mean=False, seed=3)
    assert per_cell.shape == (N_CELLS,) and np.isclose(per_cell.mean(), model.elbo(seed=3), rtol=1e-6)
    rec = model.get_reconstruction_error(return_mean=False, seed=3)["reconstruction_loss"]
    assert np.all(-per_cell >= rec - 1e-3)  # -ELBO = reconstruction loss + KL, KL >= 0 (same draws)
    assert np.isclose(model.get_reconstruction_error(seed=3)["reconstruction_loss"], rec.mean(), rtol=1e-6)
    assert model.get_marginal_ll(n_mc_samples=4, seed=3) == model.marginal_ll(n_samples=4, seed=3)
    lib = model.get_latent_library_size()  # observed library: the totals, exactly
    np.testing.assert_array_equal(lib[:, 0], np.asarray(adata.X.sum(1)).ravel())
    assert lib.shape == (N_CELLS, 1)


# -- posterior predictive, generate, save / load ----------------------------------------------------------------


def test_posterior_predictive_layouts_and_sparse(model, adata):
    dense = model.posterior_predictive(n_samples=2, seed=8)
    assert dense.shape == (2, N_CELLS, N_GENES) and dense.dtype == np.float32
    np.testing.assert_array_equal(dense, np.round(dense))
    last = model.posterior_predictive(n_samples=2, seed=8, layout="samples-last")
    np.testing.assert_array_equal(last, np.moveaxis(dense, 0, -1))
    csr = model.posterior_predictive(n_samples=2, seed=8, sparse=True)
    assert len(csr) == 2 and all(sp.isspmatrix_csr(m) and m.dtype == np.float32 for m in csr)
    for k in range(2):
        np.testing.assert_array_equal(csr[k].toarray(), dense[k])
    idx, genes = [2, 4, 6], ["gene_3", "gene_0"]
    part = model.posterior_predictive(n_samples=2, seed=8, indices=idx, gene_list=genes)
    np.testing.assert_array_equal(part, model.posterior_predictive(adata[idx], n_samples=2, seed=8)[:, :, [3, 0]])
    with pytest.raises(ValueError, match="samples-last"):
        model.posterior_predictive(sparse=True, layout="samples-last")


def test_generate_stores_integer_library_sizes(model):
    lib = model.generate(6, seed=1).obs["library_size"]
    assert lib.dtype == np.int64 and (lib > 0).all()


def test_save_load_keeps_keys_and_history(model, adata, tmp_path):
    model.save(tmp_path / "m")
    loaded = genjax.VAE.load(tmp_path / "m", adata=adata)
    assert loaded.batch_key == "batch" and loaded.labels_key == "cell_type"
    assert isinstance(loaded.history, TrainingHistory) and loaded.history == model.history
    pd.testing.assert_frame_equal(loaded.history["elbo_train"], model.history["elbo_train"])
    pd.testing.assert_frame_equal(loaded.get_normalized_expression(transform_batch="b1", seed=3),
                                  model.get_normalized_expression(transform_batch="b1", seed=3))


def test_differential_expression_is_the_function(model, adata):
    kw = dict(groupby="cell_type", group1="type_0", group2="type_1", n_samples=60, seed=2)
    pd.testing.assert_frame_equal(model.differential_expression(**kw),
                                  genjax.models.differential_expression(model, adata, **kw))
