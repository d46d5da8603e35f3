"""genjax.metrics perturbation-prediction metrics: each metric against a hand-computed numpy / scipy reference on
tiny arrays, the invariances that catch the known traps (one profile for every perturbation, a shift shared by
all perturbations), the tidy table of evaluate_perturbations, bad-input errors, and one cross-check against
cell-eval's own functions (skipped unless cell-eval is installed).

All matrices have G = 40 genes and < 256 cells, so the batched JAX functions compile once.
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import false_discovery_control, linregress, mannwhitneyu, norm, pearsonr

import genjax.metrics as M
from genjax.data import normalize_log1p

G = 40


def _cells(rng, base, mult, n):
    """log1p-normalised Poisson counts with a per-cell size factor."""
    counts = rng.poisson(base * mult * rng.gamma(8.0, 1 / 8, (n, 1))).astype(np.float32)
    return normalize_log1p(counts)


@pytest.fixture(scope="module")
def data():
    """Control cells, 5 perturbations (6 specific genes each plus a shift shared by all), predicted cells."""
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 3.0, G)
    ctrl = _cells(rng, base, np.ones(G), 60)
    obs, pred = {}, {}
    for i in range(5):
        m = np.ones(G)
        m[i * 6:i * 6 + 6] = 5.0
        m[32:36] = 0.2  # shared by every perturbation
        obs[f"P{i}"] = _cells(rng, base, m, 50)
        m2 = m.copy()
        m2[i * 6] = 1.0  # one effect missed, one invented
        m2[37] = 3.0
        pred[f"P{i}"] = _cells(rng, base, m2, 45)
    return dict(ctrl=ctrl, obs=obs, pred=pred)


# ----------------------------------------------------------------------------------------------------------------
# differential expression and gene sets


def test_de_test_matches_scipy(data):
    x, y = data["obs"]["P0"].astype(np.float64), data["ctrl"].astype(np.float64)
    x[:, 5] = 0.0
    y[:, 5] = 0.0  # every value tied: p = 1, z = 0
    de = M.de_test(x, y)
    n1, n2 = len(x), len(y)
    for j in range(G):
        if j == 5:
            assert de.pvalue[j] == 1.0 and de.z[j] == 0.0
            continue
        r = mannwhitneyu(x[:, j], y[:, j], method="asymptotic", use_continuity=True)
        np.testing.assert_allclose(de.pvalue[j], r.pvalue, rtol=1e-9, atol=1e-300)
        # z without continuity correction, sign of the perturbed group: from scipy's p without correction
        r0 = mannwhitneyu(x[:, j], y[:, j], method="asymptotic", use_continuity=False)
        assert np.sign(de.z[j]) == np.sign(r0.statistic - n1 * n2 / 2)
        np.testing.assert_allclose(2 * norm.sf(abs(de.z[j])), r0.pvalue,
                                   rtol=1e-7, atol=1e-300)
    np.testing.assert_allclose(de.fdr, false_discovery_control(de.pvalue), rtol=1e-12)
    a, b = np.expm1(x.mean(0)), np.expm1(y.mean(0))
    want = np.where((a == 0) & (b == 0), 0.0, np.log2(np.where(b > 0, a, 1) / np.where(b > 0, b, 1)))
    np.testing.assert_allclose(de.log2fc, want, rtol=1e-12)
    assert de.log2fc[5] == 0.0
    # more genes than one block of the test (1024), many ties
    rng = np.random.default_rng(2)
    a, b = rng.poisson(1.0, (7, 1100)).astype(np.float32), rng.poisson(1.5, (9, 1100)).astype(np.float32)
    r = mannwhitneyu(a.astype(np.float64), b.astype(np.float64), method="asymptotic", axis=0)
    np.testing.assert_allclose(M.de_test(a, b).pvalue, np.where(np.isnan(r.pvalue), 1.0, r.pvalue), rtol=1e-9)


def test_top_degs_and_top_expressed(data):
    x, y = data["obs"]["P1"], data["ctrl"]
    de = M.de_test(x, y)
    np.testing.assert_array_equal(M.top_degs(x, y, 7), np.argsort(-np.abs(de.z), kind="stable")[:7])
    np.testing.assert_array_equal(M.top_degs(de, None, 7), M.top_degs(x, y, 7))
    # the planted genes (specific and shared) are the most significant
    assert set(M.top_degs(x, y, 10)) == set(range(6, 12)) | set(range(32, 36))
    assert M.top_degs(x, y, 1000).shape == (G,)
    np.testing.assert_array_equal(M.top_expressed(y, 10), np.argsort(-y.mean(0), kind="stable")[:10])
    np.testing.assert_array_equal(M.top_expressed(y.mean(0), 1000), np.argsort(-y.mean(0), kind="stable"))


def test_deg_recall_by_hand():
    fdr = np.array([0.01, 0.2, 0.001, 0.04, 0.5, 0.03])
    true = M.DETest(log2fc=np.array([1.0, 9.0, -3.0, 0.5, 2.0, -2.0]), z=np.zeros(6), pvalue=fdr, fdr=fdr)
    # observed list (significant, by |lfc|): 2, 5, 0, 3
    pred_lfc = np.array([0.1, 5.0, 4.0, 0.0, 3.0, 0.2])  # ungated order: 1, 2, 4, 5, 0, 3
    assert M.deg_recall(true, pred_lfc, 2) == 0.5  # {2, 5} vs {1, 2}
    assert M.deg_recall(true, pred_lfc, 4) == 0.5  # {2, 5, 0, 3} vs {1, 2, 4, 5}
    assert M.deg_recall(true, pred_lfc, 100) == 0.5  # k' = 4
    pred = M.DETest(log2fc=pred_lfc, z=np.zeros(6), pvalue=np.zeros(6),
                    fdr=np.array([0.01, 0.9, 0.01, 0.01, 0.9, 0.01]))  # gated list: 2, 5, 0, 3
    assert M.deg_recall(true, pred, 2) == 1.0
    none = M.DETest(np.zeros(6), np.zeros(6), np.ones(6), np.ones(6))
    assert math.isnan(M.deg_recall(none, pred_lfc, 3))
    assert M.deg_recall(true, none, 3) == 0.0  # a prediction without DEGs recalls nothing


def test_logfc_and_interaction_genes():
    np.testing.assert_allclose(M.logfc([1.0, -0.5, 0.0], [0.5, 0.5, 0.0]),
                               np.log2([1.1, 0.1, 0.1]) - np.log2([0.6, 0.6, 0.1]))
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 0.1, (100, 6))
    add = np.array([1.0, 1.5, 0.5, 1.0, 1.05, 1.0])
    x[:, 3] = 1.0  # constant: se = 0, departure 0
    x[:, 5] = 1.04  # constant, departure below the 0.1 floor
    got = M.interaction_genes(x, add)
    se = x.std(0, ddof=1) / 10
    want = np.flatnonzero(np.abs(x.mean(0) - add) > np.maximum(3 * se, 0.1))
    np.testing.assert_array_equal(got, want)
    assert set(got) == {1, 2}


# ----------------------------------------------------------------------------------------------------------------
# one condition against hand-computed references


def _r2(y_true, y_pred):
    return 1 - np.sum((y_true - y_pred) ** 2) / np.sum((y_true - y_true.mean()) ** 2)


def test_perturbation_scores_by_hand(data):
    x_cells, ctrl_cells, p_cells = data["obs"]["P2"], data["ctrl"], data["pred"]["P2"]
    x, c, p = (a.mean(0, dtype=np.float64) for a in (x_cells, ctrl_cells, p_cells))
    ref = np.mean([o.mean(0, dtype=np.float64) for o in data["obs"].values()], 0)
    top = M.top_expressed(ctrl_cells, 15)
    add = c + 0.8 * (x - c)
    s = M.perturbation_scores(p, x, c, reference_mean=ref, top_genes=top, pred_cells=p_cells, true_cells=x_cells,
                              ctrl_cells=ctrl_cells, additive_mean=add, n_degs=12, recall_at=(5, 20))
    tol = dict(rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(s["pearson_delta_ctrl"], pearsonr(p - c, x - c)[0], **tol)
    np.testing.assert_allclose(s["pearson_delta_ref"], pearsonr(p - ref, x - ref)[0], **tol)
    np.testing.assert_allclose(s["mse"], np.mean((p - x) ** 2), **tol)
    np.testing.assert_allclose(s["rmse_top"], np.sqrt(np.mean((p[top] - x[top]) ** 2)), **tol)
    np.testing.assert_allclose(s["l2_top"], np.linalg.norm(p[top] - x[top]), **tol)
    lp, lx = np.log2(p + 0.1) - np.log2(c + 0.1), np.log2(x + 0.1) - np.log2(c + 0.1)
    np.testing.assert_allclose(s["cosine_logfc"], lp @ lx / np.linalg.norm(lp) / np.linalg.norm(lx), **tol)
    degs = M.top_degs(x_cells, ctrl_cells, 12)
    np.testing.assert_allclose(s["r2_mean_deg"], _r2(x[degs], p[degs]), **tol)
    np.testing.assert_allclose(s["pearson2_mean_deg"], linregress(p[degs], x[degs]).rvalue ** 2, **tol)
    np.testing.assert_allclose(s["r2_logfc_deg"], _r2(lx[degs], lp[degs]), **tol)
    true_de, pred_de = M.de_test(x_cells, ctrl_cells), M.de_test(p_cells, ctrl_cells)
    for k in (5, 20):
        assert s[f"deg_recall_{k}"] == M.deg_recall(true_de, pred_de, k)
    gi = M.interaction_genes(x_cells, add)
    assert gi.size >= 3
    np.testing.assert_allclose(s["interaction_corr"], pearsonr(p[gi] - add[gi], x[gi] - add[gi])[0], **tol)
    a, b = x_cells.astype(np.float64), p_cells.astype(np.float64)
    n, m = len(a), len(b)
    energy = 2 * cdist(a, b).mean() - cdist(a, a).sum() / (n * (n - 1)) - cdist(b, b).sum() / (m * (m - 1))
    np.testing.assert_allclose(s["energy_distance"], energy, rtol=1e-4)
    # means only: no distribution metrics; without a reference no pearson_delta_ref
    s2 = M.perturbation_scores(p, x, c)
    assert "energy_distance" not in s2 and "deg_recall_20" not in s2 and "pearson_delta_ref" not in s2
    assert s2["mse"] == pytest.approx(s["mse"], rel=1e-6)
    # R^2 over the DEGs is the coefficient of determination: predicting no change scores <= 0 on planted DEGs
    s3 = M.perturbation_scores(c, x, c, degs=degs)
    assert s3["r2_logfc_deg"] < 0 and math.isnan(s3["pearson_delta_ctrl"])


def test_split_half_ceiling_by_hand():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(41, 3))
    perm = np.random.default_rng(7).permutation(41)
    a, b = x[perm[:20]], x[perm[20:40]]
    want = 2 * cdist(a, b).mean() - cdist(a, a).sum() / 380 - cdist(b, b).sum() / 380
    np.testing.assert_allclose(M.split_half_ceiling(x, seed=7), want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="at least 4"):
        M.split_half_ceiling(x[:3])


# ----------------------------------------------------------------------------------------------------------------
# rank metric and the traps


def _rank_brute(pred, true, metric):
    n = len(pred)
    out = np.empty(n)
    for p in range(n):
        if metric == "cosine":
            s = [pred[q] @ true[p] / np.linalg.norm(pred[q]) / np.linalg.norm(true[p]) for q in range(n)]
        else:
            s = [-np.sqrt(np.mean((pred[q] - true[p]) ** 2)) for q in range(n)]
        s = np.array(s)
        out[p] = np.sum(np.delete(s, p) > s[p]) / n
    return out


@pytest.mark.parametrize("metric", ["cosine", "rmse"])
def test_rank_metric(metric):
    rng = np.random.default_rng(4)
    true = rng.normal(size=(9, G)) + 2.0
    pred = true + rng.normal(scale=1.5, size=true.shape)
    np.testing.assert_allclose(M.rank_metric(pred, true, metric=metric), _rank_brute(pred, true, metric))
    assert np.all(M.rank_metric(true, true, metric=metric) == 0.0)  # perfect
    same = np.repeat(true.mean(0, keepdims=True), 9, 0)  # one profile for every condition
    np.testing.assert_allclose(M.rank_metric(same, true, metric=metric), 4 / 9)  # (N - 1) / (2 N)
    groups = ["a", "b", "a", "b", "a", "b", "a", "b", "a"]
    got = M.rank_metric(pred, true, metric=metric, groups=groups)
    for grp in ("a", "b"):
        idx = [i for i, g in enumerate(groups) if g == grp]
        np.testing.assert_allclose(got[idx], _rank_brute(pred[idx], true[idx], metric))


def test_shared_shift_traps(data):
    """A model that predicts only the shift shared by all perturbations: high Pearson delta against control and
    good fit, but no better than random at telling conditions apart; the perturbed-centroid reference sees it."""
    obs, c = data["obs"], data["ctrl"].mean(0, dtype=np.float64)
    means = {k: v.mean(0, dtype=np.float64) for k, v in obs.items()}
    ref = np.mean(list(means.values()), 0)
    shift_only = c.copy()
    shift_only[32:36] = ref[32:36]
    ctrl_scores, ref_scores = [], []
    for k in obs:
        s = M.perturbation_scores(shift_only, means[k], c, reference_mean=ref)
        ctrl_scores.append(s["pearson_delta_ctrl"])
        ref_scores.append(s["pearson_delta_ref"])
    assert min(ctrl_scores) > 0.5
    assert max(ref_scores) < min(ctrl_scores) - 0.3
    true = np.stack(list(means.values()))
    lfc_pred = M.logfc(np.repeat(shift_only[None], 5, 0), c)
    ranks = M.rank_metric(lfc_pred, M.logfc(true, c), metric="cosine")
    np.testing.assert_allclose(ranks, 0.4)  # (N - 1) / (2 N): indistinguishable from random


# ----------------------------------------------------------------------------------------------------------------
# the table


def test_evaluate_perturbations_table(data):
    obs, ctrl, pred = data["obs"], data["ctrl"], data["pred"]
    means = {k: v.mean(0) for k, v in pred.items()}
    add = {"P3": ctrl.mean(0) + 0.5 * (obs["P3"].mean(0) - ctrl.mean(0))}
    subset = {k: means[k] for k in ("P0", "P1", "P2")}
    tab = M.evaluate_perturbations(obs, ctrl, {"cells": pred, "means": subset}, additive=add, n_top_genes=15,
                                   n_degs=12, recall_at=(5, 20), n_components=8)
    assert list(tab.columns) == ["method", "condition", "metric", "value", "n_cells"]
    assert list(pd.unique(tab.method)) == ["control", "perturbed_mean", "additive", "cells", "means", "ceiling"]
    assert set(tab[tab.method == "means"].condition) == {"P0", "P1", "P2"}
    assert set(tab[tab.method == "additive"].condition) == {"P3"}
    assert (tab.n_cells == 50).all()

    def val(method, cond, metric):
        v = tab[(tab.method == method) & (tab.condition == cond) & (tab.metric == metric)].value
        assert len(v) == 1, (method, cond, metric)
        return v.iloc[0]

    # the same numbers as perturbation_scores with the same gene sets
    ref = np.mean([o.mean(0, dtype=np.float64) for o in obs.values()], 0)
    s = M.perturbation_scores(None, None, None, reference_mean=ref, top_genes=M.top_expressed(ctrl, 15),
                              pred_cells=pred["P1"], true_cells=obs["P1"], ctrl_cells=ctrl, n_degs=12,
                              recall_at=(5, 20))
    for k, v in s.items():
        if k != "energy_distance":  # the table's is in PCA space
            np.testing.assert_allclose(val("cells", "P1", k), v, rtol=1e-6, atol=1e-7, err_msg=k)
    # energy distance: predicted cells far, the split-half ceiling near 0, control cells (no effect) far
    assert val("cells", "P1", "energy_distance") > 5 * abs(val("ceiling", "P1", "energy_distance"))
    assert val("control", "P1", "energy_distance") > val("cells", "P1", "energy_distance")
    assert not ((tab.method == "means") & (tab.metric.isin(["energy_distance", "deg_recall_5"]))).any()
    # ranks across the conditions of each method
    lfc_pred = M.logfc(np.stack([means[k] for k in obs]), ctrl.mean(0))
    lfc_true = M.logfc(np.stack([o.mean(0) for o in obs.values()]), ctrl.mean(0))
    want = M.rank_metric(lfc_pred, lfc_true, metric="cosine")
    got = [val("cells", k, "rank_cosine_logfc") for k in obs]
    np.testing.assert_allclose(got, want)
    assert all(val("perturbed_mean", k, "rank_rmse_mean") == pytest.approx(0.4) for k in obs)
    assert math.isnan(val("perturbed_mean", "P0", "pearson_delta_ref"))  # pred - ref = 0
    assert math.isnan(val("additive", "P3", "interaction_corr"))  # pred - additive = 0
    assert val("cells", "P3", "interaction_corr") > 0.5
    assert set(tab[tab.metric == "interaction_corr"].condition) == {"P3"}
    # summarise: mean over conditions, methods as rows
    wide = M.summarise(tab)
    assert list(wide.index) == ["control", "perturbed_mean", "additive", "cells", "means", "ceiling"]
    np.testing.assert_allclose(wide.loc["cells", "mse"], tab[(tab.method == "cells") & (tab.metric == "mse")]
                               .value.mean())
    assert list(wide.columns[:3]) == ["pearson_delta_ctrl", "pearson_delta_ref", "mse"]
    assert wide.loc["cells", "deg_recall_20"] > wide.loc["control", "deg_recall_20"] == 0.0


def test_bad_inputs(data):
    obs, ctrl = data["obs"], data["ctrl"]
    one = {"P0": obs["P0"]}
    mean0 = obs["P0"].mean(0)
    with pytest.raises(ValueError, match="'Q'.*not in observed"):
        M.evaluate_perturbations(one, ctrl, {"m": {"Q": mean0}})
    with pytest.raises(ValueError, match=r"predictions\['m'\]\['P0'\].*shape \(39,\)"):
        M.evaluate_perturbations(one, ctrl, {"m": {"P0": mean0[:-1]}})
    bad = mean0.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"predictions\['m'\]\['P0'\] contains NaN"):
        M.evaluate_perturbations(one, ctrl, {"m": {"P0": bad}})
    with pytest.raises(ValueError, match=r"observed\['P1'\] has 39 genes"):
        M.evaluate_perturbations({"P0": obs["P0"], "P1": obs["P1"][:, :-1]}, ctrl, {})
    with pytest.raises(ValueError, match="controls has no entry for condition 'P0'"):
        M.evaluate_perturbations(one, {"P9": ctrl}, {})
    with pytest.raises(ValueError, match="reserved"):
        M.evaluate_perturbations(one, ctrl, {"control": {"P0": mean0}})
    with pytest.raises(ValueError, match="pred_mean has 39 genes"):
        M.perturbation_scores(mean0[:-1], mean0, mean0)
    with pytest.raises(ValueError, match="same shape"):
        M.rank_metric(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        M.de_test(np.full((3, G), np.nan), ctrl)


# ----------------------------------------------------------------------------------------------------------------
# cell-eval


def test_matches_cell_eval(data, tmp_path):
    """pearson_delta, mse, the DE test (pdex) and overlap_at_k of cell-eval equal ours on a tiny case."""
    ad = pytest.importorskip("anndata")
    cell_eval = pytest.importorskip("cell_eval")
    from cell_eval.metrics import de_overlap_metric

    obs, ctrl, pred = data["obs"], data["ctrl"], data["pred"]

    def adata(groups):
        x = np.concatenate(list(groups.values()))
        labels = np.concatenate([[k] * len(v) for k, v in groups.items()])
        return ad.AnnData(X=x.astype(np.float32),
                          obs=pd.DataFrame({"target": labels}, index=[f"c{i}" for i in range(len(x))]),
                          var=pd.DataFrame(index=[f"g{j}" for j in range(G)]))

    # the predicted control cells are the real ones: our metrics use one control for both sides
    ev = cell_eval.MetricsEvaluator(adata({"ctrl": ctrl, **pred}), adata({"ctrl": ctrl, **obs}),
                                    control_pert="ctrl", pert_col="target", num_threads=1, outdir=str(tmp_path))
    res, _ = ev.compute(profile="full", write_csv=False, skip_metrics=["clustering_agreement"])
    res = res.to_pandas().set_index("perturbation")
    real_de = ev.de_comparison.real.data.to_pandas()
    overlaps = {k: de_overlap_metric(ev.de_comparison, k=k, metric="overlap") for k in (5, 10, 20)}
    for c in obs:
        s = M.perturbation_scores(None, None, None, pred_cells=pred[c], true_cells=obs[c], ctrl_cells=ctrl,
                                  recall_at=(5, 10, 20, 50))
        np.testing.assert_allclose(s["pearson_delta_ctrl"], res.loc[c, "pearson_delta"], rtol=1e-5)
        np.testing.assert_allclose(s["mse"], res.loc[c, "mse"], rtol=1e-5)
        np.testing.assert_allclose(s["deg_recall_50"], res.loc[c, "overlap_at_50"])
        for k in (5, 10, 20):
            np.testing.assert_allclose(s[f"deg_recall_{k}"], overlaps[k][c])
        de = M.de_test(obs[c], ctrl)
        theirs = real_de[real_de.target == c].set_index("feature").loc[[f"g{j}" for j in range(G)]]
        np.testing.assert_allclose(de.pvalue, theirs.p_value, rtol=1e-5, atol=1e-30)
        np.testing.assert_allclose(de.fdr, theirs.fdr, rtol=1e-5, atol=1e-30)
        np.testing.assert_allclose(de.log2fc, theirs.log2_fold_change, rtol=1e-5, atol=1e-5)  # theirs: float32
        assert (de.fdr < 0.05).sum() == res.loc[c, "de_nsig_counts_real"]
