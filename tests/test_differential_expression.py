"""Model-based differential expression (``genjax.models._differential``): the pure tests on sample arrays against
hand-computed values, closed forms and brute force, then end to end on synthetic negative-binomial counts with
known differentially expressed genes, and the errors."""

import itertools
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import genjax
from genjax.models import (
    change_mode_test,
    differential_expression,
    estimate_delta,
    estimate_pseudocounts,
    fdr_selection,
    log_fold_changes,
    vanilla_mode_test,
)

# four paired samples of two genes; fold changes by hand below
S1 = np.array([[0.2, 0.1], [0.4, 0.1], [0.1, 0.3], [0.8, 0.1]])
S2 = np.array([[0.1, 0.1], [0.1, 0.2], [0.2, 0.3], [0.1, 0.4]])
# log2(S1 / S2): gene 0 -> 1, 2, -1, 3; gene 1 -> 0, -1, 0, -2


def test_vanilla_mode_by_hand():
    res = vanilla_mode_test(S1, S2)
    # gene 0: S1 > S2 in samples 0, 1, 3; gene 1: never (0.1 > 0.1 and 0.3 > 0.3 are false)
    np.testing.assert_allclose(res["proba_m1"], [0.75, 0.0])
    np.testing.assert_allclose(res["proba_m2"], [0.25, 1.0])
    np.testing.assert_allclose(res["bayes_factor"],
                               [math.log(0.75 + 1e-8) - math.log(0.25 + 1e-8), math.log(1e-8) - math.log(1 + 1e-8)])
    np.testing.assert_allclose(res["scale1"], [0.375, 0.15])
    np.testing.assert_allclose(res["scale2"], [0.125, 0.25])


def test_change_mode_by_hand():
    res = change_mode_test(S1, S2, delta=1.0, pseudocounts=0.0, test_mode="two")
    # |r| >= 1: gene 0 all four samples; gene 1 samples 1 and 3
    np.testing.assert_allclose(res["proba_de"], [1.0, 0.5])
    np.testing.assert_allclose(res["proba_not_de"], [0.0, 0.5])
    np.testing.assert_allclose(res["bayes_factor"], [math.log(1 + 1e-8) - math.log(1e-8), 0.0], atol=1e-12)
    np.testing.assert_allclose(res["lfc_mean"], [1.25, -0.75])
    np.testing.assert_allclose(res["lfc_median"], [1.5, -0.5])
    # population std: gene 0 deviations -0.25, 0.75, -2.25, 1.75; gene 1: 0.75, -0.25, 0.75, -1.25
    np.testing.assert_allclose(res["lfc_std"], [math.sqrt(8.75 / 4), math.sqrt(2.75 / 4)])
    np.testing.assert_allclose(res["lfc_min"], [-1.0, -2.0])
    np.testing.assert_allclose(res["lfc_max"], [3.0, 0.0])
    np.testing.assert_allclose(res["scale1"], [0.375, 0.15])
    # "three" (the default): the more probable tail: gene 0 max(P(r >= 1) = 3/4, P(r <= -1) = 1/4); gene 1
    # max(0, 2/4)
    three = change_mode_test(S1, S2, delta=1.0)
    np.testing.assert_allclose(three["proba_de"], [0.75, 0.5])
    np.testing.assert_allclose(three["lfc_mean"], res["lfc_mean"])
    # delta = 0 counts every sample; delta above every |r| none
    np.testing.assert_allclose(change_mode_test(S1, S2, delta=0.0, test_mode="two")["proba_de"], [1.0, 1.0])
    np.testing.assert_allclose(change_mode_test(S1, S2, delta=3.5, test_mode="two")["proba_de"], [0.0, 0.0])


def test_pseudocounts_enter_both_sides():
    np.testing.assert_allclose(log_fold_changes([[0.3]], [[0.1]], 0.1), [[1.0]])  # log2(0.4 / 0.2)
    np.testing.assert_allclose(log_fold_changes([[0.0]], [[0.3]], 0.1), [[-2.0]])  # log2(0.1 / 0.4)
    # a large pseudocount shrinks every fold change towards 0
    big = change_mode_test(S1, S2, delta=0.5, pseudocounts=10.0, test_mode="two")
    assert np.all(np.abs(big["lfc_max"]) < 0.1) and np.all(big["proba_de"] == 0)


