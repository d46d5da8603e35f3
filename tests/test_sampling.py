"""Samplers and likelihoods against ground truth: Gaussian data N(m, S) has a closed-form score at every t.

If x0 ~ N(m, S) then x_t ~ N(alpha m, alpha^2 S + sigma^2 I), so score_t(x) = -(alpha^2 S + sigma^2 I)^{-1}
(x - alpha m). Plugged into the samplers, every sampler must reproduce m and S within Monte-Carlo error, and the
probability-flow ODE likelihood must equal the Gaussian log-density. Shapes are tiny and compiled functions are
shared (module-level score objects, same shapes) to keep the file fast on two cores.
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import genjax
from genjax import VESDE, VPSDE, SubVPSDE

D = 4
N = 3000


def _gaussian(d, seed):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=d)
    a = rng.normal(size=(d, d)) / math.sqrt(d)
    s = a @ a.T + 0.3 * np.eye(d)
    return m, s


class GaussianScore(eqx.Module):
    """Exact score of x_t when x0 ~ N(m, S); also the exact log-density and probability-flow map."""

    sde: genjax.AbstractSDE
    m: jax.Array
    lam: jax.Array
    u: jax.Array

    def __init__(self, sde, m, s):
        lam, u = np.linalg.eigh(s)
        self.sde, self.m, self.lam, self.u = sde, jnp.asarray(m, jnp.float32), jnp.asarray(lam, jnp.float32), jnp.asarray(u, jnp.float32)

    def _var(self, t):
        a, s = self.sde.alpha(t), self.sde.std(t)
        return a[..., None] ** 2 * self.lam + s[..., None] ** 2, a

    def __call__(self, x, t, cond=None):
        v, a = self._var(t)
        r = (x - a[..., None] * self.m) @ self.u
        return -(r / v) @ self.u.T


def _log_prob_np(x, m, s, a, sig):
    """log N(x; a m, a^2 S + sig^2 I) in float64 numpy."""
    cov = a**2 * s + sig**2 * np.eye(len(m))
    r = x - a * m
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * np.einsum("ni,ij,nj->n", r, np.linalg.inv(cov), r) - 0.5 * (logdet + len(m) * math.log(2 * math.pi))


def _flow_np(x, m, s, a0, s0, a1, s1):
    """Exact probability-flow map from t0 to t1 for Gaussian data: eigen-coordinates scale by their std ratio."""
    lam, u = np.linalg.eigh(s)
    r = (x - a0 * m) @ u
    return a1 * m + (r * np.sqrt((a1**2 * lam + s1**2) / (a0**2 * lam + s0**2))) @ u.T


M, S = _gaussian(D, 0)
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(sigma_min=0.01, sigma_max=20.0)}
SCORES = {k: GaussianScore(v, M, S) for k, v in SDES.items()}
T_MIN = {"vp": 1e-3, "subvp": 1e-3, "ve": 1e-4}


def _assert_moments(x, m, s, bias=0.0, z=4.5):
    """Sample mean and covariance within z standard errors (plus an allowance for discretisation bias)."""
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x))
    n = x.shape[0]
    se_mean = np.sqrt(np.diag(s) / n)
    np.testing.assert_array_less(np.abs(x.mean(0) - m), z * se_mean + bias)
    se_cov = np.sqrt((np.outer(np.diag(s), np.diag(s)) + s**2) / n)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - s), z * se_cov + bias)


# Each sampler runs on one SDE and each SDE under at least two samplers (every compile costs seconds on 2 cores).


def test_euler_maruyama_reproduces_gaussian():
    x, nfe = genjax.sample_reverse_sde(jax.random.key(1), SCORES["vp"], SDES["vp"], (N, D), 500)
    assert x.shape == (N, D) and x.dtype == jnp.float32
    assert int(nfe) == 501  # 500 steps + Tweedie denoising
    _assert_moments(x, M, S, bias=0.02)


def test_probability_flow_ode_reproduces_gaussian_backward_in_time():
    # diffrax integrates natively backwards here (t0 = 1 > t1 = t_min).
    x, nfe = genjax.sample_probability_flow_ode(jax.random.key(2), SCORES["ve"], SDES["ve"], (N, D), t_min=T_MIN["ve"])
    assert 20 < int(nfe) < 1000
    _assert_moments(x, M, S, bias=0.01)


def test_fixed_step_heun_on_edm_grid_reproduces_gaussian():
    ts = genjax.time_grid(SDES["subvp"], 25, 1e-3, kind="edm")
    assert ts[0] == 1.0 and np.isclose(ts[-1], 1e-3) and np.all(np.diff(np.asarray(ts)) < 0)
    x, nfe = genjax.sample_probability_flow_ode(jax.random.key(3), SCORES["subvp"], SDES["subvp"], (N, D),
                                                solver=diffrax.Heun(), ts=ts)
    assert int(nfe) == 2 * 25 + 1
    _assert_moments(x, M, S, bias=0.02)


def test_adaptive_shark_reproduces_gaussian_backward_in_time():
    # ShARK is a stochastic Runge-Kutta method: wrong when diffrax integrates with t0 > t1 (diffrax #598); the
    # sampler integrates the reverse SDE forward in s = 1 - t instead, which this test would catch.
    x, nfe = genjax.sample_reverse_sde(jax.random.key(4), SCORES["subvp"], SDES["subvp"], (600, D), 50,
                                       adaptive=True, rtol=1e-2, atol=1e-2)
    assert 0 < int(nfe) < 4096
    _assert_moments(x, M, S, bias=0.03)


def test_predictor_corrector_reproduces_gaussian():
    x, nfe = genjax.sample_predictor_corrector(jax.random.key(5), SCORES["vp"], SDES["vp"], (N, D), 200,
                                               snr=0.16, n_corrector=1)
    assert int(nfe) == 200 * 2 + 1
    _assert_moments(x, M, S, bias=0.03)


def test_euler_maruyama_strong_order_one_for_additive_noise():
    # Same Brownian path at every resolution (VirtualBrownianTree); n_steps is a runtime value, so one compile.
    sde, score = SDES["vp"], SCORES["vp"]
    key = jax.random.key(7)
    kw = dict(t_min=0.05, denoise=False, brownian="virtual", brownian_tol=1e-4, max_steps=1024)
    ref, _ = genjax.sample_reverse_sde(key, score, sde, (32, D), 1024, **kw)
    steps = np.array([16, 32, 64, 128])
    errs = []
    for n_steps in steps:
        x, nfe = genjax.sample_reverse_sde(key, score, sde, (32, D), int(n_steps), **kw)
        assert int(nfe) == n_steps
        errs.append(float(jnp.mean(jnp.linalg.norm(x - ref, axis=-1))))
    slope = np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert -1.3 < slope < -0.8, (slope, errs)  # additive noise: Euler-Maruyama has strong order 1


def test_log_likelihood_exact_divergence_matches_gaussian():
    d = 8
    m, s = _gaussian(d, 1)
    sde = VPSDE()
    score = GaussianScore(sde, m, s)
    x = np.random.default_rng(8).multivariate_normal(m, s, size=16)
    t_min = 1e-5
    logp = genjax.log_likelihood(jax.random.key(0), score, sde, x, divergence="exact", t_min=t_min)
    assert logp.shape == (16,)
    a0, s0, a1, s1 = (float(f(t)) for t in (t_min, 1.0) for f in (sde.alpha, sde.std))
    z1 = _flow_np(x, m, s, a0, s0, a1, s1)
    # What the estimator converges to: log p_{t_min}(x) + [log prior(z1) - log p_1(z1)] (prior mismatch at t=1).
    expected = (_log_prob_np(x, m, s, a0, s0) + np.asarray(sde.prior_log_prob(z1), np.float64)
                - _log_prob_np(z1, m, s, a1, s1))
    np.testing.assert_allclose(logp, expected, atol=5e-4, rtol=0)
    # ... which is the data density up to O(sigma(t_min)^2) and the prior mismatch (alpha(1) = 0.0066 here).
    np.testing.assert_allclose(logp, _log_prob_np(x, m, s, 1.0, 0.0), atol=0.1)


def test_log_likelihood_hutchinson_is_unbiased():
    sde, score = SDES["ve"], SCORES["ve"]
    x0 = np.random.default_rng(9).multivariate_normal(M, S, size=2)
    reps = 256
    x = np.repeat(x0, reps, axis=0)  # each point with 256 independent Rademacher probes
    t_min = 1e-4
    est = np.asarray(genjax.log_likelihood(jax.random.key(1), score, sde, x, t_min=t_min, rtol=1e-4, atol=1e-4))
    a0, s0, a1, s1 = (float(f(t)) for t in (t_min, 1.0) for f in (sde.alpha, sde.std))
    z1 = _flow_np(x0, M, S, a0, s0, a1, s1)
    exact = (_log_prob_np(x0, M, S, a0, s0) + np.asarray(sde.prior_log_prob(z1), np.float64)
             - _log_prob_np(z1, M, S, a1, s1))
    for i in range(2):
        e = est[i * reps:(i + 1) * reps]
        assert e.std() > 1e-3  # a real stochastic estimate
        assert abs(e.mean() - exact[i]) < 4.0 * e.std() / math.sqrt(reps)


_TRACES = []


def _shifted_score(x, t, cond):
    """Exact score for conditional data N(cond.covariates, I) under the VP SDE (counts its traces)."""
    _TRACES.append(1)  # Python side effect: runs only while tracing
    a = SDES["vp"].alpha(t)[:, None]
    return -(x - a * cond.covariates)


def test_conditional_sampling_under_vmap_equals_loop_and_does_not_retrace():
    sde = SDES["vp"]
    shift = jnp.asarray(np.random.default_rng(10).normal(size=(5, D)) * 3.0, jnp.float32)
    kw = dict(max_steps=50)
    keys = jax.random.split(jax.random.key(11), 3)
    cond = genjax.nn.Condition(covariates=shift)
    batched, nfes = jax.vmap(lambda k: genjax.sample_reverse_sde(k, _shifted_score, sde, (5, D), 50, cond=cond, **kw))(keys)
    looped = [genjax.sample_reverse_sde(keys[0], _shifted_score, sde, (5, D), 50, cond=cond, **kw)[0]]
    n_traced = len(_TRACES)
    # new keys, new condition values and a new number of steps (a runtime value below max_steps): no retrace
    looped += [genjax.sample_reverse_sde(k, _shifted_score, sde, (5, D), 50, cond=cond, **kw)[0] for k in keys[1:]]
    other, nfe = genjax.sample_reverse_sde(keys[0], _shifted_score, sde, (5, D), 20,
                                           cond=genjax.nn.Condition(covariates=-shift), **kw)
    assert len(_TRACES) == n_traced and int(nfe) == 21
    np.testing.assert_allclose(batched, np.stack(looped), rtol=1e-5, atol=1e-5)
    assert nfes.tolist() == [51, 51, 51]
    # each point was drawn from N(its own shift, I)
    resid = np.asarray(batched) - np.asarray(shift)[None]
    assert abs(resid.mean()) < 0.3 and 0.7 < resid.std() < 1.3
    assert np.all(np.isfinite(other))


def test_reported_nfe_counts_every_score_evaluation():
    calls = []
    sde = SDES["vp"]

    def counting_score(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return SCORES["vp"](x, t)

    x, nfe = genjax.sample_probability_flow_ode(jax.random.key(0), counting_score, sde, (1, D), rtol=1e-4, atol=1e-4)
    jax.block_until_ready(x)
    assert int(nfe) == len(calls)  # adaptive Tsit5: 1 (FSAL) + 6 per step + 1 (denoise)


def test_bad_inputs_raise_before_compute():
    sde, score = SDES["vp"], SCORES["vp"]
    with pytest.raises(ValueError, match="shape"):
        genjax.sample_reverse_sde(jax.random.key(0), score, sde, (10,))
    with pytest.raises(ValueError, match="t_min"):
        genjax.sample_probability_flow_ode(jax.random.key(0), score, sde, (10, D), t_min=0.0)
    with pytest.raises(ValueError, match="n_steps"):
        genjax.sample_reverse_sde(jax.random.key(0), score, sde, (10, D), 0)
    with pytest.raises(ValueError, match="max_steps"):
        genjax.sample_reverse_sde(jax.random.key(0), score, sde, (10, D), 100, max_steps=50)
    with pytest.raises(ValueError, match="brownian"):
        genjax.sample_reverse_sde(jax.random.key(0), score, sde, (10, D), adaptive=True, brownian="unsafe")
    with pytest.raises(ValueError, match="leading size"):
        genjax.sample_reverse_sde(jax.random.key(0), score, sde, (10, D), cond=genjax.nn.Condition(covariates=jnp.ones((9, 2))))
    with pytest.raises(ValueError, match="decreasing"):
        genjax.sample_probability_flow_ode(jax.random.key(0), score, sde, (10, D), ts=jnp.linspace(1e-3, 1, 5))
    with pytest.raises(ValueError, match="snr"):
        genjax.sample_predictor_corrector(jax.random.key(0), score, sde, (10, D), snr=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        genjax.log_likelihood(jax.random.key(0), score, sde, jnp.array([[0.0, jnp.nan, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="divergence"):
        genjax.log_likelihood(jax.random.key(0), score, sde, jnp.zeros((1, D)), divergence="skilling")
