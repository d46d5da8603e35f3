"""Calibration metrics for count forecasts: randomised PIT uniform under the true NB and not under a wrong one,
coverage and reliability against hand-computed values, and the proper scores against scoringrules (an
independent implementation) and closed forms."""

import numpy as np
import pytest
from scipy import stats

from genjax import metrics


def _nb(rng, mu, theta, size):
    return rng.negative_binomial(theta, theta / (theta + mu), size=size).astype(np.float64)


def test_randomized_pit_is_uniform_for_the_true_nb_and_not_for_a_wrong_dispersion():
    rng = np.random.default_rng(0)
    mu = rng.gamma(0.7, 2.0, size=60)  # many genes near zero: a plain PIT would not be uniform
    theta = rng.uniform(0.5, 5.0, size=60)
    y = _nb(rng, mu, theta, (400, 60))
    pit = metrics.randomized_pit(metrics.nb_cdf(y - 1, mu, theta), metrics.nb_cdf(y, mu, theta), seed=1)
    assert stats.kstest(pit.ravel(), "uniform").pvalue > 0.01
    levels, observed, err = metrics.reliability_curve(pit)
    assert err < 0.01 and len(levels) == 19
    wrong = metrics.randomized_pit(metrics.nb_cdf(y - 1, mu, 20 * theta), metrics.nb_cdf(y, mu, 20 * theta))
    assert stats.kstest(wrong.ravel(), "uniform").pvalue < 1e-6  # too narrow: PIT piles at the ends
    assert metrics.reliability_curve(wrong)[2] > 0.03


def test_sample_cdf_matches_the_empirical_distribution_and_the_nb():
    rng = np.random.default_rng(2)
    samples = _nb(rng, 3.0, 2.0, (20000, 3))
    y = np.array([[0.0, 2.0, 7.0], [1.0, 0.0, 3.0]])
    below, at = metrics.sample_cdf(samples, y)
    np.testing.assert_allclose(at, (samples[:, None, :] <= y[None]).mean(0))
    np.testing.assert_allclose(below, (samples[:, None, :] <= y[None] - 1).mean(0))
    np.testing.assert_allclose(at, metrics.nb_cdf(y, 3.0, 2.0), atol=0.01)
    per_cell = np.broadcast_to(samples[:, None, :], (20000, 2, 3))
    np.testing.assert_allclose(metrics.sample_cdf(per_cell, y)[1], at)
    with pytest.raises(ValueError, match="non-negative integer"):
        metrics.sample_cdf(samples, y + 0.5)


def test_coverage_table_counts_pit_values_inside_central_intervals():
    pit = np.array([[0.5, 0.01], [0.04, 0.5], [0.96, 0.94], [0.3, 0.7]])
    tab = metrics.coverage_table(pit, levels=(0.9,))
    row = tab.iloc[0]
    assert row["pooled"] == pytest.approx(5 / 8)  # inside [0.05, 0.95]: 0.5, 0.3 | 0.5, 0.94, 0.7
    assert row["median_gene"] == pytest.approx((0.5 + 0.75) / 2)
    band_lo, band_hi = stats.binom.ppf([0.025, 0.975], 4, 0.9) / 4  # 4 cells: [0.75, 1.0]
    assert row["share_in_band"] == pytest.approx(np.mean([band_lo <= c <= band_hi for c in (0.5, 0.75)]))
    binned = metrics.coverage_table(pit, levels=(0.5, 0.9), expression=[1.0, 5.0], n_bins=2)
    assert set(binned["bin"]) - {"all"} and len(binned) == 6
    with pytest.raises(ValueError, match=r"levels must lie in \(0, 1\)"):
        metrics.coverage_table(pit, levels=(1.0,))
    with pytest.raises(ValueError, match="expression must be"):
        metrics.coverage_table(pit, expression=[1.0])


def test_scores_match_scoringrules_and_closed_forms():
    sr = pytest.importorskip("scoringrules")
    rng = np.random.default_rng(3)
    y = _nb(rng, 4.0, 1.5, (30, 5))
    samples = _nb(rng, 4.0, 1.5, (300, 5))
    mine = metrics.crps_samples(y, samples)
    theirs = np.asarray(sr.crps_ensemble(y, np.broadcast_to(samples.T[None], (30, 5, 300)), estimator="nrg"))
    np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-10)
    per_cell = np.broadcast_to(samples[:, None, :], (300, 30, 5))
    np.testing.assert_allclose(metrics.crps_samples(y, per_cell), mine, rtol=1e-10, atol=1e-10)
    mu, theta = rng.uniform(0.1, 20, size=(30, 5)), rng.uniform(0.3, 10, size=(30, 5))
    np.testing.assert_allclose(metrics.crps_nb(y, mu, theta),
                               np.asarray(sr.crps_negbinom(y, theta, mu=mu)), rtol=1e-6, atol=1e-8)
    lo, hi = np.full((30, 5), 1.0), np.full((30, 5), 6.0)
    np.testing.assert_allclose(metrics.interval_score(y, lo, hi, 0.1),
                               np.asarray(sr.interval_score(y, lo, hi, 0.1)), rtol=1e-12)
    assert metrics.interval_score(0.0, 1.0, 6.0, 0.1) == pytest.approx(5.0 + 20.0)  # width + 2/alpha * miss
    prof = rng.normal(size=(200, 4))
    obs = rng.normal(size=(7, 4))
    np.testing.assert_allclose(metrics.energy_score(obs, prof),
                               np.asarray(sr.es_ensemble(obs, np.broadcast_to(prof[None], (7, 200, 4)))),
                               rtol=1e-8)
    with pytest.raises(ValueError, match="alpha must lie"):
        metrics.interval_score(y, lo, hi, 1.5)


def test_crps_prefers_the_true_forecast():
    rng = np.random.default_rng(4)
    y = _nb(rng, 5.0, 2.0, (2000, 1))
    assert metrics.crps_nb(y, 5.0, 2.0).mean() < metrics.crps_nb(y, 5.0, 40.0).mean()
    assert metrics.crps_nb(y, 5.0, 2.0).mean() < metrics.crps_nb(y, 8.0, 2.0).mean()