def test_change_mode_matches_the_gaussian_closed_form():
    """log rho ~ N(m, s^2) in each group: the paired log2 fold change is N((m1 - m2) / ln 2, 2 s^2 / ln^2 2)."""
    rng = np.random.default_rng(1)
    n, m1, m2, s = 200_000, np.array([-6.0, -6.0, -7.0]), np.array([-6.0, -6.5, -5.0]), 0.4
    s1 = np.exp(m1 + s * rng.standard_normal((n, 3)))
    s2 = np.exp(m2 + s * rng.standard_normal((n, 3)))
    delta = 0.5
    res = change_mode_test(s1, s2, delta=delta, test_mode="two")
    loc, scale = (m1 - m2) / math.log(2), math.sqrt(2) * s / math.log(2)
    expected = stats.norm.sf(delta, loc, scale) + stats.norm.cdf(-delta, loc, scale)
    np.testing.assert_allclose(res["proba_de"], expected, atol=4e-3)
    np.testing.assert_allclose(res["lfc_mean"], loc, atol=5e-3)
    np.testing.assert_allclose(res["lfc_std"], scale, rtol=5e-3)
    three = change_mode_test(s1, s2, delta=delta)
    np.testing.assert_allclose(three["proba_de"], np.maximum(stats.norm.sf(delta, loc, scale),
                                                             stats.norm.cdf(-delta, loc, scale)), atol=4e-3)
    # vanilla: P(rho1 > rho2) = Phi((m1 - m2) / (sqrt 2 s))
    van = vanilla_mode_test(s1, s2)
    np.testing.assert_allclose(van["proba_m1"], stats.norm.cdf((m1 - m2) / (math.sqrt(2) * s)), atol=4e-3)


def test_fdr_selection_by_hand():
    p = np.array([0.99, 0.5, 0.97, 0.9, 0.96])
    # sorted: .99 .97 .96 .90 .50 -> running mean of 1 - p: .01 .02 .0267 .045 .136
    np.testing.assert_array_equal(fdr_selection(p, 0.05), [True, False, True, True, True])
    np.testing.assert_array_equal(fdr_selection(p, 0.02), [True, False, True, False, False])
    np.testing.assert_array_equal(fdr_selection(p, 0.005), [False] * 5)  # no set is good enough: none called
    np.testing.assert_array_equal(fdr_selection(np.ones(3), 0.05), [True] * 3)


@pytest.mark.parametrize("seed", range(5))
def test_fdr_selection_is_the_largest_set_within_the_target(seed):
    """Brute force over every subset of 10 genes: the largest set whose mean 1 - p is <= target."""
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0.9, 1.0, 6), rng.uniform(0.0, 1.0, 4)])
    target = 0.08
    best = 0
    for k in range(1, p.size + 1):
        if any(np.mean(1 - p[list(c)]) <= target for c in itertools.combinations(range(p.size), k)):
            best = k
    sel = fdr_selection(p, target)
    assert sel.sum() == best
    assert best == 0 or np.mean(1 - p[sel]) <= target
    assert best == 0 or p[sel].min() >= p[~sel].max(initial=-1)  # the top genes, not any set of that size


def test_estimate_pseudocounts_by_hand():
    s1 = np.array([[0.1, 0.2, 0.01, 0.03], [0.3, 0.1, 0.02, 0.05]])
    s2 = np.array([[0.1, 0.2, 0.004, 0.5], [0.3, 0.1, 0.001, 0.4]])
    # group 1 leaves genes 2 and 3 unexpressed: maxima 0.02, 0.05; 0.9 quantile 0.02 + 0.9 * 0.03 = 0.047
    # group 2 leaves gene 2: maximum 0.004. The pseudocount is the larger value over the 4 genes
    c = estimate_pseudocounts(s1, s2, np.array([False, False, True, True]), np.array([False, False, True, False]))
    assert c == pytest.approx(0.047 / 4)
    c = estimate_pseudocounts(s1, s2, np.array([False, False, True, False]), np.array([False, False, True, True]))
    assert c == pytest.approx(0.4504 / 4)  # group 2's 0.9 quantile of 0.004 and 0.5: 0.004 + 0.9 * 0.496
    # no unexpressed gene anywhere: the floor
    assert estimate_pseudocounts(s1, s2, np.zeros(4, bool), np.zeros(4, bool)) == pytest.approx(1e-10)


