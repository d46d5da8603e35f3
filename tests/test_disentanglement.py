"""Disentanglement metrics (MIG, DCI) against hand-computed values, the factor_counts generator's truth, and the
beta-VAE benchmark's training protocol."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import hadamard
from scipy.stats import entropy, special_ortho_group

import genjax


def _grid(levels, repeats):
    """Every combination of the factor levels, ``repeats`` times: factors exactly independent in the sample."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in levels], indexing="ij"), -1).reshape(-1, len(levels))
    return np.tile(grid, (repeats, 1))


@pytest.fixture(scope="module")
def synthetic():
    """factor_counts' true factors and a latent that is their standardised values plus a little noise."""
    adata = genjax.datasets.factor_counts(1500, 120, 4, levels=(3, 4, 5, 6), seed=0)
    factors = adata.obs[adata.uns["truth"]["factor_keys"]]
    v = np.stack([factors[c].cat.codes.to_numpy() for c in factors], axis=1).astype(float)
    z = (v - v.mean(0)) / v.std(0) + 0.1 * np.random.default_rng(1).normal(size=v.shape)
    return adata, factors, z


# ---------------------------------------------------------------- MIG


def test_mig_is_one_for_exact_copies_and_zero_for_duplicated_dims():
    v = _grid((3, 4, 2), 5)  # factors exactly independent, so a copy of one factor says nothing of the others
    assert genjax.metrics.mig(v.astype(float), v) == pytest.approx(1.0, abs=1e-12)
    # two identical dims carrying factor 0: the gap for factor 0 is 0, the others keep 1
    z = np.concatenate([v[:, :1], v], axis=1).astype(float)
    out = genjax.metrics.mig(z, v, details=True)
    np.testing.assert_allclose(out.gap, [0.0, 1.0, 1.0], atol=1e-12)
    assert out.score == pytest.approx(2 / 3, abs=1e-12)
    np.testing.assert_allclose(out.factor_entropy, np.log([3, 4, 2]), rtol=1e-12)
    assert list(out.top_latent[1:]) == [2, 3]


def test_mig_matches_a_hand_computed_value():
    v = np.array([0, 0, 1, 1])
    z = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])  # dim 0 copies v, dim 1 knows half of it
    # dim 1 with 2 bins: joint p(bin, v) = {(0,0): 1/2, (0,1): 1/4, (1,1): 1/4}, p(bin) = (3/4, 1/4), p(v) = 1/2
    i1 = 0.5 * math.log(0.5 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / 0.125)
    expected = (math.log(2) - i1) / math.log(2)
    for n_bins in (2, 20):  # exact copies land in distinct bins at any n_bins >= 2
        assert genjax.metrics.mig(z, v, n_bins) == pytest.approx(expected, abs=1e-12)


def test_mig_bins_have_equal_width_between_min_and_max():
    v = np.array([0, 0, 1, 1])
    # with 2 bins the edges are 0, 0.5, 1: 0.4 falls in the lower bin and 0.5 (an edge) in the upper, as np.histogram
    # (dim 1 is balanced against v, so it carries no information)
    assert genjax.metrics.mig(np.array([[0.0, 0], [0.4, 1], [0.5, 0], [1.0, 1]]), v, 2) == pytest.approx(1.0)
    # swapping 0.4 and 0.6 makes dim 0's bins (0, 1, 0, 1): no information left in either dim
    assert genjax.metrics.mig(np.array([[0.0, 0], [0.6, 1], [0.4, 0], [1.0, 1]]), v, 2) == pytest.approx(0.0)


def test_mig_accepts_dataframes_of_categories_and_strings():
    v = _grid((3, 2), 4)
    z = v + 0.1 * np.random.default_rng(0).normal(size=v.shape)
    frame = pd.DataFrame({"type": pd.Categorical(np.array(["b", "a", "c"])[v[:, 0]]),
                          "state": np.array(["x", "y"])[v[:, 1]]})
    out = genjax.metrics.mig(z, frame, details=True)
    assert out.factor_names == ["type", "state"]
    assert out.score == pytest.approx(genjax.metrics.mig(z, v))
    assert genjax.metrics.mig(z[:, ::-1], frame["state"]) == pytest.approx(genjax.metrics.mig(z, v[:, 1]))


def test_mig_ranks_the_axis_aligned_latent_above_rotations(synthetic):
    _, factors, z = synthetic
    aligned = genjax.metrics.mig(z, factors)
    mixing = genjax.metrics.mig(z @ (hadamard(4) / 2), factors)  # every dim an equal mix of all four factors
    assert aligned >= 0.5 and mixing <= 0.1, (aligned, mixing)
    rotations = [genjax.metrics.mig(z @ special_ortho_group.rvs(4, random_state=s), factors) for s in range(8)]
    assert max(rotations) < aligned - 0.3, rotations


