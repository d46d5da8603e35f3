"""Intervals with guarantees: integer NB intervals hold their stated mass (scipy), conformal procedures cover
at least their level on exchangeable synthetic conditions (and not much more), named errors."""

import math

import numpy as np
import pytest
from scipy import stats

from genjax.models import (
    conformal_quantile,
    conformalized_quantiles,
    count_interval,
    jackknife_plus,
    sample_interval,
    split_conformal,
)


def test_count_interval_has_its_stated_mass_and_covers_nb_draws():
    rng = np.random.default_rng(0)
    mu = np.array([0.05, 0.4, 2.0, 15.0, 300.0])
    theta = np.array([0.5, 2.0, 1.0, 10.0, 3.0])
    lo, hi, mass = count_interval(mu, theta, 0.9)
    dist = stats.nbinom(theta, theta / (theta + mu))
    np.testing.assert_allclose(mass, dist.cdf(hi) - dist.cdf(lo - 1), rtol=1e-12)
    assert (mass >= 0.9).all() and (lo == np.round(lo)).all()
    assert lo[0] == 0 and hi[0] == 0  # P(0) = 0.96 > 0.95: the only integer interval is {0}
    draws = rng.negative_binomial(theta, theta / (theta + mu), size=(40000, 5))
    np.testing.assert_allclose(((draws >= lo) & (draws <= hi)).mean(0), mass, atol=0.006)
    plo, phi, pmass = count_interval(3.0, None, 0.8)
    assert pmass == pytest.approx(stats.poisson.cdf(phi, 3.0) - stats.poisson.cdf(plo - 1, 3.0))
    slo, shi, smass = sample_interval(draws, 0.9)
    assert (smass >= 0.9).all() and np.allclose(slo, lo, atol=1) and np.allclose(shi, hi, atol=1)
    with pytest.raises(ValueError, match=r"level must lie in \(0, 1\)"):
        count_interval(mu, theta, 1.0)
    with pytest.raises(ValueError, match="theta"):
        count_interval(mu, -theta, 0.9)


def test_conformal_quantile_is_the_finite_sample_rank():
    s = np.arange(1.0, 10.0)  # 9 scores
    assert conformal_quantile(s, 0.8) == 8.0  # ceil(10 * 0.8) = 8th smallest
    assert conformal_quantile(s, 0.95) == np.inf  # ceil(10 * 0.95) = 10 > 9: no finite interval
    np.testing.assert_array_equal(conformal_quantile(np.stack([s, 2 * s], 1), 0.5), [5.0, 10.0])


def _conditions(rng, k, genes=50):
    """Exchangeable conditions: a per-condition offset around a fixed truth; a biased, noisy predictor."""
    truth = rng.normal(size=(k, genes)) * 0.5 + np.linspace(0, 3, genes)
    predicted = truth + 0.3 + rng.standard_t(4, size=(k, genes)) * 0.4
    return predicted, truth


def test_split_conformal_covers_at_least_its_level_over_conditions():
    rng = np.random.default_rng(1)
    level, k, hits = 0.8, 19, []
    for _ in range(400):
        pred, obs = _conditions(rng, k + 1)
        lo, hi = split_conformal(pred[:k], obs[:k], pred[k], level)
        hits.append((lo <= obs[k]) & (obs[k] <= hi))
    coverage = np.mean(hits)
    # marginal guarantee >= 0.8; with continuous scores at most 0.8 + 1 / (K + 1) = 0.85
    assert 0.8 - 0.01 <= coverage <= 0.85 + 0.01, coverage
    lo, hi = split_conformal(pred[:3], obs[:3], pred[3], 0.9)  # K = 3: 1 / (K + 1) = 0.25 > 0.1
    assert np.isinf(lo).all() and np.isinf(hi).all()
    with pytest.raises(ValueError, match="must be"):
        split_conformal(pred[:3], obs[:2], pred[3])


def test_jackknife_plus_covers_at_least_one_minus_two_alpha():
    rng = np.random.default_rng(2)
    level, k, hits = 0.8, 19, []
    for _ in range(300):
        pred, obs = _conditions(rng, k + 1)
        # leave-one-out predictors: the bias is estimated from the other conditions (a real refit per k)
        bias = np.array([np.delete(pred[:k] - obs[:k], i, 0).mean(0) for i in range(k)])
        residuals = np.abs(obs[:k] - (pred[:k] - bias))
        at_new = pred[k][None, :] - bias
        lo, hi = jackknife_plus(residuals, at_new, level)
        hits.append((lo <= obs[k]) & (obs[k] <= hi))
    coverage = np.mean(hits)
    assert coverage >= 1 - 2 * (1 - level) and coverage >= level - 0.02, coverage


def test_conformalized_quantiles_reach_their_level_per_expression_bin():
    rng = np.random.default_rng(3)
    mu = np.concatenate([np.full(20, 0.3), np.full(20, 30.0)])  # a low and a high expression bin
    bins = np.repeat([0, 1], 20)

    def cells(n):
        return rng.negative_binomial(2.0, 2.0 / (2.0 + mu), size=(n, 40)).astype(float)

    # a model whose bounds are too narrow: the Poisson 90% interval of an overdispersed gene
    lo0, hi0 = stats.poisson.ppf(0.05, mu), stats.poisson.ppf(0.95, mu)
    cal, new = cells(500), cells(4000)
    lo, hi = conformalized_quantiles(np.broadcast_to(lo0, cal.shape), np.broadcast_to(hi0, cal.shape), cal, lo0, hi0,
                                     0.9, cal_bins=np.broadcast_to(bins, cal.shape), bins=bins)
    before = ((new >= lo0) & (new <= hi0)).mean(0)
    after = ((new >= lo) & (new <= hi)).mean(0)
    assert before[bins == 1].mean() < 0.8  # the Poisson bounds are too narrow for the overdispersed high bin
    for b in (0, 1):
        assert after[bins == b].mean() >= 0.9 - 0.01
    # per-bin calibration: the high bin's wide correction does not spill into the low bin
    assert (hi - lo)[bins == 0].max() <= 3 and (hi - lo)[bins == 1].min() > 2 * (hi0 - lo0)[bins == 1].min()
    assert (lo == np.round(lo)).all() and (lo >= 0).all()
    with pytest.raises(ValueError, match="bin 2 has no calibration"):
        conformalized_quantiles(lo0[None], hi0[None], cal[:1], lo0, hi0, 0.9, cal_bins=bins[None], bins=bins + 1)
    assert math.isfinite(float(conformal_quantile(np.arange(100.0), 0.9)))