def test_estimate_delta_from_three_modes():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2.0, 0.1, 100), rng.normal(0.0, 0.1, 800), rng.normal(2.5, 0.1, 100)])
    assert estimate_delta(x) == pytest.approx(0.6 * (2.0 + 2.5) / 2, abs=0.03)
    assert estimate_delta(x, coef=0.4) == pytest.approx(0.4 * 2.25, abs=0.02)
    # no real change: the floor
    assert estimate_delta(rng.normal(0.0, 0.05, 500)) == pytest.approx(0.1)
    assert estimate_delta(rng.normal(0.0, 0.05, 500), min_threshold=0.0) < 0.1
    assert estimate_delta(rng.normal(0.0, 0.05, 500), min_threshold=0.3) == pytest.approx(0.3)


def test_sample_array_errors_name_the_problem():
    with pytest.raises(ValueError, match="same shape"):
        change_mode_test(S1, S2[:3], delta=0.5)
    with pytest.raises(ValueError, match=r"scales2 must be finite and >= 0; found -0.1 at sample 1, gene 0"):
        vanilla_mode_test(S1, np.array([[0.1, 0.1], [-0.1, 0.2], [0.2, 0.3], [0.1, 0.4]]))
    with pytest.raises(ValueError, match="delta must be >= 0"):
        change_mode_test(S1, S2, delta=-0.1)
    with pytest.raises(ValueError, match="test_mode must be one of"):
        change_mode_test(S1, S2, delta=0.1, test_mode="one")
    with pytest.raises(ValueError, match="scales1 is 0 at sample 0, gene 1.*pseudocounts > 0"):
        log_fold_changes([[0.1, 0.0]], [[0.1, 0.1]])
    with pytest.raises(ValueError, match=r"fdr_target must be in \(0, 1\)"):
        fdr_selection([0.5], 1.0)
    with pytest.raises(ValueError, match="proba_de must lie in"):
        fdr_selection([0.5, np.nan], 0.05)
    with pytest.raises(ValueError, match="at least 3"):
        estimate_delta([0.1, 0.2])


# ------------------------------------------------------------------------------------------------ end to end

N_CELLS, N_GENES, N_DE = 400, 100, 10
TRUE_LFC = 2.0
UP, DOWN, BATCH = [f"g{j}" for j in range(N_DE)], [f"g{j}" for j in range(N_DE, 2 * N_DE)], \
    [f"g{j}" for j in range(2 * N_DE, 3 * N_DE)]


def _synthetic():
    """Two groups of NB counts in two batches: genes 0-9 are 4x up in group A, genes 10-19 4x down (log2 fold
    change +-2, A over B); genes 20-29 are 4x up in batch b2, and A's cells are 80% b1, B's 80% b2 (a batch
    effect confounded with the groups)."""
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 1.0, N_GENES) * 0.3 + 0.05
    lfc, batch_lfc = np.zeros(N_GENES), np.zeros(N_GENES)
    lfc[:N_DE], lfc[N_DE:2 * N_DE] = TRUE_LFC, -TRUE_LFC
    batch_lfc[2 * N_DE:3 * N_DE] = 2.0
    group = np.repeat(["A", "B"], N_CELLS // 2)
    batch = np.where(rng.uniform(size=N_CELLS) < np.where(group == "A", 0.8, 0.2), "b1", "b2")
    log2_rho = (np.log2(base) + np.where((group == "A")[:, None], lfc / 2, -lfc / 2)
                + np.where((batch == "b2")[:, None], batch_lfc, 0.0))
    rho = 2 ** log2_rho
    rho /= rho.sum(1, keepdims=True)
    mu = rng.lognormal(np.log(1500), 0.3, N_CELLS)[:, None] * rho
    theta = 5.0
    X = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float32)
    obs = pd.DataFrame({"group": pd.Categorical(group, categories=["A", "B", "C"]),
                        "batch": pd.Categorical(batch), "other": pd.Categorical(["x"] * N_CELLS)},
                       index=[f"c{i}" for i in range(N_CELLS)])
    return ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)]))


