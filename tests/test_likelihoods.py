"""Behaviour of the count likelihood functions: closed forms, dtypes, broadcasting, transformations, bad input,
samplers and moments. Accuracy over the parameter range is in test_likelihood_accuracy.py."""

import functools

import chex
import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
import scipy.special
import scipy.stats

import genjax
from genjax import likelihoods as special

X = np.array([0.0, 1.0, 3.0, 10.0, 250.0])
MU = np.array([0.5, 2.0, 3.0, 40.0, 200.0])
THETA = np.array([0.3, 1.0, 5.0, 2e3, 1e6])
Z = np.array([-3.0, 0.0, 1.5, -10.0, 10.0])


def scipy_nb(x, mu, theta):
    return scipy.stats.nbinom.logpmf(x, theta, theta / (theta + mu))


def scipy_zinb(x, mu, theta, z):
    pi = scipy.special.expit(z)
    nb = scipy_nb(x, mu, theta)
    return np.where(x == 0, np.log(pi + (1 - pi) * np.exp(nb)), np.log1p(-pi) + nb)


# ---------------------------------------------------------------------------------------------------------------
# values against scipy (float64) and consistency between parameterisations
# ---------------------------------------------------------------------------------------------------------------


def test_against_scipy_float64():
    with jax.enable_x64(True):
        nb = genjax.nb_log_prob(X, MU, THETA)
        nb_log = genjax.nb_log_prob_log(X, np.log(MU), np.log(THETA))
        zinb = genjax.zinb_log_prob(X, MU, THETA, Z)
        zinb_log = genjax.zinb_log_prob_log(X, np.log(MU), np.log(THETA), Z)
        pois = genjax.poisson_log_prob(X, MU)
        pois_log = genjax.poisson_log_prob_log(X, np.log(MU))
    assert nb.dtype == jnp.float64
    # scipy's own error reaches ~5e-11 at theta = 1e6 (it works with p = theta / (theta + mu))
    np.testing.assert_allclose(nb, scipy_nb(X, MU, THETA), rtol=1e-9)
    np.testing.assert_allclose(nb_log, scipy_nb(X, MU, THETA), rtol=1e-9)
    np.testing.assert_allclose(zinb, scipy_zinb(X, MU, THETA, Z), rtol=1e-9)
    np.testing.assert_allclose(zinb_log, scipy_zinb(X, MU, THETA, Z), rtol=1e-9)
    np.testing.assert_allclose(pois, scipy.stats.poisson.logpmf(X, MU), rtol=1e-12)
    np.testing.assert_allclose(pois_log, scipy.stats.poisson.logpmf(X, MU), rtol=1e-12)


def test_pmf_sums_to_one():
    x = np.arange(0, 300.0)  # the support used by the sampler tests (one compilation)
    for mu, theta, z in [(3.0, 0.5, -1.0), (20.0, 1e7, 2.0), (1e-3, 1e-2, 0.0)]:
        assert np.exp(genjax.nb_log_prob(x, mu, theta)).sum() == pytest.approx(1.0, abs=1e-5)
        assert np.exp(genjax.zinb_log_prob(x, mu, theta, z)).sum() == pytest.approx(1.0, abs=1e-5)
        assert np.exp(genjax.poisson_log_prob(x, mu)).sum() == pytest.approx(1.0, abs=1e-5)


def test_limits():
    # theta -> inf is Poisson; mu = 0 is a point mass at 0; zero inflation -inf is NB.
    np.testing.assert_allclose(genjax.nb_log_prob(X, MU, 1e8), genjax.poisson_log_prob(X, MU), rtol=2e-5)
    np.testing.assert_array_equal(genjax.nb_log_prob(np.array([0.0, 1.0]), 0.0, 2.0), [0.0, -np.inf])
    np.testing.assert_array_equal(genjax.poisson_log_prob(np.array([0.0, 1.0]), 0.0), [0.0, -np.inf])
    np.testing.assert_allclose(
        genjax.zinb_log_prob(X, MU, THETA, -60.0), genjax.nb_log_prob(X, MU, THETA), rtol=1e-6
    )


