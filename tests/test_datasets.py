"""Bundled PBMC3k and the synthetic generators: shapes, provenance, and that the recorded truth is the truth."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

import genjax
from genjax.data.datasets import data_path


def test_pbmc3k_is_bundled_with_provenance_and_licence():
    adata = genjax.datasets.pbmc3k()
    assert adata.shape == (2638, 2767)
    assert sp.issparse(adata.X)
    data = adata.X.data
    assert np.all(data >= 0) and np.all(data == np.round(data))
    genjax.validate_counts(adata.X, obs_names=adata.obs_names, var_names=adata.var_names)
    counts = adata.obs["cell_type"].value_counts()
    assert len(counts) == 8 and counts["CD4 T cells"] == 1144 and counts["Megakaryocytes"] == 15
    prov = json.loads(data_path("pbmc3k.PROVENANCE.json").read_text())
    assert "CC-BY-4.0" in prov["license"] and "provenance" in adata.uns
    assert "CC BY 4.0" in data_path("pbmc3k.LICENSE.md").read_text()
    assert genjax.datasets.pbmc3k() is not adata  # a fresh copy per call


def test_perturbench_devel_is_bundled_with_provenance_and_licence():
    adata = genjax.datasets.perturbench_devel()
    assert adata.shape == (5961, 500) and sp.issparse(adata.X)
    genjax.validate_counts(adata.X, obs_names=adata.obs_names, var_names=adata.var_names)
    norman = genjax.datasets.perturbench_devel("norman19")
    assert norman.n_obs == 3375 and (norman.obs["condition"] == "control").sum() == 100
    spec = genjax.data.PerturbationSpec("condition", "control")
    doubles = genjax.data.combinations_with_singles(norman, spec)
    assert int(doubles["has_singles"].sum()) == 5
    mcf = genjax.datasets.perturbench_devel("mcfaline23")
    assert sorted(mcf.obs["cell_type"].unique()) == ["A172", "T98G", "U87MG"]
    prov = json.loads(data_path("perturbench_devel.PROVENANCE.json").read_text())
    assert "BSD-3-Clause" in prov["license"] and "provenance" in adata.uns
    assert "Copyright (c) 2024, Altos Labs" in data_path("perturbench_devel.LICENSE.md").read_text()
    with pytest.raises(ValueError, match="'norman'"):
        genjax.datasets.perturbench_devel("norman")


def test_synthetic_counts_truth_matches_the_draws():
    adata = genjax.datasets.synthetic_counts(3000, 40, 3, library_size=3000, theta_median=5.0, seed=1)
    again = genjax.datasets.synthetic_counts(3000, 40, 3, library_size=3000, theta_median=5.0, seed=1)
    assert (adata.X != again.X).nnz == 0  # reproducible from the seed
    x = adata.X.toarray()
    rho = adata.varm["true_proportion"]  # genes x types
    np.testing.assert_allclose(rho.sum(0), 1.0, rtol=1e-10)
    lib = adata.obs["true_library"].to_numpy()
    types = adata.obs["cell_type"].cat.codes.to_numpy()
    # E[x / L] = rho_t: per-type means of the library-normalised counts match the recorded proportions
    for t in range(3):
        est = (x[types == t] / lib[types == t, None]).mean(0)
        big = rho[:, t] > 2e-3
        np.testing.assert_allclose(est[big], rho[big, t], rtol=0.12)
    # NB variance mu + mu^2 / theta: moment estimate of theta on well-expressed genes within one type
    sel = types == 0
    mu = lib[sel, None] * rho[None, :, 0]
    resid = (x[sel] - mu) ** 2 - mu
    theta_hat = (mu**2).sum(0) / resid.sum(0)
    good = rho[:, 0] > 0.02
    true = adata.var["true_theta"].to_numpy()
    assert np.corrcoef(np.log(theta_hat[good]), np.log(true[good]))[0, 1] > 0.8


def test_synthetic_counts_sparsity_and_errors():
    adata = genjax.datasets.synthetic_counts(500, 2000, library_size=400, seed=0)
    zero = 1.0 - adata.X.nnz / np.prod(adata.shape)
    assert 0.85 < zero < 0.95
    assert isinstance(genjax.datasets.synthetic_counts(10, 5, sparse=False).X, np.ndarray)
    with pytest.raises(ValueError, match="n_cells"):
        genjax.datasets.synthetic_counts(0)
    with pytest.raises(ValueError, match="de_fraction"):
        genjax.datasets.synthetic_counts(10, de_fraction=2.0)


def test_toy_bulk_effects_are_recoverable():
    adata = genjax.datasets.toy_bulk(1200, 100, seed=3)
    x = np.asarray(adata.X)
    assert x.min() >= 0 and np.all(x == np.round(x))
    assert set(adata.obs["tissue"].cat.categories) == {"liver", "lung", "brain"}
    logn = np.log((x + 0.5) / x.sum(1, keepdims=True))
    healthy = (adata.obs["disease"] == "healthy").to_numpy()
    t_eff = adata.varm["tissue_effect"]  # genes x tissues
    # the liver-vs-lung log-fold change of healthy samples recovers the recorded tissue effects
    liver = healthy & (adata.obs["tissue"] == "liver").to_numpy()
    lung = healthy & (adata.obs["tissue"] == "lung").to_numpy()
    lfc = logn[liver].mean(0) - logn[lung].mean(0)
    truth = t_eff[:, 0] - t_eff[:, 1]
    assert np.corrcoef(lfc, truth)[0, 1] > 0.9
    # disease effect within liver, on the genes the truth says respond
    d_eff = adata.uns["disease_effect"][0, 1]
    sick = (adata.obs["disease"] == "disease").to_numpy() & (adata.obs["tissue"] == "liver").to_numpy()
    dl = logn[sick].mean(0) - logn[liver].mean(0)
    hit = d_eff != 0
    assert hit.sum() >= 3 and np.corrcoef(dl[hit], d_eff[hit])[0, 1] > 0.9
    assert np.all(adata.uns["disease_effect"][:, 0] == 0)