@pytest.fixture(scope="module")
def trained():
    adata = _synthetic()
    model = genjax.VAE(adata, n_hidden=32, n_latent=4, batch_key="batch")
    model.fit(max_epochs=100, batch_size=64, lr=5e-3, kl_warmup_epochs=20, progress=False)
    return model, adata


def test_known_de_genes_rank_first_and_fdr_control(trained):
    model, adata = trained
    df = model.differential_expression(groupby="group", group1="A", batch_correction=True, n_samples=400)
    truth = set(UP + DOWN)
    assert list(df.columns[:12]) == ["proba_de", "proba_not_de", "bayes_factor", "scale1", "scale2",
                                     "pseudocounts", "delta", "lfc_mean", "lfc_median", "lfc_std", "lfc_min",
                                     "lfc_max"]
    assert set(df.index) == set(adata.var_names) and df.index.is_unique
    assert np.all(np.diff(df["proba_de"].to_numpy()) <= 0)  # sorted by proba_de
    top = set(df.index[:2 * N_DE])
    assert len(top & truth) >= 2 * N_DE - 1, f"top 20 holds {len(top & truth)} of the 20 DE genes"
    # fold changes of group 1 over group 2: the DE genes' signs and sizes, the batch genes' near 0
    assert df.loc[UP, "lfc_mean"].min() > 1.0 and df.loc[DOWN, "lfc_mean"].max() < -1.0
    assert np.abs(df.loc[BATCH, "lfc_mean"]).max() < 0.5
    called = set(df.index[df["is_de_fdr_0.05"].to_numpy()])
    precision = len(called & truth) / max(len(called), 1)
    recall = len(called & truth) / len(truth)
    assert precision >= 0.75 and recall >= 0.9, f"precision {precision:.2f}, recall {recall:.2f} at FDR 0.05"
    # raw statistics: per group, as computed from the counts directly
    X = adata.X
    a = (adata.obs["group"] == "A").to_numpy()
    np.testing.assert_allclose(df.loc[adata.var_names, "raw_mean1"], X[a].mean(0), rtol=1e-6)
    np.testing.assert_allclose(df.loc[adata.var_names, "non_zeros_proportion2"], (X[~a] > 0).mean(0), rtol=1e-6)
    norm = X / X.sum(1, keepdims=True) * 1e4
    np.testing.assert_allclose(df.loc[adata.var_names, "raw_normalized_mean1"], norm[a].mean(0), rtol=1e-5)
    assert (df["comparison"] == "A vs rest").all() and (df["group2"] == "rest").all()


def test_without_batch_correction_the_confounded_batch_genes_differ(trained):
    """Decoded under their own batches, A (80% b1) and B (80% b2) differ in the batch genes: log2 of
    (0.8 + 0.2 * 4) / (0.2 + 0.8 * 4), about -1.1 before the proportions are renormalised."""
    model, adata = trained
    df = differential_expression(model, adata, groupby="group", group1="A", group2="B", n_samples=400, seed=1)
    assert df.loc[BATCH, "lfc_mean"].mean() < -0.5
    assert len(set(df.index[:2 * N_DE]) & set(UP + DOWN)) >= 2 * N_DE - 2