def test_mig_ranks_a_latent_read_from_the_counts(synthetic):
    """The issue's target on the counts themselves: the true programme scores of each cell (log-normalised counts
    projected on each factor's loadings, a disentangled latent) against a maximally mixing rotation of them."""
    adata, factors, _ = synthetic
    x = adata.X.toarray()
    logx = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    z = (logx - logx.mean(0)) @ adata.varm["true_loading"]
    aligned, mixed = genjax.metrics.mig(z, factors), genjax.metrics.mig(z @ (hadamard(4) / 2), factors)
    assert aligned >= 0.5 and mixed <= 0.1, (aligned, mixed)


def test_mig_mutual_information_matches_sklearn(synthetic):
    metrics = pytest.importorskip("sklearn.metrics")
    _, factors, z = synthetic
    out = genjax.metrics.mig(z, factors, 7, details=True)
    codes = factors.apply(lambda c: c.cat.codes).to_numpy()
    for j in range(z.shape[1]):
        bins = np.digitize(z[:, j], np.histogram(z[:, j], 7)[1][:-1])  # disentanglement_lib's binning
        for k in range(codes.shape[1]):
            assert out.mutual_information[j, k] == pytest.approx(metrics.mutual_info_score(bins, codes[:, k]),
                                                                 abs=1e-12)


def test_mig_factor_entropy_matches_scipy(synthetic):
    _, factors, z = synthetic
    out = genjax.metrics.mig(z, factors, details=True)
    for k, c in enumerate(factors):
        assert out.factor_entropy[k] == pytest.approx(entropy(factors[c].value_counts().to_numpy()), rel=1e-12)


def test_mig_and_dci_name_bad_input():
    z = np.random.default_rng(0).normal(size=(6, 3))
    v = np.array([0, 1, 2, 0, 1, 2])
    for fn in (genjax.metrics.mig, genjax.metrics.dci):
        with pytest.raises(ValueError, match="5 rows but latent has 6"):
            fn(z, v[:5])
        with pytest.raises(ValueError, match="finite.*cell 2, dim 1"):
            fn(np.where(np.arange(18).reshape(6, 3) == 7, np.nan, z), v)
        with pytest.raises(ValueError, match="'batch' is constant"):
            fn(z, pd.DataFrame({"type": v, "batch": ["b0"] * 6}))
        with pytest.raises(ValueError, match="'type' has a missing value.*cell 3"):
            fn(z, pd.DataFrame({"type": pd.Categorical(["a", "b", "c", None, "a", "b"])}))
        with pytest.raises(ValueError, match="non-integer value 1.5 at cell 1.*qcut"):
            fn(z, v * 1.0 + np.array([0, 0.5, 0, 0, 0, 0]))
        with pytest.raises(ValueError, match="latent dims >= 2"):
            fn(z[:, :1], v)
    with pytest.raises(ValueError, match="n_bins must be an integer >= 2; got 1"):
        genjax.metrics.mig(z, v, 1)


# ---------------------------------------------------------------- DCI


def test_dci_scores_of_given_importance_matrices():
    from_importance = genjax.metrics.dci(*_tiny_dci_data()).__class__.from_importance
    diagonal = from_importance(np.vstack([np.eye(3), np.zeros((2, 3))]))  # two unused dims
    assert diagonal.disentanglement == pytest.approx(1.0) and diagonal.completeness == pytest.approx(1.0)
    uniform = from_importance(np.ones((4, 3)))
    assert uniform.disentanglement == pytest.approx(0.0, abs=1e-12)
    assert uniform.completeness == pytest.approx(0.0, abs=1e-12)
    # hand-computed: latent 0 -> factor 0 only (D_0 = 1); latent 1 split evenly (D_1 = 0); latent 2 unused
    out = from_importance(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out.per_latent_disentanglement[:2], [1.0, 0.0], atol=1e-12)
    assert out.disentanglement == pytest.approx(1 / 3 * 1.0 + 2 / 3 * 0.0)
    # factor 0 spread evenly over 2 of 3 latents: 1 - log 2 / log 3; factor 1 on latent 1 alone: 1
    np.testing.assert_allclose(out.per_factor_completeness, [1 - math.log(2) / math.log(3), 1.0], atol=1e-12)
    assert math.isnan(from_importance(np.ones((3, 1))).disentanglement)  # undefined for one factor
    with pytest.raises(ValueError, match="importance must be finite and >= 0; got -1.0 at latent 1, factor 0"):
        from_importance(np.array([[1.0, 0.0], [-1.0, 1.0]]))


