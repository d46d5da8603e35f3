"""carry_counts: the Gamma-Poisson coupling carries NB / Poisson draws exactly to the target distribution (checked
against scipy's pmf, and against a wrong target so the check can fail), is the identity for no change, and its
conditional expectation is right."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from genjax.likelihoods import carry_counts

N = 40000


def _chi2_pvalue(x, pmf, bins=25):
    """Chi-square goodness of fit of integer draws ``x`` to ``pmf`` (a callable), the tail pooled."""
    edges = np.arange(bins)
    observed = np.array([(x == k).sum() for k in edges[:-1]] + [(x >= edges[-1]).sum()])
    p = np.array([pmf(k) for k in edges[:-1]])
    expected = N * np.append(p, 1 - p.sum())
    keep = expected > 5
    chi2 = (((observed - expected) ** 2 / expected)[keep]).sum()
    return stats.chi2(keep.sum() - 1).sf(chi2)


def nb(mu, theta):
    return stats.nbinom(theta, theta / (theta + mu))


@pytest.mark.parametrize("mu1", [1.2, 11.0])  # down (thinning) and up (posterior-rate increments)
def test_nb_draws_are_carried_exactly_to_the_target(mu1):
    mu0, theta = 4.0, 1.5
    x = jnp.asarray(nb(mu0, theta).rvs(N, random_state=0), jnp.float32)
    carried, _ = jax.jit(carry_counts)(jax.random.key(1), x, mu0, mu1, theta)
    carried = np.asarray(carried)
    assert np.all(carried == np.round(carried)) and carried.min() >= 0
    assert _chi2_pvalue(carried, nb(mu1, theta).pmf) > 1e-3
    assert _chi2_pvalue(carried, nb(mu1, 3 * theta).pmf) < 1e-6  # another dispersion is told apart
    r = np.corrcoef(np.asarray(x), carried)[0, 1]
    assert r > 0.6, r  # the source's own noise is carried, not redrawn


def test_poisson_draws_are_carried_exactly_and_no_change_is_the_identity():
    x = jnp.asarray(stats.poisson(6.0).rvs(N, random_state=2), jnp.float32)
    for mu1 in (2.5, 15.0):
        carried, _ = carry_counts(jax.random.key(3), x, 6.0, mu1)
        assert _chi2_pvalue(np.asarray(carried), stats.poisson(mu1).pmf) > 1e-3
    same, expected = carry_counts(jax.random.key(4), x, 6.0, 6.0, 2.0)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(expected), np.asarray(x))


def test_expectation_given_the_source_counts():
    """E[x' | x]: r x when thinning, x + (r - 1) (theta + x) / (theta / mu0 + 1) when adding."""
    x = jnp.repeat(jnp.array([0.0, 3.0, 40.0]), N)
    mu0 = jnp.repeat(jnp.array([2.0, 5.0, 30.0]), N)
    for mu1_factor in (0.3, 2.5):
        carried, expected = carry_counts(jax.random.key(5), x, mu0, mu0 * mu1_factor, 0.8)
        carried, expected = np.asarray(carried).reshape(3, N), np.asarray(expected).reshape(3, N)
        np.testing.assert_allclose(expected[:, 0], expected[:, -1])
        if mu1_factor < 1:
            np.testing.assert_allclose(expected[:, 0], mu1_factor * np.array([0.0, 3.0, 40.0]), rtol=1e-6)
        else:
            lam = (0.8 + np.array([0.0, 3.0, 40.0])) / (0.8 / np.array([2.0, 5.0, 30.0]) + 1)
            np.testing.assert_allclose(expected[:, 0], np.array([0.0, 3.0, 40.0]) + 1.5 * lam, rtol=1e-5)
        se = carried.std(1) / np.sqrt(N) + 1e-6
        assert np.all(np.abs(carried.mean(1) - expected[:, 0]) < 5 * se), (carried.mean(1), expected[:, 0])


def test_bad_arguments_are_named():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="carry_counts.*x"):
        carry_counts(key, jnp.array([1.0, 2.5]), 1.0, 2.0, 1.0)
    with pytest.raises(ValueError, match="carry_counts.*mu0"):
        carry_counts(key, jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]), 2.0)
    with pytest.raises(ValueError, match="carry_counts.*theta"):
        carry_counts(key, jnp.array([1.0, 2.0]), 1.0, 2.0, jnp.array([1.0, np.nan]))