def test_vanilla_mode_and_estimated_delta(trained):
    model, adata = trained
    van = differential_expression(model, adata, groupby="group", group1="A", group2="B", mode="vanilla",
                                  batch_correction=True, n_samples=400, seed=1)
    assert "is_de_fdr_0.05" not in van and np.all(np.diff(van["bayes_factor"].to_numpy()) <= 0)
    # the genes up in A come first, the genes down in A last
    assert len(set(van.index[:N_DE]) & set(UP)) >= N_DE - 1
    assert len(set(van.index[-N_DE:]) & set(DOWN)) >= N_DE - 1
    est = differential_expression(model, groupby="group", group1="B", group2="A", delta=None, batch_correction=True,
                                  n_samples=400)
    # modes near -1.5, 0 and +1.5 (the fold changes the model recovers): delta about 0.6 * 1.5
    assert 0.6 <= est["delta"].iloc[0] <= 1.4
    assert (est["comparison"] == "B vs A").all()
    assert est.loc[UP, "lfc_mean"].max() < -1.0  # B over A
    # a given pseudocount is used as is: 1 dwarfs every proportion, so no fold change reaches delta
    flat = differential_expression(model, groupby="group", group1="A", pseudocounts=1.0, n_samples=100)
    assert (flat["pseudocounts"] == 1.0).all() and (flat["proba_de"] == 0).all()
    assert not flat["is_de_fdr_0.05"].any()
    # the same draws (same seed) under both events: "two" counts both tails, "three" only the more probable one
    kw = dict(groupby="group", group1="A", batch_correction=True, n_samples=100, seed=3)
    two, three = (differential_expression(model, test_mode=t, **kw) for t in ("two", "three"))
    np.testing.assert_allclose(two.loc[three.index, "lfc_mean"], three["lfc_mean"])
    assert np.all(two.loc[three.index, "proba_de"].to_numpy() >= three["proba_de"].to_numpy())
    # a list of groups: one comparison each against the rest, concatenated
    both = differential_expression(model, groupby="group", group1=["A", "B"], mode="vanilla", n_samples=100,
                                   all_stats=False)
    assert list(both["comparison"].unique()) == ["A vs rest", "B vs rest"] and len(both) == 2 * N_GENES
    assert "raw_mean1" not in both
    assert set(both[both["group1"] == "B"].index[:N_DE]) & set(DOWN)


def test_errors_are_named_before_any_compute(trained):
    model, adata = trained
    with pytest.raises(KeyError, match="groupby 'celltype' not found in adata.obs"):
        differential_expression(model, groupby="celltype", group1="A")
    with pytest.raises(ValueError, match="group1 'Z' is not a value of adata.obs\\['group'\\]"):
        differential_expression(model, groupby="group", group1="Z")
    with pytest.raises(ValueError, match="group2 'C' is not a value"):  # a category without cells
        differential_expression(model, groupby="group", group1="A", group2="C")
    with pytest.raises(ValueError, match=r"group2 \(rest\) of adata.obs\['other'\] has no cells"):
        differential_expression(model, groupby="other", group1="x")
    with pytest.raises(ValueError, match="group1 and group2 must differ"):
        differential_expression(model, groupby="group", group1="A", group2="A")
    with pytest.raises(ValueError, match="delta must be >= 0; got -0.5"):
        differential_expression(model, groupby="group", group1="A", delta=-0.5)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"fdr_target must be in \(0, 1\)"):
            differential_expression(model, groupby="group", group1="A", fdr_target=bad)
    with pytest.raises(ValueError, match="mode must be one of"):
        differential_expression(model, groupby="group", group1="A", mode="wilcoxon")
    with pytest.raises(ValueError, match="n_samples must be an integer"):
        differential_expression(model, groupby="group", group1="A", n_samples=0)
    with pytest.raises(ValueError, match="threshold_counts must be >= 0"):
        differential_expression(model, groupby="group", group1="A", threshold_counts=-1)
    with pytest.raises(ValueError, match="groupby 'batch' is the model's batch_key"):
        differential_expression(model, groupby="batch", group1="b1", batch_correction=True)
    with pytest.raises(TypeError, match="needs a model with get_normalized_expression"):
        differential_expression(object(), adata, groupby="group", group1="A")
    gaussian = genjax.VAE(adata, likelihood="gaussian", n_hidden=8, n_latent=2)
    with pytest.raises(ValueError, match="needs a count model.*'gaussian'"):
        differential_expression(gaussian, groupby="group", group1="A")
    no_batch = genjax.VAE(adata, n_hidden=8, n_latent=2)
    with pytest.raises(ValueError, match="batch_correction=True needs a model trained with a batch_key"):
        differential_expression(no_batch, groupby="group", group1="A", batch_correction=True)
