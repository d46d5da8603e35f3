"""Integration metrics (``genjax.metrics.integration``): closed forms on tiny layouts, brute-force definitions,
scipy's chi-square test, scikit-learn's silhouettes and scib-metrics on the same neighbour table (the last two
skipped where the library is missing)."""

import math

import anndata as ad
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import scipy.special
import scipy.stats
from scipy.sparse.csgraph import connected_components

import genjax
from genjax.evaluation import integration

SCORES = ["batch_asw", "ilisi", "kbet_acceptance", "kbet_acceptance_global", "label_asw", "clisi",
          "graph_connectivity"]


def _adata(batches, labels, latent=None):
    n = len(batches)
    obs = pd.DataFrame({"batch": np.asarray(batches).astype(str), "label": np.asarray(labels).astype(str)},
                       index=[f"cell{i}" for i in range(n)])
    adata = ad.AnnData(obs=obs)
    if latent is not None:
        adata.obsm["z"] = np.asarray(latent)
    return adata


def _blobs(seed=0, n=240, d=5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    batches = rng.integers(0, 3, n)
    x = rng.normal(size=(n, d))
    x[:, 0] += 3.0 * labels
    x[:, 1] += 1.0 * batches
    return x, batches, labels


def _brute_knn(x, k, mask=None):
    """Indices and distances of the k nearest other cells (optionally among ``mask``-allowed pairs)."""
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    if mask is not None:
        d = np.where(mask, d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, axis=1)


def _brute_silhouette(x, groups):
    """Rousseeuw's silhouette from its definition (singletons 0)."""
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    s = np.zeros(len(x))
    for i in range(len(x)):
        own = groups == groups[i]
        if own.sum() == 1:
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = min(d[i, groups == g].mean() for g in np.unique(groups) if g != groups[i])
        s[i] = (b - a) / max(a, b)
    return s


def test_separated_batches_score_zero_batch_mixing():
    # two labels x two batches, each (label, batch) a tight clump, batches 100 apart
    rng = np.random.default_rng(0)
    centres = {(0, 0): (0, 0), (0, 1): (100, 0), (1, 0): (0, 100), (1, 1): (100, 100)}
    x, b, lab = [], [], []
    for (label, batch), c in centres.items():
        x.append(np.asarray(c) + rng.normal(scale=0.5, size=(20, 2)))
        b += [batch] * 20
        lab += [label] * 20
    scores = integration(_adata(b, lab), np.concatenate(x), batch_key="batch", label_key="label", n_neighbors=6)
    row = scores.iloc[0]
    assert row["batch_asw"] < 0.02  # |s| ~ 1 - 0.6 / 100 within every label
    assert row["ilisi"] == 0.0 and row["ilisi_median"] == 1.0  # one batch in every neighbourhood
    assert row["kbet_acceptance"] == 0.0 and row["kbet_acceptance_global"] == 0.0
    assert row["clisi"] == 1.0 and row["graph_connectivity"] == 0.5  # each label is two clumps of 20
    assert list(scores.columns) == SCORES + ["ilisi_median", "clisi_median"]


def test_batch_asw_closed_form_on_a_line():
    # label A: batch 0 at {0, 1}, batch 1 at {10, 11}; label B the same shifted by 1000.
    # cells at 0 and 11: a = 1, b = 10.5; cells at 1 and 10: a = 1, b = 9.5  ->  1 - mean|s|
    pos = np.array([0, 1, 10, 11], float)
    x = np.concatenate([pos, pos + 1000])[:, None]
    batches = [0, 0, 1, 1] * 2
    labels = [0] * 4 + [1] * 4
    expected = 1 - (9.5 / 10.5 + 8.5 / 9.5) / 2
    res = integration(_adata(batches, labels), x, batch_key="batch", label_key="label", n_neighbors=3,
                      details=True)
    assert res.scores["batch_asw"].iloc[0] == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(res.per_label["batch_asw"], [expected, expected], atol=1e-12)
    # label silhouette of the cell at 0: a = (1 + 10 + 11) / 3, b = mean(1000, 1001, 1010, 1011)
    a, b = 22 / 3, 1005.5
    assert res.per_cell["label_silhouette"].iloc[0] == pytest.approx((b - a) / b, abs=1e-12)


def test_duplicated_batches_give_batch_asw_one_minus_one_over_m():
    # batch 1 is an exact copy of batch 0: for every cell a = S / (m - 1), b = S / m, so |s| = 1 / m exactly
    rng = np.random.default_rng(1)
    parts, batches, labels = [], [], []
    for label, m in ((0, 5), (1, 8)):
        pts = rng.normal(size=(m, 3)) + 10 * label
        parts += [pts, pts]
        batches += [0] * m + [1] * m
        labels += [label] * (2 * m)
    res = integration(_adata(batches, labels), np.concatenate(parts), batch_key="batch", label_key="label",
                      n_neighbors=3, details=True)
    np.testing.assert_allclose(res.per_label["batch_asw"], [1 - 1 / 5, 1 - 1 / 8], atol=1e-12)
    assert res.scores["batch_asw"].iloc[0] == pytest.approx((1 - 1 / 5 + 1 - 1 / 8) / 2, abs=1e-12)


def test_interleaved_lattice_is_perfectly_mixed():
    # points 0..39 on a line, batches alternating; with perplexity = k = 4 the LISI kernel is uniform, and an
    # interior cell sees i +- 1 (other batch) and i +- 2 (own batch): Simpson 1/2, LISI 2, chi-square 0
    n = 40
    x = np.arange(n, dtype=float)[:, None]
    res = integration(_adata(np.arange(n) % 2, np.arange(n) >= n // 2), x, batch_key="batch", label_key="label",
                      n_neighbors=4, perplexity=4, details=True)
    interior = np.r_[2 : n // 2 - 2, n // 2 + 2 : n - 2]
    np.testing.assert_allclose(res.per_cell["ilisi"].to_numpy()[interior], 2.0, atol=1e-9)
    np.testing.assert_allclose(res.per_cell["kbet_pvalue"].to_numpy()[interior], 1.0, atol=1e-12)
    row = res.scores.iloc[0]
    assert row["ilisi"] == pytest.approx(1.0, abs=1e-9)
    assert row["kbet_acceptance_global"] == 1.0 and row["kbet_acceptance"] == 1.0
    assert row["graph_connectivity"] == 1.0


def test_lisi_with_two_neighbours_matches_binary_entropy():
    # k = 2: weights (p, 1 - p) with binary entropy log(perplexity), whatever the distances; Simpson p^2 + (1-p)^2
    perplexity = 1.5
    p = scipy.optimize.brentq(lambda q: -q * math.log(q) - (1 - q) * math.log(1 - q) - math.log(perplexity),
                              0.5, 1 - 1e-12)
    rng = np.random.default_rng(2)
    x = np.sort(rng.uniform(0, 100, size=60))[:, None]
    batches, labels = rng.integers(0, 2, 60), rng.integers(0, 3, 60)
    res = integration(_adata(batches, labels), x, batch_key="batch", label_key="label", n_neighbors=2,
                      perplexity=perplexity, details=True)
    idx, _ = _brute_knn(x, 2)
    mixed = batches[idx[:, 0]] != batches[idx[:, 1]]
    expected = np.where(mixed, 1 / (p**2 + (1 - p) ** 2), 1.0)
    np.testing.assert_allclose(res.per_cell["ilisi"], expected, rtol=1e-9)
    assert res.scores["ilisi_median"].iloc[0] == pytest.approx(np.median(expected), rel=1e-9)


def test_lisi_kernel_is_exponential_in_the_distance():
    # P_j ~ exp(-beta d_j) on Euclidean (not squared) distances, beta solved by scipy's brentq per cell
    perplexity, k = 2.0, 4
    rng = np.random.default_rng(11)
    x = rng.normal(size=(30, 2))
    batches, labels = rng.integers(0, 3, 30), rng.integers(0, 2, 30)
    res = integration(_adata(batches, labels), x, batch_key="batch", label_key="label", n_neighbors=k,
                      perplexity=perplexity, details=True)
    idx, dist = _brute_knn(x, k)
    expected = []
    for row, d in zip(idx, dist, strict=True):
        def weights(beta, d=d):
            w = np.exp(-beta * (d - d.min()))
            return w / w.sum()

        beta = scipy.optimize.brentq(lambda b: scipy.special.entr(weights(b)).sum() - math.log(perplexity),
                                     1e-9, 1e4, xtol=1e-14)
        mass = np.bincount(batches[row], weights=weights(beta), minlength=3)
        expected.append(1 / np.sum(mass**2))
    np.testing.assert_allclose(res.per_cell["ilisi"], expected, rtol=1e-8)


@pytest.mark.parametrize(("sizes", "share"), [((12, 12), 0.5), ((8, 16), 2 / 3)])
def test_graph_connectivity_of_a_split_label(sizes, share):
    # label 0 in two clumps 1000 apart, label 1 one clump: shares (largest clump / label size) and 1
    rng = np.random.default_rng(3)
    parts = [rng.normal(size=(sizes[0], 2)), rng.normal(size=(sizes[1], 2)) + 1000,
             rng.normal(size=(20, 2)) + [0, 50]]
    labels = [0] * sum(sizes) + [1] * 20
    batches = rng.integers(0, 2, len(labels))
    res = integration(_adata(batches, labels), np.concatenate(parts), batch_key="batch", label_key="label",
                      n_neighbors=5, details=True)
    np.testing.assert_allclose(res.per_label["graph_connectivity"], [share, 1.0], atol=1e-12)
    assert res.scores["graph_connectivity"].iloc[0] == pytest.approx((share + 1) / 2, abs=1e-12)


def test_kbet_matches_scipy_chisquare_on_brute_force_neighbourhoods():
    x, batches, labels = _blobs(4, n=150)
    k, alpha = 10, 0.05
    res = integration(_adata(batches, labels), x, batch_key="batch", label_key="label", n_neighbors=k,
                      alpha=alpha, details=True)
    share = np.bincount(batches) / len(batches)
    idx, _ = _brute_knn(x, k)
    expected = [scipy.stats.chisquare(np.bincount(batches[row], minlength=3), k * share).pvalue for row in idx]
    np.testing.assert_allclose(res.per_cell["kbet_pvalue"], expected, rtol=1e-9, atol=1e-14)
    assert res.scores["kbet_acceptance_global"].iloc[0] == pytest.approx(np.mean(np.asarray(expected) >= alpha))
    # per label: neighbours within the label, expected shares of the label's batches
    idx, _ = _brute_knn(x, k, mask=labels[:, None] == labels[None, :])
    per_label = []
    for lab in range(4):
        cells = np.flatnonzero(labels == lab)
        comp = np.bincount(batches[cells], minlength=3) / len(cells)
        p = [scipy.stats.chisquare(np.bincount(batches[idx[i]], minlength=3)[comp > 0], k * comp[comp > 0]).pvalue
             for i in cells]
        np.testing.assert_allclose(res.per_cell["kbet_pvalue_label"].to_numpy()[cells], p, rtol=1e-9, atol=1e-14)
        per_label.append(np.mean(np.asarray(p) >= alpha))
    np.testing.assert_allclose(res.per_label["kbet_acceptance"], per_label)
    assert res.scores["kbet_acceptance"].iloc[0] == pytest.approx(np.mean(per_label))


def test_silhouettes_match_the_definition():
    x, batches, labels = _blobs(5, n=90)
    res = integration(_adata(batches, labels), x, batch_key="batch", label_key="label", details=True)
    np.testing.assert_allclose(res.per_cell["label_silhouette"], _brute_silhouette(x, labels), atol=1e-10)
    for lab in range(4):
        cells = labels == lab
        np.testing.assert_allclose(res.per_cell["batch_silhouette"].to_numpy()[cells],
                                   _brute_silhouette(x[cells], batches[cells]), atol=1e-10)
    assert res.scores["label_asw"].iloc[0] == pytest.approx((_brute_silhouette(x, labels).mean() + 1) / 2)


def test_silhouettes_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    x, batches, labels = _blobs(6, n=200)
    res = integration(_adata(batches, labels), x, batch_key="batch", label_key="label", details=True)
    np.testing.assert_allclose(res.per_cell["label_silhouette"], metrics.silhouette_samples(x, labels), atol=1e-10)
    for lab in range(4):
        cells = labels == lab
        np.testing.assert_allclose(res.per_cell["batch_silhouette"].to_numpy()[cells],
                                   metrics.silhouette_samples(x[cells], batches[cells]), atol=1e-10)


def test_chunks_inputs_and_tables_agree():
    x, batches, labels = _blobs(7, n=120)
    adata = _adata(batches, labels, latent=x)
    ref = integration(adata, "z", batch_key="batch", label_key="label", details=True)
    chunked = integration(adata, x, batch_key="batch", label_key="label", chunk_size=7, details=True)
    pd.testing.assert_frame_equal(ref.per_cell, chunked.per_cell, rtol=1e-9)
    pd.testing.assert_frame_equal(ref.scores.reset_index(drop=True), chunked.scores.reset_index(drop=True),
                                  rtol=1e-9)
    single = integration(adata, jnp.asarray(x, jnp.float32), batch_key="batch", label_key="label", details=True)
    pd.testing.assert_frame_equal(ref.per_cell, single.per_cell, rtol=1e-4, atol=1e-5)
    assert ref.scores.index.tolist() == ["z"] and chunked.scores.index.tolist() == ["latent"]
    assert ref.per_cell.index.equals(adata.obs_names)
    assert ref.per_label.index.tolist() == ["0", "1", "2", "3"]
    assert ref.per_label["n_cells"].sum() == 120
    assert genjax.metrics.integration is integration
    # scores alone, as one table row per latent
    table = pd.concat([integration(adata, "z", batch_key="batch", label_key="label"),
                       integration(adata, x[:, :2], batch_key="batch", label_key="label", name="first two")])
    assert table.index.tolist() == ["z", "first two"]
    assert ((table[SCORES] >= 0) & (table[SCORES] <= 1)).all().all()


def test_agrees_with_scib_metrics_on_the_same_neighbour_table():
    sm = pytest.importorskip("scib_metrics")
    from scib_metrics.nearest_neighbors import NeighborsResults

    x, batches, labels = _blobs(8, n=300)
    k = 15
    res = integration(_adata(batches, labels), x, batch_key="batch", label_key="label", n_neighbors=k,
                      details=True)
    row = res.scores.iloc[0]
    idx, dist = _brute_knn(x, k)  # self excluded, as genjax counts neighbours
    table = NeighborsResults(indices=idx, distances=dist)
    assert row["batch_asw"] == pytest.approx(float(sm.silhouette_batch(x, labels, batches)), abs=1e-5)
    assert row["label_asw"] == pytest.approx(float(sm.silhouette_label(x, labels)), abs=1e-5)
    assert row["ilisi"] == pytest.approx(float(sm.ilisi_knn(table, batches, perplexity=k / 3)), abs=1e-4)
    assert row["clisi"] == pytest.approx(float(sm.clisi_knn(table, labels, perplexity=k / 3)), abs=1e-4)
    np.testing.assert_allclose(res.per_cell["ilisi"], sm.lisi_knn(table, batches, perplexity=k / 3), atol=1e-3)
    acceptance, _, pvalues = sm.kbet(table, batches)
    assert row["kbet_acceptance_global"] == pytest.approx(float(acceptance), abs=1e-12)
    np.testing.assert_allclose(res.per_cell["kbet_pvalue"], pvalues, atol=1e-4)
    # scib-metrics takes strongly connected components of the directed graph; genjax (and the original scib)
    # the components of the undirected one, i.e. the weak components of the same directed graph
    directed = table.knn_graph_distances
    weak = []
    for lab in range(4):
        cells = labels == lab
        _, comp = connected_components(directed[cells][:, cells], directed=True, connection="weak")
        weak.append(np.bincount(comp).max() / cells.sum())
    assert row["graph_connectivity"] == pytest.approx(np.mean(weak), abs=1e-12)
    assert float(sm.graph_connectivity(table, labels)) <= row["graph_connectivity"] + 1e-12


def test_bad_input_is_named():
    x, batches, labels = _blobs(9, n=40)
    adata = _adata(batches, labels, latent=x)
    kw = dict(batch_key="batch", label_key="label")
    with pytest.raises(KeyError, match="'sample'"):
        integration(adata, x, batch_key="sample", label_key="label")
    with pytest.raises(KeyError, match="'cell_type'"):
        integration(adata, x, batch_key="batch", label_key="cell_type")
    with pytest.raises(KeyError, match="X_scvi"):
        integration(adata, "X_scvi", **kw)
    with pytest.raises(ValueError, match="39 rows but adata has n_obs=40"):
        integration(adata, x[:-1], **kw)
    with pytest.raises(ValueError, match="2-D"):
        integration(adata, x[:, 0], **kw)
    bad = x.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match=r"nan at cell 7 \('cell7'\), column 2"):
        integration(adata, bad, **kw)
    single = np.asarray(batches).astype(str)
    single[3] = "lonely"
    with pytest.raises(ValueError, match="batch 'lonely'.*single cell.*'cell3'"):
        integration(_adata(single, labels), x, **kw)
    with pytest.raises(ValueError, match="at least 2"):
        integration(_adata(np.zeros(40, int), labels), x, **kw)
    with pytest.raises(ValueError, match="label ASW"):
        integration(_adata(batches, np.zeros(40, int)), x, **kw)
    missing = _adata(batches, labels)
    missing.obs["label"] = missing.obs["label"].astype(object)
    missing.obs.iloc[5, 1] = None
    with pytest.raises(ValueError, match=r"missing at cell 5 \('cell5'\)"):
        integration(missing, x, **kw)
    with pytest.raises(ValueError, match="n_neighbors"):
        integration(adata, x, n_neighbors=40, **kw)
    with pytest.raises(ValueError, match="perplexity"):
        integration(adata, x, n_neighbors=5, perplexity=6, **kw)
    with pytest.raises(ValueError, match="perplexity"):
        integration(adata, x, n_neighbors=2, **kw)
    with pytest.raises(ValueError, match="alpha"):
        integration(adata, x, alpha=1.0, **kw)


def test_label_from_one_batch_is_skipped_and_all_skipped_warns():
    x, batches, labels = _blobs(10, n=80)
    batches = np.where(labels == 0, 0, batches)  # label 0 only in batch 0
    res = integration(_adata(batches, labels), x, batch_key="batch", label_key="label", details=True)
    assert np.isnan(res.per_label["batch_asw"].iloc[0]) and not res.per_label["batch_asw"].iloc[1:].isna().any()
    assert res.scores["batch_asw"].iloc[0] == pytest.approx(res.per_label["batch_asw"].iloc[1:].mean())
    confounded = np.where(labels < 2, 0, 1)
    with pytest.warns(UserWarning) as caught:
        out = integration(_adata(confounded, labels), x, batch_key="batch", label_key="label")
    messages = [str(w.message) for w in caught]
    assert any("batch_asw is NaN" in m for m in messages) and any("kbet_acceptance is NaN" in m for m in messages)
    assert np.isnan(out["batch_asw"].iloc[0]) and np.isnan(out["kbet_acceptance"].iloc[0])
    assert np.isfinite(out[["ilisi", "label_asw", "clisi", "graph_connectivity"]].to_numpy()).all()