def test_log_parameterisation_matches():
    lp = genjax.nb_log_prob(X, MU, THETA)
    np.testing.assert_allclose(genjax.nb_log_prob_log(X, np.log(MU), np.log(THETA)), lp, rtol=2e-6)
    # log_mu = -inf is mu = 0
    np.testing.assert_array_equal(genjax.nb_log_prob_log(np.array([0.0, 2.0]), -np.inf, 0.0), [0.0, -np.inf])


# ---------------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------------


def test_building_blocks_against_mpmath():
    z = np.array([1e-4, 0.3, 1.0, 2.5, 5.9, 6.0, 6.1, 9.99, 10.0, 37.0, 1e4, 1e8])
    x = np.array([0.0, 1.0, 2.0, 7.0, 1e5])
    with mp.workdps(30):
        stir = [
            mp.loggamma(v + 1) - (v + 0.5) * mp.log(v) + v - mp.log(2 * mp.pi) / 2 for v in map(mp.mpf, z)
        ]
        pairs = [(a, t) for a in x for t in z]
        poch = [
            mp.loggamma(a + t) - mp.loggamma(t) - a * mp.log(t)
            for a, t in map(lambda p: map(mp.mpf, p), pairs)
        ]
        dphi = [
            mp.digamma(a + t) - mp.digamma(t) - mp.log1p(a / t)
            for a, t in map(lambda p: map(mp.mpf, p), pairs)
        ]
        ref_count = [
            mp.loggamma(n + 1) - (n + 0.5) * mp.log(n) + n - mp.log(2 * mp.pi) / 2
            for n in map(mp.mpf, range(1, 40))
        ]
    a, t = (np.array(v) for v in zip(*pairs, strict=True))
    for dtype, tol in [(np.float32, 3e-6), (np.float64, 1e-13)]:
        with jax.enable_x64(dtype == np.float64):
            s = np.asarray(jax.jit(special.stirlerr)(jnp.asarray(z, dtype)))
            sc = np.asarray(jax.jit(special.stirlerr_count)(jnp.asarray(np.arange(1.0, 40.0), dtype)))
            a_, t_ = jnp.asarray(a, dtype), jnp.asarray(t, dtype)
            p = np.asarray(jax.jit(special.log_pochhammer_ratio)(a_, t_))
            d = np.asarray(jax.jit(special.delta_digamma_log)(a_, t_))
        np.testing.assert_allclose(s, [float(v) for v in stir], atol=tol, rtol=tol)
        np.testing.assert_allclose(sc, [float(v) for v in ref_count], rtol=10 * tol)
        np.testing.assert_allclose(p, [float(v) for v in poch], rtol=tol, atol=tol)
        np.testing.assert_allclose(d, [float(v) for v in dphi], rtol=10 * tol, atol=1e-30)


# ---------------------------------------------------------------------------------------------------------------
# dtypes, broadcasting, transformations
# ---------------------------------------------------------------------------------------------------------------


def test_dtypes():
    x32 = jnp.asarray(X, jnp.float32)
    assert genjax.nb_log_prob(x32, 2.0, 3.0).dtype == jnp.float32
    assert genjax.nb_log_prob(X.astype(np.int32), 2, 3).dtype == jnp.float32  # integer counts and params
    assert genjax.zinb_log_prob_log(x32, 0.0, 0.0, 0.0).dtype == jnp.float32
    with jax.enable_x64(True):
        assert genjax.nb_log_prob(X, 2.0, 3.0).dtype == jnp.float64
        assert genjax.poisson_log_prob_log(jnp.asarray(X), 0.0).dtype == jnp.float64