def _tiny_dci_data():
    v = _grid((2, 2), 6)
    return v + 0.05 * np.random.default_rng(0).normal(size=v.shape), v


def test_dci_end_to_end_separates_aligned_from_mixed(synthetic):
    _, factors, z = synthetic
    aligned = genjax.metrics.dci(z, factors)
    mixed = genjax.metrics.dci(z @ (hadamard(4) / 2), factors)
    assert aligned.disentanglement >= 0.85 and aligned.completeness >= 0.85, aligned[:3]
    assert mixed.disentanglement <= 0.2 and mixed.completeness <= 0.2, mixed[:3]
    assert list(np.argmax(aligned.importance, axis=0)) == [0, 1, 2, 3]
    np.testing.assert_allclose(aligned.importance.sum(axis=0), 1.0)
    # a rotation loses no information: the linear classifiers predict as well from either latent, far above chance
    assert aligned.informativeness >= 0.9
    assert mixed.informativeness == pytest.approx(aligned.informativeness, abs=0.03)
    assert np.all(aligned.per_factor_accuracy > aligned.per_factor_chance + 0.4)
    # permuting the latent dims permutes the rows of the importance matrix and changes no score
    perm = [2, 0, 3, 1]
    permuted = genjax.metrics.dci(z[:, perm], factors)
    np.testing.assert_allclose(permuted.importance, aligned.importance[perm], atol=2e-3)
    assert permuted.disentanglement == pytest.approx(aligned.disentanglement, abs=5e-3)


def test_dci_l1_penalty_drops_pure_noise_dimensions():
    rng = np.random.default_rng(2)
    v = np.stack([rng.integers(0, 3, 800), rng.integers(0, 4, 800)], axis=1)
    z = np.concatenate([v + 0.3 * rng.normal(size=v.shape), rng.normal(size=(800, 6))], axis=1)  # 6 noise dims
    l1 = genjax.metrics.dci(z, v, penalty="l1", alpha=0.05)
    l2 = genjax.metrics.dci(z, v)
    assert np.all(l1.importance[2:] == 0.0) and np.all(l2.importance[2:] > 0.0)  # the Lasso's exact zeros
    np.testing.assert_allclose(l1.importance[:2], np.eye(2), atol=1e-12)
    assert l1.disentanglement == pytest.approx(1.0) and l1.completeness == pytest.approx(1.0)
    assert l2.completeness < l1.completeness
    assert l1.informativeness >= 0.9 and l2.informativeness >= 0.9


def test_dci_option_errors():
    z, v = _tiny_dci_data()
    with pytest.raises(ValueError, match="test_fraction must be in"):
        genjax.metrics.dci(z, v, test_fraction=1.0)
    with pytest.raises(ValueError, match="leaves 0 test"):
        genjax.metrics.dci(z, v, test_fraction=0.01)
    with pytest.raises(ValueError, match="alpha must be > 0; got 0.0"):
        genjax.metrics.dci(z, v, alpha=0.0)
    with pytest.raises(ValueError, match="penalty must be one of"):
        genjax.metrics.dci(z, v, penalty="lasso")


# ---------------------------------------------------------------- factor_counts


def test_factor_counts_programs_follow_their_own_factor_only():
    adata = genjax.datasets.factor_counts(3000, 150, 3, levels=(2, 3, 4), effect_sd=1.5, library_size=5e4,
                                          sparse=False, seed=3)
    again = genjax.datasets.factor_counts(3000, 150, 3, levels=(2, 3, 4), effect_sd=1.5, library_size=5e4,
                                          sparse=False, seed=3)
    np.testing.assert_array_equal(adata.X, again.X)
    truth = adata.uns["truth"]
    assert truth["factor_keys"] == ["factor_0", "factor_1", "factor_2"] and truth["levels"] == [2, 3, 4]
    size = truth["program_size"]
    assert size == 150 // 4 and np.all(adata.var["program"].to_numpy()[3 * size:] == -1)
    codes = adata.obs[truth["factor_keys"]].apply(lambda c: c.cat.codes).to_numpy()
    # independent factors: the MI of factor 0 (as a latent) with the others is at the plug-in bias, ~1e-3 nats
    mi = genjax.metrics.mig(codes[:, [0, 0]].astype(float), codes[:, 1:], details=True).mutual_information
    assert np.all(mi < 5e-3), mi
    logx = np.log((adata.X + 0.5) / adata.X.sum(1, keepdims=True))
    loading = adata.varm["true_loading"]  # genes x factors
    for k, n_levels in enumerate(truth["levels"]):
        top, bottom = codes[:, k] == n_levels - 1, codes[:, k] == 0
        shift = logx[top].mean(0) - logx[bottom].mean(0)  # lowest -> highest level, each gene
        own = adata.var["program"].to_numpy() == k
        # the programme's genes move by about their loading; the other genes hardly move
        assert np.corrcoef(shift[own], loading[own, k])[0, 1] > 0.9
        assert np.abs(shift[~own]).mean() < 0.25 * np.abs(shift[own]).mean()
    with pytest.raises(ValueError, match="at least 2 levels"):
        genjax.datasets.factor_counts(10, 20, 2, levels=(1, 3))
    with pytest.raises(ValueError, match=r"2 \(n_factors\) integers"):
        genjax.datasets.factor_counts(10, 20, 2, levels=(2, 3, 4))
    with pytest.raises(ValueError, match="program_size"):
        genjax.datasets.factor_counts(10, 20, 2, program_size=11)


