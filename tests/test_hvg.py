"""Highly variable genes (seurat_v3): the loess against per-point weighted least squares, the selection against
genes built to be variable, batches and named errors."""

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import genjax


def _loess_reference(x, y, span):
    """Each point's own weighted quadratic fit (numpy polyfit with sqrt weights), one at a time."""
    n = len(x)
    q = math.ceil(span * n)
    out = np.empty(n)
    for i in range(n):
        d = np.abs(x - x[i])
        d_max = np.sort(d)[q - 1]
        w = np.clip(1 - (d / d_max) ** 3, 0, None) ** 3
        coef = np.polyfit(x - x[i], y, 2, w=np.sqrt(w))
        out[i] = coef[-1]
    return out


def test_loess_is_the_local_weighted_quadratic_fit():
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(-2, 3, 300))
    y = np.sin(x) + 0.3 * x**2 + rng.normal(0, 0.2, 300)
    perm = rng.permutation(300)  # input order must not matter
    fitted = genjax.data.loess_fit(x[perm], y[perm], span=0.3, chunk=64)
    np.testing.assert_allclose(fitted, _loess_reference(x, y, 0.3)[perm], rtol=1e-8, atol=1e-10)


def _counts(seed=0, cells=300, genes=200, variable=20):
    """Poisson counts; genes 0..variable-1 (means spread like the others') switch between two levels across
    cells, so their variance exceeds the mean-variance trend of the rest."""
    rng = np.random.default_rng(seed)
    mu = np.exp(rng.normal(0, 1, genes))
    mu[:variable] = np.exp(np.linspace(-0.3, 1.5, variable))
    lam = np.broadcast_to(mu, (cells, genes)).copy()
    groups = rng.integers(0, 2, cells)
    lam[:, :variable] *= np.where(groups[:, None] == 1, 1.9, 0.1)  # same mean, extra between-cell variance
    X = rng.poisson(lam).astype(np.float32)
    obs = pd.DataFrame({"batch": np.where(np.arange(cells) % 2, "b1", "b2")}, index=[f"c{i}" for i in range(cells)])
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(genes)]))


def test_the_genes_with_extra_variance_are_selected():
    adata = _counts()
    assert genjax.data.highly_variable_genes(adata, n_top_genes=20) is None
    assert set(np.flatnonzero(adata.var["highly_variable"])) == set(range(20))
    ranks = adata.var["highly_variable_rank"].to_numpy()
    assert sorted(ranks[~np.isnan(ranks)]) == list(range(20))
    np.testing.assert_allclose(adata.var["means"], adata.X.mean(0), rtol=1e-6)
    np.testing.assert_allclose(adata.var["variances"], adata.X.var(0, ddof=1), rtol=1e-5)
    batched = _counts()
    genjax.data.highly_variable_genes(batched, n_top_genes=20, batch_key="batch", subset=True)
    assert batched.n_vars == 20 and set(batched.var_names) == {f"g{j}" for j in range(20)}
    assert (batched.var["highly_variable_nbatches"] == 2).all()


def test_bad_input_is_named():
    adata = _counts()
    with pytest.raises(KeyError, match="batch_key 'donor'"):
        genjax.data.highly_variable_genes(adata, batch_key="donor")
    with pytest.raises(ValueError, match="n_top_genes"):
        genjax.data.highly_variable_genes(adata, n_top_genes=0)
    adata.X[3, 5] = 1.5
    with pytest.raises(ValueError, match="'c3'.*'g5'"):
        genjax.data.highly_variable_genes(adata)