def test_broadcasting():
    x = jnp.arange(12.0).reshape(3, 4)
    log_theta = jnp.linspace(-2.0, 5.0, 4)  # per gene
    log_mu = jnp.linspace(-3.0, 3.0, 3)[:, None]  # per cell
    out = genjax.nb_log_prob_log(x, log_mu, log_theta)
    assert out.shape == (3, 4)
    full = genjax.nb_log_prob_log(x, jnp.broadcast_to(log_mu, (3, 4)), jnp.broadcast_to(log_theta, (3, 4)))
    np.testing.assert_array_equal(out, full)
    assert genjax.zinb_log_prob(x, 1.0, jnp.ones(4), jnp.zeros((3, 1))).shape == (3, 4)
    assert genjax.nb_variance(jnp.ones(3), jnp.ones((2, 1))).shape == (2, 3)
    assert genjax.nb_mean(jnp.ones(3), jnp.ones((2, 1))).shape == (2, 3)
    assert genjax.zinb_mean(1.0, jnp.ones(3), 0.0).shape == (3,)


def test_jit_vmap_and_no_retrace():
    x, lm, lt, z = (jnp.asarray(a, jnp.float32) for a in (X, np.log(MU), np.log(THETA), Z))
    eager = genjax.zinb_log_prob_log(x, lm, lt, z)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss(lm, lt, z):
        return -genjax.zinb_log_prob_log(x, lm, lt, z).sum()

    np.testing.assert_allclose(-loss(lm, lt, z), eager.sum(), rtol=1e-6)
    loss(lm + 1.0, lt, z)  # second call with new values: no retrace
    per_row = jax.vmap(genjax.zinb_log_prob_log)(x, lm, lt, z)
    loop = jnp.stack([genjax.zinb_log_prob_log(x[i], lm[i], lt[i], z[i]) for i in range(len(X))])
    np.testing.assert_allclose(per_row, loop, rtol=1e-6)
    np.testing.assert_allclose(per_row, eager, rtol=1e-6)


def test_gradient_closed_forms():
    # d/dmu log NB = x/mu - (x + theta)/(theta + mu); d/dtheta via digamma; Poisson: x/rate - 1.
    with jax.enable_x64(True):
        g_mu, g_theta = jax.vmap(jax.grad(genjax.nb_log_prob, argnums=(1, 2)))(X, MU, THETA)
        g_rate = jax.vmap(jax.grad(genjax.poisson_log_prob, argnums=1))(X, MU)
        g_log_rate = jax.vmap(jax.grad(genjax.poisson_log_prob_log, argnums=1))(X, np.log(MU))
        g_x = jax.grad(genjax.nb_log_prob)(3.0, 2.0, 1.0)
    np.testing.assert_allclose(g_mu, X / MU - (X + THETA) / (THETA + MU), rtol=1e-10)
    ref = scipy.special.digamma(X + THETA) - scipy.special.digamma(THETA) + np.log(THETA / (THETA + MU))
    ref = ref + 1 - (THETA + X) / (THETA + MU)
    np.testing.assert_allclose(g_theta, ref, rtol=1e-8, atol=1e-13)
    np.testing.assert_allclose(g_rate, X / MU - 1, rtol=1e-12)
    np.testing.assert_allclose(g_log_rate, X - MU, rtol=1e-12)
    assert float(g_x) == 0.0  # counts are data


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------

BAD_INPUT = [
    (genjax.nb_log_prob, ([0.0, -2.0], 1.0, 1.0), r"nb_log_prob: x .*found -2.0 at index \(1,\)"),
    (genjax.nb_log_prob, ([[0.0, 1.5]], 1.0, 1.0), r"x must be non-negative integers.*1.5 at index \(0, 1\)"),
    (genjax.nb_log_prob, ([np.nan], 1.0, 1.0), r"x .*found nan at index \(0,\)"),
    (genjax.nb_log_prob, (1.0, [1.0, -0.1], 1.0), r"mu must be finite and >= 0; found -0.1 at index \(1,\)"),
    (genjax.nb_log_prob, (1.0, 1.0, [2.0, 0.0]), r"theta must be finite and > 0; found 0.0 at index \(1,\)"),
    (genjax.nb_log_prob, (1.0, 1.0, np.inf), r"theta .*found inf at index \(\)"),
    (genjax.nb_log_prob_log, (1.0, np.nan, 0.0), r"nb_log_prob_log: log_mu .*found nan"),
    (genjax.nb_log_prob_log, (-1.0, 0.0, 0.0), r"nb_log_prob_log: x .*found -1.0"),
    (
        genjax.zinb_log_prob,
        (1.0, 1.0, 1.0, [0.0, np.nan]),
        r"zi_logits must be finite; found nan at index \(1,\)",
    ),
    (genjax.zinb_log_prob_log, (1.0, 0.0, [0.0, np.inf], 0.0), r"log_theta must be finite; found inf"),
    (genjax.poisson_log_prob, (1.0, -1.0), r"poisson_log_prob: rate must be finite and >= 0; found -1.0"),
    (genjax.poisson_log_prob_log, (0.5, 0.0), r"poisson_log_prob_log: x .*found 0.5"),
]