def test_factor_counts_programme_strengths_per_factor():
    equal = genjax.datasets.factor_counts(300, 60, 3, effect_sd=1.5, sparse=False, seed=4)
    same = genjax.datasets.factor_counts(300, 60, 3, effect_sd=(1.5, 1.5, 1.5), sparse=False, seed=4)
    np.testing.assert_array_equal(equal.X, same.X)  # a scalar is the same as that value for every factor
    assert equal.uns["truth"]["effect_sd"] == 1.5 and same.uns["truth"]["effect_sd"] == [1.5, 1.5, 1.5]
    graded = genjax.datasets.factor_counts(300, 2000, 3, effect_sd=(3.0, 1.0, 0.2), sparse=False, seed=4)
    loading, program = graded.varm["true_loading"], graded.var["program"].to_numpy()
    # each programme's loadings are N(0, effect_sd[k]^2): ~500 genes each, so the sample sd is within ~10%
    np.testing.assert_allclose([loading[program == k, k].std() for k in range(3)], [3.0, 1.0, 0.2], rtol=0.1)
    with pytest.raises(ValueError, match=r"effect_sd must be one number or 3 \(n_factors\) numbers"):
        genjax.datasets.factor_counts(10, 20, 3, effect_sd=(1.0, 2.0))
    with pytest.raises(ValueError, match="effect_sd must be > 0"):
        genjax.datasets.factor_counts(10, 20, 2, effect_sd=(1.0, 0.0))


def test_equal_programme_strengths_leave_the_principal_axes_free():
    """Why a VAE's MIG on the default synthetic set is hard to raise (factor_counts docstring): with equally strong
    programmes the factor directions are a near-degenerate principal subspace, so the top principal components are
    an arbitrary rotation of the factors; distinct strengths make them the factor axes."""

    def pca_mig(effect_sd, seed):
        adata = genjax.datasets.factor_counts(effect_sd=effect_sd, sparse=False, seed=seed)
        logx = np.log1p(adata.X / adata.X.sum(1, keepdims=True) * 1e4).astype(np.float64)
        logx -= logx.mean(0)
        _, vectors = np.linalg.eigh(logx.T @ logx)  # ascending: the last 4 are the top principal axes
        return genjax.metrics.mig(logx @ vectors[:, -4:], adata.obs[adata.uns["truth"]["factor_keys"]])

    equal, graded = pca_mig(1.5, 0), pca_mig((2.0, 1.6, 1.3, 1.0), 0)  # seeds 0-3: 0.22-0.38 and 0.72-0.78
    assert equal < 0.45 and graded > 0.6, (equal, graded)


# ---------------------------------------------------------------- the beta-VAE benchmark's protocol


def _beta_vae_benchmark():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "beta_vae.py"
    spec = importlib.util.spec_from_file_location("beta_vae_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_beta_vae_benchmark_trains_at_the_beta_it_reports():
    """The first beta-VAE table trained 50 epochs under VAE.fit's default 400-epoch KL warm-up, so its "beta = 8"
    model ended at KL weight 1 and its "beta = 0.5" at 0.06. The benchmark's fit now ends at beta, or refuses."""
    bench = _beta_vae_benchmark()
    adata = genjax.datasets.factor_counts(96, 20, 2, levels=3, seed=0)
    with pytest.raises(ValueError, match="warm-up of 400 epochs does not end within the 50-epoch run: the KL weight "
                                         "would stop near 1, not beta = 8"):
        bench.fit_vae(adata, beta=8.0, epochs=50, n_latent=2, warmup=400, seed=0)  # the first table's setting
    with pytest.raises(ValueError, match="within the 25-epoch run"):  # annealing: the warm-up is in the first half
        bench.fit_vae(adata, beta=1.0, epochs=50, n_latent=2, warmup=30, seed=0, anneal=8.0)
    vae = bench.fit_vae(adata, beta=4.0, epochs=2, n_latent=2, warmup=1, seed=0)
    assert vae.history[-1]["kl_weight"] == pytest.approx(4.0)
