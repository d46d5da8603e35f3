"""Data layer: validation names the offending cell and gene, registry encoding and its errors, batch sources."""

import anndata as ad
import jax
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.special import gammaln

import genjax
from genjax.data import CountData, padded_entries


def _adata(rng, n=30, g=12, sparse=False):
    x = rng.negative_binomial(2, 0.4, (n, g)).astype(np.float32)
    x[:, 0] += 1  # no empty cells
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["b", "a", "c"], n), categories=["c", "b", "a"]),
                        "batch": rng.choice(["x", "y"], n), "age": rng.normal(50, 10, n)},
                       index=[f"cell{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(g)])
    return ad.AnnData(X=sp.csr_matrix(x) if sparse else x, obs=obs, var=var)


# -- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(("value", "needle"), [(-1.0, "non-negative"), (2.5, "integer"), (np.nan, "finite"),
                                               (np.inf, "finite")])
def test_validate_counts_names_first_bad_cell_and_gene(rng, sparse, value, needle):
    adata = _adata(rng)
    x = np.asarray(adata.X).copy()
    x[7, 5] = value
    x[9, 2] = value  # a later offender must not be reported
    X = sp.csr_matrix(x) if sparse else x
    with pytest.raises(ValueError, match=needle) as err:
        genjax.validate_counts(X, obs_names=adata.obs_names, var_names=adata.var_names)
    assert "'cell7'" in str(err.value) and "'g5'" in str(err.value)


def test_validate_counts_empty_cell_and_gaussian_mode(rng):
    adata = _adata(rng)
    x = np.asarray(adata.X).copy()
    x[4] = 0
    with pytest.raises(ValueError, match="'cell4'.*zero total counts"):
        genjax.validate_counts(sp.csr_matrix(x), obs_names=adata.obs_names)
    genjax.validate_counts(x, allow_empty=True)
    genjax.validate_counts(np.log1p(x) + 0.5, counts=False)  # real values are fine for a Gaussian model
    with pytest.raises(ValueError, match="finite"):
        genjax.validate_counts(np.full((2, 2), np.nan), counts=False)


def test_get_matrix_layer_errors(rng):
    adata = _adata(rng)
    with pytest.raises(KeyError, match="'counts'"):
        genjax.get_matrix(adata, "counts")
    adata.layers["counts"] = sp.csc_matrix(np.asarray(adata.X))
    assert sp.issparse(genjax.get_matrix(adata, "counts")) and genjax.get_matrix(adata, "counts").format == "csr"


# -- registry -------------------------------------------------------------------------------------------------


