"""genjax.metrics: two-sample statistics against closed forms and brute-force numpy, PCA against numpy SVD,
gene statistics, the classifier, evaluate()'s per-condition breakdown and control, and bad-input errors.

Shapes are tiny (<= 512 points, so every buffer has capacity 256 or 512) to keep compilation cheap.
"""

import math

import anndata as ad
import jax
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from scipy.stats import norm

import genjax.metrics as M
from genjax.evaluation import metrics as core

# ----------------------------------------------------------------------------------------------------------------
# energy distance and MMD


def _energy_numpy(x, y, unbiased):
    n, m = len(x), len(y)
    dxx, dyy = cdist(x, x), cdist(y, y)
    if unbiased:
        return 2 * cdist(x, y).mean() - dxx.sum() / (n * (n - 1)) - dyy.sum() / (m * (m - 1))
    return 2 * cdist(x, y).mean() - dxx.mean() - dyy.mean()


def _mmd_numpy(x, y, bandwidths, unbiased):
    out = []
    for s in bandwidths:
        kxx, kyy = (np.exp(-cdist(a, a, "sqeuclidean") / (2 * s**2)) for a in (x, y))
        kxy = np.exp(-cdist(x, y, "sqeuclidean") / (2 * s**2))
        n, m = len(x), len(y)
        if unbiased:
            out.append((kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * kxy.mean())
        else:
            out.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    return np.mean(out)


@pytest.mark.parametrize("statistic", ["u", "v"])
def test_energy_and_mmd_match_brute_force(rng, statistic):
    # 300 points: two 256-row blocks with a partial second one, so the tiling and masking are exercised
    x, y = rng.normal(size=(300, 3)), rng.normal(size=(70, 3)) + 0.3
    with jax.enable_x64(True):
        ed = float(M.energy_distance(x, y, statistic=statistic))
        mmd = float(M.mmd_rbf(x, y, bandwidths=[0.5, 2.0], statistic=statistic))
    np.testing.assert_allclose(ed, _energy_numpy(x, y, statistic == "u"), rtol=1e-9)
    np.testing.assert_allclose(mmd, _mmd_numpy(x, y, [0.5, 2.0], statistic == "u"), rtol=1e-9)
    # float32 default path agrees to float32 accuracy
    np.testing.assert_allclose(float(M.energy_distance(x, y, statistic=statistic)), ed, rtol=2e-3, atol=1e-4)


def test_energy_distance_gaussians_closed_form(rng):
    # 1-D N(0, 1) vs N(delta, 1): 2 E|delta + sqrt2 Z| - 2 E|sqrt2 Z|
    n, delta = 2000, 1.0
    x = rng.normal(size=(n, 1))
    y = rng.normal(size=(n, 1)) + delta
    s = math.sqrt(2.0)
    expected = 2 * (2 * s * norm.pdf(delta / s) + delta * (2 * norm.cdf(delta / s) - 1)) - 4 / math.sqrt(math.pi)
    ed = float(M.energy_distance(x, y))
    assert abs(ed - expected) < 0.05  # sd of the estimate is ~0.015 at n = 2000
    same = float(M.energy_distance(x, rng.normal(size=(n, 1))))
    assert abs(same) < 0.01  # unbiased: centred at 0
    assert float(M.energy_distance(x, rng.normal(size=(n, 1)), statistic="v")) > 0


def test_mmd_gaussians_closed_form(rng):
    d, n, shift, bws = 2, 2000, 0.7, (0.5, 1.0, 2.0)

    def ek(mean_diff2, s):  # E k_s(X, Y) for X ~ N(a, I), Y ~ N(b, I)
        v = s**2 + 2.0
        return (s**2 / v) ** (d / 2) * math.exp(-mean_diff2 / (2 * v))

    expected = np.mean([2 * ek(0.0, s) - 2 * ek(d * shift**2, s) for s in bws])
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + shift
    assert abs(float(M.mmd_rbf(x, y, bandwidths=bws)) - expected) < 0.2 * expected
    assert abs(float(M.mmd_rbf(x, rng.normal(size=(n, d)), bandwidths=bws))) < 0.1 * expected


def test_median_heuristic_bandwidths(rng):
    x = rng.normal(size=(50, 3))
    med = np.median(cdist(x, x)[np.triu_indices(50, 1)])
    np.testing.assert_allclose(M.median_distance(x), med)
    np.testing.assert_allclose(M.rbf_bandwidths(x), np.array(M.MMD_FACTORS) * med)
    y = rng.normal(size=(40, 3))
    np.testing.assert_allclose(float(M.mmd_rbf(x, y)), float(M.mmd_rbf(x, y, bandwidths=M.rbf_bandwidths(x))))


# ----------------------------------------------------------------------------------------------------------------
# Sinkhorn W2


def test_sinkhorn_w2_gaussians_bures():
    # quantile samples of N(0, 1) and N(1, 1.5^2): their exact W2 (sorted matching) is within 4e-4 of Bures
    n = 400
    q = norm.ppf((np.arange(n) + 0.5) / n)[:, None]
    x, y = q, 1.0 + 1.5 * q
    bures = math.sqrt(1.0**2 + (1.5 - 1.0) ** 2)
    exact = math.sqrt(np.mean((np.sort(x[:, 0]) - np.sort(y[:, 0])) ** 2))
    assert abs(exact - bures) < 1e-3
    w2 = M.sinkhorn_w2(x, y)
    assert abs(w2 - exact) < 2e-3 * exact  # debiased: entropic bias far below the plain entropic cost's
    primal = M.sinkhorn_w2(x, y, debiased=False)
    assert exact < primal < exact * 1.05  # the blurred plan costs more than the optimal one


def test_sinkhorn_matches_assignment_and_translation(rng):
    x, y = rng.normal(size=(120, 2)), rng.normal(size=(120, 2)) * [1.4, 0.8] + [0.5, 0.0]
    c = cdist(x, y, "sqeuclidean")
    r, col = linear_sum_assignment(c)
    exact = math.sqrt(c[r, col].mean())
    assert abs(M.sinkhorn_w2(x, y, relative_epsilon=0.01) - exact) < 0.02 * exact
    # a translated copy: the Sinkhorn divergence is exactly |delta|^2
    np.testing.assert_allclose(M.sinkhorn_w2(x, x + [0.3, -0.4]), 0.5, rtol=2e-3)
    assert M.sinkhorn_w2(x, x) < 1e-2


def test_sinkhorn_dense_equals_tiled_and_marginals(rng):
    x, y = rng.normal(size=(300, 3)), rng.normal(size=(90, 3)) + 0.5
    xb, yb = core.make_buffer(x, 512), core.make_buffer(y, 512)  # the sizes M.sinkhorn uses: one compilation
    eps, tol = np.float32(core.default_epsilon(x)), np.float32(1e-4)
    dense = core.sinkhorn_buffers(xb, yb, eps, tol, 2000, True)
    tiled = core.sinkhorn_buffers(xb, yb, eps, tol, 2000, False)
    for a, b in zip(dense[:4], tiled[:4], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-3)
    out = M.sinkhorn(x, y, tol=1e-5)
    assert out.f.shape == (300,) and out.g.shape == (90,) and float(out.error) <= 1e-5
    # the plan's marginals are the uniform weights
    e = core.default_epsilon(x)
    logp = (np.asarray(out.f)[:, None] + np.asarray(out.g)[None, :] - cdist(x, y, "sqeuclidean")) / e
    plan = np.exp(logp) / (300 * 90)
    np.testing.assert_allclose(plan.sum(1), 1 / 300, rtol=1e-3)
    np.testing.assert_allclose(plan.sum(0), 1 / 90, rtol=1e-3)
    np.testing.assert_allclose(float(out.transport_cost), (plan * cdist(x, y, "sqeuclidean")).sum(), rtol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# k-NN two-sample accuracy


def _knn_numpy(x, y, k):
    z = np.vstack([x, y])
    lab = np.r_[np.zeros(len(x)), np.ones(len(y))]
    d = cdist(z, z)
    np.fill_diagonal(d, np.inf)
    vote = lab[np.argsort(d, axis=1, kind="stable")[:, :k]].mean(1)
    return np.mean(np.where(vote == 0.5, 0.5, (vote > 0.5) == lab))


@pytest.mark.parametrize("k", [1, 4, 5])
def test_knn_matches_brute_force(key, rng, k):
    # equal sizes: the balanced subsample is a permutation, so the result is the brute-force LOO accuracy
    x, y = rng.normal(size=(280, 3)), rng.normal(size=(280, 3)) * 1.3
    np.testing.assert_allclose(M.knn_two_sample_accuracy(key, x, y, k=k), _knn_numpy(x, y, k), rtol=1e-6)


def test_knn_identical_vs_separated(key, rng):
    x = rng.normal(size=(250, 4))
    same = M.knn_two_sample_accuracy(key, x, rng.normal(size=(400, 4)), n_repeats=3)
    assert abs(same - 0.5) < 0.05
    assert M.knn_two_sample_accuracy(key, x, rng.normal(size=(250, 4)) + 10.0) == 1.0


def test_knn_no_retrace_across_sizes(key, rng):
    # sets of different sizes that fit one buffer reuse one compiled function (traced block counts)
    x = rng.normal(size=(100, 2))
    M.knn_two_sample_accuracy(key, x, rng.normal(size=(100, 2)))
    before = core.knn_loo_accuracy._cache_size()
    for n in (30, 64, 128):
        M.knn_two_sample_accuracy(key, x[:n], rng.normal(size=(n, 2)))
    assert core.knn_loo_accuracy._cache_size() == before
    M.energy_distance(x, rng.normal(size=(100, 2)))
    before = core.pair_sums._cache_size()
    for n in (20, 200):
        M.energy_distance(x[: min(n, 100)], rng.normal(size=(n, 2)))
    assert core.pair_sums._cache_size() == before


# ----------------------------------------------------------------------------------------------------------------
# preprocessing, PCA, gene statistics, classifier


def _low_rank(rng, n=120, g=40, r=4):
    return rng.normal(size=(n, r)) @ (rng.normal(size=(r, g)) * 3) + 0.3 * rng.normal(size=(n, g))


def _numpy_pca(x, k):
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    vt = vt[:k]
    idx = np.argmax(np.abs(vt), axis=1)
    vt = vt * np.sign(vt[np.arange(k), idx])[:, None]
    return s[:k] ** 2 / (len(x) - 1), vt


@pytest.mark.parametrize("shape", [(120, 40), (30, 50)])
def test_pca_exact_matches_numpy_svd(rng, shape):
    x = _low_rank(rng, *shape)
    var, vt = _numpy_pca(x, 5)
    with jax.enable_x64(True):
        p = M.pca_fit(x, 5, method="exact")
        np.testing.assert_allclose(np.asarray(p.explained_variance), var, rtol=1e-8)
        np.testing.assert_allclose(np.asarray(p.components), vt, atol=1e-8)
        np.testing.assert_allclose(np.asarray(M.pca_transform(p, x)), (x - x.mean(0)) @ vt.T, atol=1e-8)
    total = np.var(x, axis=0, ddof=1).sum()
    np.testing.assert_allclose(np.asarray(p.explained_variance_ratio), var / total, rtol=1e-6)


def test_pca_randomized_matches_numpy_svd(rng):
    x = _low_rank(rng, 150, 60, 4)
    var, vt = _numpy_pca(x, 4)
    p = M.pca_fit(x.astype(np.float32), 4, method="randomized", key=jax.random.key(1))
    np.testing.assert_allclose(np.asarray(p.explained_variance), var, rtol=1e-3)
    np.testing.assert_allclose(np.abs(np.asarray(p.components) @ vt.T), np.eye(4), atol=1e-3)


def test_normalize_log1p_and_gene_statistics(rng):
    counts = rng.poisson(1.5, size=(40, 25)).astype(np.float32)
    counts[3] = 0.0  # an empty cell normalises to zeros
    size = counts.sum(1, keepdims=True)
    norm_counts = np.where(size > 0, counts / np.where(size > 0, size, 1) * 1e4, 0)
    np.testing.assert_allclose(M.normalize_log1p(counts), np.log1p(norm_counts), rtol=1e-5)
    np.testing.assert_allclose(M.normalize_log1p(sp.csr_matrix(counts)), M.normalize_log1p(counts), rtol=1e-6)
    stats = M.gene_statistics(counts)
    np.testing.assert_allclose(stats["log_mean"], np.log1p(norm_counts.mean(0)), rtol=1e-6)
    np.testing.assert_allclose(stats["log_var"], np.log1p(norm_counts.var(0)), rtol=1e-6)
    np.testing.assert_allclose(stats["zero_frac"], (counts == 0).mean(0))
    sparse = M.gene_statistics(sp.csr_matrix(counts))
    for name in stats:
        np.testing.assert_allclose(sparse[name], stats[name], rtol=1e-6, atol=1e-9)


def test_pearson_matches_numpy(rng):
    a, b = rng.normal(size=100), rng.normal(size=100)
    b = a + 0.5 * b
    np.testing.assert_allclose(M.pearson(a, b), np.corrcoef(a, b)[0, 1], rtol=1e-12)
    assert math.isnan(M.pearson(np.ones(5), np.arange(5)))
    with pytest.raises(ValueError, match="equal length"):
        M.pearson(a, b[:50])


def test_label_classifier(rng):
    centers = rng.normal(size=(3, 4)) * 4
    labels = np.repeat(np.array(["a", "b", "c"]), 60)
    z = centers[np.repeat(np.arange(3), 60)] + rng.normal(size=(180, 4))
    clf = M.fit_label_classifier(z, labels)
    pred, codes = M.predict_labels(clf, z)
    assert np.mean(pred == labels) > 0.95
    np.testing.assert_array_equal(clf.classes[np.asarray(codes)], pred)
    # the optimum: the gradient of the (convex) objective vanishes
    a = (z - np.asarray(clf.mean)) / np.asarray(clf.scale)
    flat = np.concatenate([np.asarray(clf.weights).ravel(), np.asarray(clf.bias)])
    value, grad = M.classifier_objective(flat.astype(np.float32), a.astype(np.float32),
                                  np.unique(labels, return_inverse=True)[1].astype(np.int32), np.ones(180, np.float32),
                                  np.float32(1e-2), 3)
    np.testing.assert_allclose(float(value), float(clf.loss), rtol=1e-5)
    assert np.abs(np.asarray(grad)).max() < 1e-3
    with pytest.raises(ValueError, match="at least 2 classes"):
        M.fit_label_classifier(z, np.full(180, "a"))


# ----------------------------------------------------------------------------------------------------------------
# evaluate


def _counts(rng, n, rates):
    return rng.poisson(rates, size=(n, rates.shape[0])).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    """Real and generated count sets with two conditions whose gene profiles differ."""
    rng = np.random.default_rng(1)
    g = 30
    profiles = {"A": rng.gamma(2.0, 1.0, g), "B": rng.gamma(2.0, 1.0, g)}
    profiles["B"][:10] *= 6.0

    def sample(n_a, n_b, swap=False):
        la, lb = ("B", "A") if swap else ("A", "B")
        x = np.vstack([_counts(rng, n_a, profiles["A"]), _counts(rng, n_b, profiles["B"])])
        return x, np.array([la] * n_a + [lb] * n_b)

    # sizes keep every buffer at capacity 256, so all evaluations share their compilations
    return {"real": sample(60, 50), "train": sample(70, 50), "gen": sample(60, 50), "swapped": sample(60, 50, True)}


EV_KW = dict(n_components=3, knn_repeats=2)


@pytest.fixture(scope="module")
def good(data):
    (xr, lr), (xt, lt), (xg, lg) = data["real"], data["train"], data["gen"]
    return M.evaluate(xr, xg, real_labels=lr, generated_labels=lg, control=xt, control_labels=lt, **EV_KW)


def test_evaluate_table_structure(good):
    t = good.table
    assert list(t.columns) == ["condition", "metric", "generated", "control", "n_real", "n_generated",
                               "n_control", "note"]
    assert good.conditions == ["A", "B"]
    assert len(t) == 3 * len(M.METRICS)
    assert set(t["metric"]) == set(M.METRICS)
    row = t[(t.condition == "A") & (t.metric == "energy_distance")].iloc[0]
    assert (row.n_real, row.n_generated, row.n_control) == (60, 60, 70)
    all_row = t[(t.condition == M.ALL) & (t.metric == "knn_accuracy")].iloc[0]
    assert (all_row.n_real, all_row.n_generated, all_row.n_control) == (110, 110, 120)
    assert good.real.pcs.shape == (110, 3) and good.generated.pcs.shape == (110, 3)
    wide = good.wide()
    assert list(wide.index) == [M.ALL, "A", "B"]
    assert wide[("energy_distance", "control")]["A"] == good.value("energy_distance", "A", "control")
    d = good.to_dict()
    assert d["metrics"]["B"]["label_accuracy"]["generated"] == good.value("label_accuracy", "B")
    with pytest.raises(KeyError, match="no row"):
        good.value("energy_distance", "C")


def test_evaluate_good_generator_matches_control(good):
    # generated cells from the real distribution look like the control
    for cond in (M.ALL, "A", "B"):
        assert abs(good.value("knn_accuracy", cond) - 0.5) < 0.15
        assert good.value("label_accuracy", cond) > 0.9
        assert good.value("pearson_log_mean", cond) > 0.9
    assert good.value("energy_distance") < 3 * abs(good.value("energy_distance", which="control")) + 0.5


def test_evaluate_per_condition_breakdown(data, good):
    # labels swapped: overall the cells look real, but every condition is the other one's distribution
    (xr, lr), (xs, ls) = data["real"], data["swapped"]
    bad = M.evaluate(xr, xs, real_labels=lr, generated_labels=ls, control=None, **EV_KW)
    assert bad.control is None and math.isnan(bad.value("energy_distance", which="control"))
    assert bad.value("label_accuracy") < 0.1
    for cond in ("A", "B"):
        assert bad.value("knn_accuracy", cond) > 0.9
        assert bad.value("energy_distance", cond) > 5 * good.value("energy_distance", cond)
    # the overall rows see a plausible mixture
    assert bad.value("knn_accuracy") < 0.8


def test_evaluate_split_control_and_anndata(data):
    (xr, lr), (xg, lg) = data["real"], data["gen"]
    genes = [f"g{i}" for i in range(xr.shape[1])]
    real = ad.AnnData(sp.csr_matrix(xr), obs=pd.DataFrame({"ct": lr}, index=[f"r{i}" for i in range(len(lr))]),
                      var=pd.DataFrame(index=genes))
    gen = ad.AnnData(xg, obs=pd.DataFrame({"ct": lg}, index=[f"q{i}" for i in range(len(lg))]),
                     var=pd.DataFrame(index=genes))
    ev = M.evaluate(real, gen, condition_key="ct", **EV_KW)
    # split 50/50 stratified by condition: 30 + 25 reference, 30 + 25 control cells
    assert ev.settings["n_real"] == 55 and ev.settings["n_control"] == 55
    assert ev.value("label_accuracy", which="control") > 0.9
    # AnnData genes in another order are matched by name: identical result
    order = np.random.default_rng(0).permutation(len(genes))
    ev2 = M.evaluate(real, gen[:, order], condition_key="ct", **EV_KW)
    pd.testing.assert_frame_equal(ev.table, ev2.table)
    # arrays give the same as AnnData
    ev3 = M.evaluate(xr, xg, real_labels=lr, generated_labels=lg, **EV_KW)
    np.testing.assert_allclose(ev3.table["generated"], ev.table["generated"], rtol=1e-5)


def test_evaluate_small_conditions_are_nan_with_note(data):
    (xr, lr), (xg, lg) = data["real"], data["gen"]
    keep = np.r_[np.flatnonzero(lg == "A")[:4], np.flatnonzero(lg == "B")]  # 4 generated cells of A
    ev = M.evaluate(xr, xg[keep], real_labels=lr, generated_labels=lg[keep], control=None, **EV_KW)
    assert math.isnan(ev.value("energy_distance", "A"))
    assert not math.isnan(ev.value("label_accuracy", "A"))
    assert "fewer than 10 cells" in ev.table.loc[ev.table.condition == "A", "note"].iloc[0]


def test_evaluate_unconditional(data):
    (xr, _), (xg, _) = data["real"], data["gen"]
    ev = M.evaluate(xr, xg, **EV_KW)
    assert ev.conditions == [] and ev.condition_key is None
    assert "label_accuracy" not in set(ev.table["metric"])
    assert len(ev.table) == len(M.METRICS) - 1


# ----------------------------------------------------------------------------------------------------------------
# bad input


def test_bad_counts(data):
    (xr, _), (xg, _) = data["real"], data["gen"]
    neg = xg.copy()
    neg[3, 7] = -1
    with pytest.raises(ValueError, match=r"generated counts must be non-negative.*cell 3, gene 7"):
        M.evaluate(xr, neg)
    frac = xg.copy()
    frac[2, 4] = 0.5
    with pytest.raises(ValueError, match=r"generated must hold raw counts.*cell 2, gene 4"):
        M.evaluate(xr, frac)
    nan = xr.copy()
    nan[1, 1] = np.nan
    with pytest.raises(ValueError, match="real counts must be finite"):
        M.evaluate(nan, xg)
    with pytest.raises(ValueError, match="same genes"):
        M.evaluate(xr, xg[:, :-1])
    with pytest.raises(ValueError, match="2-D"):
        M.evaluate(xr, xg[0])
    with pytest.raises(ValueError, match="at least 3 real"):
        M.evaluate(xr[:2], xg, control=None)


def test_bad_conditions_and_genes(data):
    (xr, lr), (xg, lg) = data["real"], data["gen"]
    genes = [f"g{i}" for i in range(xr.shape[1])]
    real = ad.AnnData(xr, obs=pd.DataFrame({"ct": lr}, index=[f"r{i}" for i in range(len(lr))]),
                      var=pd.DataFrame(index=genes))
    gen = ad.AnnData(xg, obs=pd.DataFrame({"ct": lg}, index=[f"q{i}" for i in range(len(lg))]),
                     var=pd.DataFrame(index=genes))
    with pytest.raises(ValueError, match=r"condition key 'cell_type' not found in obs; columns: \['ct'\]"):
        M.evaluate(real, gen, condition_key="cell_type")
    other = gen.copy()
    other.obs["ct"] = np.where(lg == "A", "Z", lg)
    with pytest.raises(ValueError, match=r"generated cells have ct values absent from the real cells: \['Z'\]"):
        M.evaluate(real, other, condition_key="ct")
    with pytest.raises(ValueError, match=r"condition 'Q' \(ct\) has no real or generated cells"):
        M.evaluate(real, gen, condition_key="ct", conditions=["Q"])
    renamed = gen.copy()
    renamed.var_names = genes[:-1] + ["XYZ"]
    with pytest.raises(ValueError, match=r"missing from generated: \['g29'\], not in real: \['XYZ'\]"):
        M.evaluate(real, renamed)
    with pytest.raises(ValueError, match="conditions given for one set only"):
        M.evaluate(xr, xg, real_labels=lr)
    with pytest.raises(ValueError, match="layer 'counts' not found"):
        M.evaluate(real, gen, layer="counts")
    with pytest.raises(ValueError, match="control must be 'split'"):
        M.evaluate(xr, xg, control="half")
    with pytest.raises(ValueError, match="labels must have one entry per cell"):
        M.evaluate(xr, xg, real_labels=lr[:-1], generated_labels=lg)


def test_bad_points():
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="same dimension"):
        M.energy_distance(x, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="at least 2 points"):
        M.energy_distance(x, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="statistic must be"):
        M.energy_distance(x, x, statistic="w")
    with pytest.raises(ValueError, match="finite"):
        M.mmd_rbf(x, np.full((4, 2), np.nan), bandwidths=[1.0])
    with pytest.raises(ValueError, match="positive"):
        M.mmd_rbf(x, x, bandwidths=[0.0])
    with pytest.raises(ValueError, match="all points coincide"):
        M.mmd_rbf(x, x + 1)
    with pytest.raises(ValueError, match="needs at least 3 points in each set"):
        M.knn_two_sample_accuracy(jax.random.key(0), x, x[:2], k=5)
    with pytest.raises(ValueError, match="n_components"):
        M.pca_fit(np.ones((5, 3)), 4)
