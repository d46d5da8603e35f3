"""The baseline offset of PerturbationModel: the Poisson quantile against scipy, the count mover against its
target, the baseline changes against the baselines themselves, the weight's least-squares choice, and the
model's predictions at weight 0 against mean-delta and additive."""

import numpy as np
import pytest
from scipy import stats
from test_perturbation_model import _counts, fitted  # noqa: F401 (the fixture)

import genjax
from genjax.data import PerturbationSpec
from genjax.models import BaselineOffset, binomial_quantile, match_log1p_mean, poisson_quantile


def test_binomial_quantile_is_scipys_and_monotone_in_p():
    rng = np.random.default_rng(3)
    u = rng.uniform(size=20000)
    n = np.concatenate([rng.integers(0, 64, 15000), rng.integers(64, 400, 5000)])  # recurrence and scipy paths
    p = np.concatenate([rng.uniform(0, 1, 19000), np.full(1000, 0.995)])
    np.testing.assert_array_equal(binomial_quantile(u, n, p), stats.binom.ppf(u, n, p).astype(np.int64))
    grid = np.linspace(0.0, 0.99, 60)
    draws = binomial_quantile(np.broadcast_to(u[:40, None], (40, 60)), np.full((40, 60), 12),
                              np.broadcast_to(grid, (40, 60)))
    assert (np.diff(draws, axis=1) >= 0).all() and draws.max() <= 12


def test_poisson_quantile_is_scipys_and_monotone_in_the_rate():
    rng = np.random.default_rng(0)
    u = rng.uniform(size=4000)
    lam = np.concatenate([rng.uniform(0, 3, 2000), rng.uniform(3, 60, 2000)])  # recurrence and scipy ranges
    np.testing.assert_array_equal(poisson_quantile(u, lam), stats.poisson.ppf(u, lam).astype(np.int64))
    grid = np.linspace(0.0, 40.0, 81)
    draws = poisson_quantile(np.broadcast_to(u[:50, None], (50, 81)), np.broadcast_to(grid, (50, 81)))
    assert (np.diff(draws, axis=1) >= 0).all()
    assert poisson_quantile(np.array([0.3]), np.array([0.0]))[0] == 0


def test_match_log1p_mean_reaches_its_target_and_keeps_counts():
    rng = np.random.default_rng(1)
    mu = rng.gamma(0.6, 3.0, size=(1, 40)) * rng.uniform(0.5, 2.0, size=(600, 1))
    x = rng.negative_binomial(3, 3 / (3 + mu)).astype(np.float64)
    before = genjax.data.normalize_log1p(x).mean(0)
    target = before + rng.normal(0, 0.4, size=40)
    target = np.maximum(target, 0.05)
    moved, expected = match_log1p_mean(x, mu, target, seed=0, max_solve_cells=600, passes=3)
    assert np.all(moved == np.round(moved)) and moved.min() >= 0 and expected.shape == x.shape
    after = genjax.data.normalize_log1p(moved).mean(0)
    np.testing.assert_allclose(after, target, atol=0.03)
    # the target equal to the current mean leaves the counts (nearly) where they were
    same, _ = match_log1p_mean(x, mu, before, seed=0)
    assert np.mean(same != x) < 0.02
    with pytest.raises(ValueError, match="must be"):
        match_log1p_mean(x, mu, target[:5])


def test_offset_changes_are_mean_delta_and_additive():
    data = _counts()
    train = data[~((data.obs.condition == "A+B") & (data.obs.cell_type == "y"))].copy()
    spec = PerturbationSpec("condition", "ctrl", ("cell_type",))
    stats_ = genjax.models.NoChange(spec).fit(train).stats
    off = BaselineOffset(spec, list(stats_.keys), stats_.means)
    src = train[(train.obs.condition == "ctrl") & (train.obs.cell_type == "y")].copy()
    s = genjax.data.normalize_log1p(src.X).mean(0)
    md = genjax.models.MeanDelta(spec).fit(train)
    np.testing.assert_allclose(s + off.carried("A+B", ("y",)), md.predict_mean(src, "A+B"), atol=1e-5)
    additive = genjax.models.Additive(spec).fit(train)
    np.testing.assert_allclose(s + off.composed("A+B", ("y",)), additive.predict_mean(src, "A+B"), atol=1e-5)
    assert off.baseline("A", ("y",), "measured") is None and off.carried("C", ("x",)) is None
    back = BaselineOffset.from_meta(spec, off.meta(), off.means)
    np.testing.assert_array_equal(back.composed("A+B", ("y",)), off.composed("A+B", ("y",)))


def test_weight_is_the_least_squares_shrinkage():
    rng = np.random.default_rng(0)
    truth, noise = rng.normal(size=(5, 30)), rng.normal(size=(5, 30))
    choose = BaselineOffset.choose_weight
    assert choose([(t, t + 2 * e, t) for t, e in zip(truth, noise, strict=True)]) == 0.0  # baseline right
    assert choose([(t + 2 * e, t, t) for t, e in zip(truth, noise, strict=True)]) == 1.0  # model right
    assert choose([(t - e, t + e, t) for t, e in zip(truth, noise, strict=True)]) == pytest.approx(0.5)
    assert choose([]) == 1.0
    # the closed form is the minimiser over a grid
    cases = [(t, t + e, t + 0.3 * e + 0.1 * rng.normal(size=30)) for t, e in zip(truth, noise, strict=True)]
    grid = np.linspace(0, 1, 1001)
    errors = [sum(float((((1 - a) * b + a * m) - o) @ (((1 - a) * b + a * m) - o)) for b, m, o in cases)
              for a in grid]
    assert choose(cases) == pytest.approx(grid[int(np.argmin(errors))], abs=1e-3)