def test_registry_categories_codes_and_continuous(rng):
    adata = _adata(rng)
    reg = genjax.DataRegistry.from_anndata(adata, ["cell_type", "batch"], ["age"])
    assert reg.conditions == {"cell_type": ("c", "b", "a"), "batch": ("x", "y")}  # categorical order kept
    codes = reg.encode_conditions(adata)
    np.testing.assert_array_equal(np.asarray(reg.conditions["cell_type"])[codes[:, 0]], adata.obs["cell_type"])
    cont = reg.encode_continuous(adata)
    np.testing.assert_allclose(cont.mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(cont.std(), 1.0, atol=1e-5)
    assert genjax.DataRegistry.from_dict(reg.to_dict()) == reg
    np.testing.assert_array_equal(reg.encode_values(3, batch="y")[:, 1], 1)
    np.testing.assert_array_equal(reg.encode_values(3, batch="y")[:, 0], -1)


def test_registry_errors_name_the_problem(rng):
    adata = _adata(rng)
    reg = genjax.DataRegistry.from_anndata(adata, ["cell_type"])
    with pytest.raises(KeyError, match="'tissue'"):
        genjax.DataRegistry.from_anndata(adata, ["tissue"])
    other = adata.copy()
    other.obs["cell_type"] = other.obs["cell_type"].astype(str)
    other.obs.loc["cell3", "cell_type"] = "macrophage"
    with pytest.raises(ValueError, match="unknown category 'macrophage' for condition 'cell_type'.*'cell3'"):
        reg.encode_conditions(other)
    with pytest.raises(ValueError, match="unknown category 'z'"):
        reg.encode_values(2, cell_type="z")
    with pytest.raises(KeyError, match="'tissue' is not a condition"):
        reg.encode_values(2, tissue="liver")
    del other.obs["cell_type"]
    with pytest.raises(KeyError, match="'cell_type'"):
        reg.encode_conditions(other)
    nan = adata.copy()
    nan.obs["batch"] = nan.obs["batch"].astype(object)
    nan.obs.loc["cell2", "batch"] = np.nan
    with pytest.raises(ValueError, match="'batch' is missing.*'cell2'"):
        genjax.DataRegistry.from_anndata(nan, ["batch"])
    with pytest.raises(ValueError, match="more than once"):
        genjax.DataRegistry.from_anndata(adata, ["batch"], ["batch"])
    bad_age = adata.copy()
    bad_age.obs.loc["cell5", "age"] = np.inf
    with pytest.raises(ValueError, match="'age'.*'cell5'"):
        genjax.DataRegistry.from_anndata(bad_age, [], ["age"])


def test_registry_gene_order_and_mismatch(rng):
    adata = _adata(rng)
    reg = genjax.DataRegistry.from_anndata(adata)
    assert reg.gene_order(adata) is None
    shuffled = adata[:, ::-1]
    order = reg.gene_order(shuffled)
    np.testing.assert_array_equal(np.asarray(shuffled.var_names)[order], adata.var_names)
    with pytest.raises(ValueError, match=r"1 training gene\(s\) missing, e.g. \['g3'\]"):
        reg.gene_order(adata[:, [v for v in adata.var_names if v != "g3"]])
    extra = adata.copy()
    extra.var_names = [*adata.var_names[:-1], "NEWGENE"]
    with pytest.raises(ValueError, match="NEWGENE"):
        reg.gene_order(extra)
    dup = adata.copy()
    dup.var_names = ["g0", *adata.var_names[:-1]]
    with pytest.raises(ValueError, match="'g0' occurs more than once"):
        genjax.DataRegistry.from_anndata(dup)


# -- batch sources ---------------------------------------------------------------------------------------------


def test_ell_and_lfact_reconstruct_the_rows(rng):
    x = rng.negative_binomial(1, 0.6, (25, 9)).astype(np.float32)
    x[:, 3] += 1
    k = int((x > 0).sum(1).max())
    idx, val = padded_entries(sp.csr_matrix(x), k)
    back = np.zeros_like(x)
    np.add.at(back, (np.repeat(np.arange(25), k), idx.ravel()), val.ravel())
    np.testing.assert_array_equal(back, x)
    data = CountData(sp.csr_matrix(x), np.log(x.sum(1)), np.zeros((25, 0)), np.zeros((25, 0)),
                     sparse_fields=True, nonzeros=0)
    assert data.k == k
    np.testing.assert_allclose(data.lfact, gammaln(x.astype(np.float64) + 1).sum(1), rtol=1e-6)
    big = CountData(sp.csr_matrix(x), np.log(x.sum(1)), np.zeros((25, 0)), np.zeros((25, 0)), nonzeros=2)
    b = big.batch(np.arange(25))
    assert big.k == max(1, int((x > 2).sum(1).max())) and b.nonzero is None
    back = np.zeros_like(x)
    np.add.at(back, (np.repeat(np.arange(25), big.k), b.large.idx.ravel()), b.large.val.ravel())
    np.testing.assert_array_equal(back, np.where(x > 2, x, 0))


def test_dense_csr_and_backed_sources_give_identical_batches(rng, tmp_path):
    adata = _adata(rng, sparse=True)
    x = adata.X.toarray()
    cat = rng.integers(0, 3, (30, 1)).astype(np.int32)
    args = (np.log(x.sum(1)), cat, np.zeros((30, 0)))
    dense = CountData(x, *args, sparse_fields=True, nonzeros=0)
    csr = CountData(adata.X, *args, sparse_fields=True, nonzeros=0)
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    disk = CountData(genjax.get_matrix(backed), *args, sparse_fields=True, nonzeros=0)
    rows = np.array([12, 3, 29, 0, 7])
    src_dense = dense.source()
    assert isinstance(src_dense, genjax.data.CountBatch) and not dense.host
    for data in (csr, disk):
        src = data.source()
        assert isinstance(src, genjax.HostSource) and src.n == 30
        got = src.fetch(rows)
        expected = jax.tree.map(lambda a: a[rows], src_dense)
        assert jax.tree.structure(got) == jax.tree.structure(expected)
        for path, v in jax.tree_util.tree_leaves_with_path(got):
            np.testing.assert_array_equal(v, dict(jax.tree_util.tree_leaves_with_path(expected))[path],
                                          err_msg=jax.tree_util.keystr(path))
    sub = csr.source(np.array([5, 6, 7]))
    np.testing.assert_array_equal(sub.fetch(np.array([2, 0])).x, x[[7, 5]])
    backed.file.close()


def test_log1p_group_sums_matches_per_group_loop_dense_and_sparse():
    """Chunked group sums == a direct per-group loop of normalize_log1p; -1 leaves cells out; sparse == dense."""

    from genjax.data import log1p_group_sums, normalize_log1p

    rng = np.random.default_rng(3)
    X = rng.poisson(rng.gamma(0.5, 4.0, (37, 11))).astype(np.float32)
    X[5] = 0  # an empty cell
    groups = rng.integers(-1, 4, 37)
    want = np.stack([normalize_log1p(X[groups == k]).astype(np.float64).sum(0) for k in range(4)])
    for M in (X, sp.csr_matrix(X)):
        got = log1p_group_sums(M, groups, 4, chunk_values=50)  # several chunks of 4 rows
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="group 4 is outside"):
        log1p_group_sums(X, np.where(groups == 3, 4, groups), 4)
    with pytest.raises(ValueError, match="groups has shape"):
        log1p_group_sums(X, groups[:-1], 4)


def test_map_row_blocks_keeps_order_for_any_thread_count():
    """Blocks come back in row order and cover every row once, serially and on threads alike."""
    from genjax.data import map_row_blocks

    def fn(rows):
        return np.arange(100)[rows] ** 2

    serial = map_row_blocks(fn, 100, block=7, workers=1)
    threaded = map_row_blocks(fn, 100, block=7, workers=3)
    assert len(serial) == 15
    np.testing.assert_array_equal(np.concatenate(serial), np.arange(100) ** 2)
    np.testing.assert_array_equal(np.concatenate(threaded), np.arange(100) ** 2)
    assert map_row_blocks(fn, 0) == []