@pytest.mark.parametrize("fn, args, message", BAD_INPUT)
def test_bad_input_raises(fn, args, message):
    with pytest.raises(ValueError, match=message):
        fn(*(np.asarray(a) for a in args))


def test_bad_sampler_parameters_raise():
    key = jax.random.key(0)
    with pytest.raises(
        ValueError, match=r"sample_nb: mu must be finite and >= 0; found -1.0 at index \(2,\)"
    ):
        genjax.sample_nb(key, jnp.array([1.0, 2.0, -1.0]), 1.0)
    with pytest.raises(ValueError, match=r"sample_zinb: theta .*found 0.0"):
        genjax.sample_zinb(key, 1.0, 0.0, 0.0)


def test_invalid_input_is_nan_under_jit():
    x = jnp.array([-1.0, 1.5, jnp.nan, 2.0, 2.0, 2.0, 3.0])
    mu = jnp.array([1.0, 1.0, 1.0, -1.0, 1.0, jnp.nan, 1.0])
    theta = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    nan_expected = np.array([True] * 6 + [False])
    for fn, args in [
        (genjax.nb_log_prob, (x, mu, theta)),
        (genjax.zinb_log_prob, (x, mu, theta, 0.0)),
        (genjax.nb_log_prob_log, (x, jnp.log(mu), jnp.log(theta))),
        (genjax.poisson_log_prob, (x, mu)),
    ]:
        out = jax.jit(fn)(*args)
        expected = (
            nan_expected
            if fn is not genjax.poisson_log_prob
            else np.isnan(mu) | (mu < 0) | (x != np.floor(x))
        )
        expected = expected | ~(np.asarray(x) >= 0)
        np.testing.assert_array_equal(np.isnan(out), expected, err_msg=fn.__name__)
    # validate_args=False on concrete input: no error, NaN where invalid
    assert np.isnan(genjax.nb_log_prob(-1.0, 1.0, 1.0, validate_args=False))


# ---------------------------------------------------------------------------------------------------------------
# sampling and moments (all cases drawn in one call per sampler: the samplers compile slowly, jax.random.poisson)
# ---------------------------------------------------------------------------------------------------------------

N_DRAWS = 20_000
NB_CASES = [(3.0, 2.0), (50.0, 0.5), (7.0, 1e8), (0.2, 1e-4), (0.0, 3.0), (10.0, 1e-4), (1e12, 1e8)]
ZINB_CASES = [(3.0, 2.0, 0.5), (5.0, 2.0, 30.0)]


@functools.cache
def nb_draws():
    mu, theta = (np.repeat(np.array(c, np.float32), N_DRAWS) for c in zip(*NB_CASES, strict=True))
    draws = np.asarray(genjax.sample_nb(jax.random.key(11), mu, theta))
    return dict(zip(NB_CASES, draws.reshape(len(NB_CASES), N_DRAWS), strict=True))


@functools.cache
def zinb_draws():
    mu, theta, z = (np.repeat(np.array(c, np.float32), N_DRAWS) for c in zip(*ZINB_CASES, strict=True))
    draws = np.asarray(genjax.sample_zinb(jax.random.key(12), mu, theta, z))
    return dict(zip(ZINB_CASES, draws.reshape(len(ZINB_CASES), N_DRAWS), strict=True))