def test_left_out_shifts_predict_training_conditions_without_their_cells():
    from test_perturbation_model import _latent_case

    r, labels, covs = _latent_case()
    spec = PerturbationSpec("condition", "ctrl", ("cell_type",))
    resp = genjax.models.LatentResponse.fit(r, labels, covs, spec, "scgen")
    c1 = resp.covariate_index(("t1",))
    shift, rule = resp.left_out_shift("B", c1)
    mean = {(p, t): r[(labels == p) & (covs[:, 0] == t)].mean(0) for p in ("ctrl", "B") for t in ("t0", "t2", "t3")}
    expected = np.mean([mean["B", t] - mean["ctrl", t] for t in ("t0", "t2", "t3")], axis=0)
    assert rule == "carried"
    np.testing.assert_allclose(shift, expected, atol=1e-12)
    c0 = resp.covariate_index(("t0",))
    shift, rule = resp.left_out_shift("A+B", c0)  # doubles only in t0: composed from the members
    assert rule == "composed"
    np.testing.assert_allclose(shift, resp.shift("A", ("t0",))[0] + resp.shift("B", ("t0",))[0], atol=1e-12)


def test_weight_zero_predicts_the_baseline_and_the_offset_survives_saving(fitted, tmp_path):  # noqa: F811
    data, pm = fitted
    spec = pm.spec
    train = pm.adata
    assert set(pm.offset.weights) == {"carried", "composed"} and pm.offset.n_cases["carried"] >= 3
    assert all(0.0 <= a <= 1.0 for a in pm.offset.weights.values())
    src = data[(data.obs.condition == "ctrl") & (data.obs.cell_type == "y")].copy()
    pred = pm.predict(src, "A+B", n_per_cell=30, correction_weight=0.0)  # carried from x to y
    assert pred.uns["correction_weight"] == {"y": 0.0}
    mean_delta = genjax.models.MeanDelta(spec).fit(train).predict_mean(src, "A+B")
    errors = {a: np.abs(pm.predict_mean(src, "A+B", correction_weight=a) - mean_delta).mean() for a in (0, 0.5, 1)}
    # weight 0 is the baseline up to what no cells can do: 30 genes whose log-space targets cannot all hold
    # under one normalisation per cell (a common shift of ~0.1 here; ~0.02 on Kang's 2000 genes)
    assert errors[0] < 0.15 and errors[0] < 0.2 * errors[1] and errors[0] < errors[0.5] < errors[1], errors
    got = genjax.data.normalize_log1p(pred.X).mean(0)
    assert np.abs(got - mean_delta).mean() < 0.15
    assert pm.predict(src, "A", noise="model").uns["correction_weight"] == {}  # measured in y: no offset
    with pytest.raises(ValueError, match="correction_weight"):
        pm.predict(src, "A+B", correction_weight=1.5)
    pm.save(tmp_path / "pm")
    back = genjax.PerturbationModel.load(tmp_path / "pm")
    assert back.offset.weights == pm.offset.weights
    np.testing.assert_array_equal(back.predict(src, "A+B", n_per_cell=2, seed=4).X,
                                  pm.predict(src, "A+B", n_per_cell=2, seed=4).X)


def test_local_weight_follows_the_basal_state_where_cross_validation_prefers_it():
    """Model right for cell types near the origin, the baseline right far from it: leave-one-case-out chooses a
    finite bandwidth and the weight follows the target's basal state; with no such structure, one weight."""
    rng = np.random.default_rng(0)
    spec = PerturbationSpec("condition", "ctrl", ("cell_type",))
    basal = np.array([[0.0, 0.0], [0.3, 0.0], [0.0, 0.3], [10.0, 0.0], [10.3, 0.0], [10.0, 0.3]])

    def case(c, model_right):
        o = rng.normal(size=50)
        good, bad = o + 0.05 * rng.normal(size=50), o + rng.normal(size=50)
        return (c, bad, good, o) if model_right else (c, good, bad, o)

    off = BaselineOffset(spec, [], np.zeros((0, 50)))
    off.fit_weights({"carried": [case(c, c < 3) for c in range(6)]}, basal)
    assert np.isfinite(off.bandwidths["carried"]) and off.n_cases["carried"] == 6
    assert off.weight("carried", 0, basal) > 0.9 and off.weight("carried", 4, basal) < 0.1
    assert 0.3 < off.weights["carried"] < 0.7  # the global weight mixes both
    assert off.weight("composed", 0, basal) == 1.0 and off.bandwidths["composed"] == np.inf  # no cases
    back = BaselineOffset.from_meta(spec, off.meta(), off.means)
    assert back.weight("carried", 4, basal) == off.weight("carried", 4, basal)
    mixed = BaselineOffset(spec, [], np.zeros((0, 50)))
    mixed.fit_weights({"carried": [case(c, c % 2 == 0) for c in range(6)]}, basal)
    assert mixed.weight("carried", 0, basal) == pytest.approx(mixed.weights["carried"], abs=0.15)