def _chi_square_pvalue(draws, log_pmf, support_max):
    """Pearson test of integer draws against a pmf on 0..support_max - 1 plus a tail cell; sparse cells pooled."""
    counts = np.bincount(np.minimum(draws.astype(int), support_max), minlength=support_max + 1)
    probs = np.exp(np.asarray(log_pmf, np.float64)[:support_max])
    probs = np.append(probs, max(1.0 - probs.sum(), 0.0))
    expected = probs * len(draws)
    keep = expected > 5
    obs, exp = counts[keep], expected[keep]
    if (~keep).any() and expected[~keep].sum() > 0:
        obs, exp = np.append(obs, counts[~keep].sum()), np.append(exp, expected[~keep].sum())
    return scipy.stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


@pytest.mark.parametrize("mu, theta", NB_CASES[:4])
def test_sample_nb_distribution(mu, theta):
    draws = nb_draws()[(mu, theta)]
    assert draws.dtype == np.float32 and (draws >= 0).all() and (draws == np.floor(draws)).all()
    support = np.arange(0.0, 300.0)
    assert _chi_square_pvalue(draws, genjax.nb_log_prob(support, mu, theta), 299) > 1e-3
    if theta >= 1e8:  # the Poisson limit
        assert _chi_square_pvalue(draws, genjax.poisson_log_prob(support, mu), 299) > 1e-3


def test_sample_moments():
    draws = nb_draws()[(3.0, 2.0)]
    assert draws.mean() == pytest.approx(float(genjax.nb_mean(3.0, 2.0)), rel=0.04)
    assert draws.var() == pytest.approx(float(genjax.nb_variance(3.0, 2.0)), rel=0.08)
    zi = zinb_draws()[(3.0, 2.0, 0.5)]
    assert zi.mean() == pytest.approx(float(genjax.zinb_mean(3.0, 2.0, 0.5)), rel=0.05)
    assert zi.var() == pytest.approx(float(genjax.zinb_variance(3.0, 2.0, 0.5)), rel=0.1)
    p0 = float(np.exp(genjax.zinb_log_prob(0.0, 3.0, 2.0, 0.5)))
    assert (zi == 0).mean() == pytest.approx(p0, abs=4 * np.sqrt(p0 * (1 - p0) / len(zi)))
    # closed forms of the moments
    assert float(genjax.nb_variance(3.0, 2.0)) == pytest.approx(3.0 + 9.0 / 2.0)
    pi = scipy.special.expit(0.5)
    assert float(genjax.zinb_variance(3.0, 2.0, 0.5)) == pytest.approx(
        (1 - pi) * 3 * (1 + pi * 3 + 3 / 2), rel=1e-6
    )


def test_sample_edge_cases():
    draws = nb_draws()
    assert (draws[(0.0, 3.0)] == 0).all()
    big = draws[(1e12, 1e8)]  # rates beyond int32: normal approximation, no overflow
    assert np.isfinite(big).all() and abs(big.mean() / 1e12 - 1) < 1e-3
    tiny_theta = draws[(10.0, 1e-4)]
    p_nonzero = -np.expm1(float(genjax.nb_log_prob(0.0, 10.0, 1e-4)))  # ~1.15e-3
    assert np.isfinite(tiny_theta).all()
    assert abs((tiny_theta > 0).mean() - p_nonzero) < 5 * np.sqrt(p_nonzero / N_DRAWS)
    assert (zinb_draws()[(5.0, 2.0, 30.0)] == 0).all()


def test_sample_shapes_and_keys():
    key = jax.random.key(0)
    mu, theta = jnp.array([1.0, 5.0, 20.0]), jnp.array([2.0])  # as in test_distributions.py (one compilation)
    a = genjax.sample_nb(key, mu, theta, (4, 3))  # parameters broadcast to the requested shape
    assert a.shape == (4, 3)
    np.testing.assert_array_equal(a, genjax.sample_nb(key, mu, theta, (4, 3)))
    assert not np.array_equal(a, genjax.sample_nb(jax.random.key(1), mu, theta, (4, 3)))
