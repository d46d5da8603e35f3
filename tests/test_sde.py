"""Forward SDEs: closed forms (Song et al. 2021) against mpmath, the identity g^2 = d sigma^2/dt - 2 f sigma^2,
marginals against a simulated forward SDE, priors against scipy, schedules and their inverses."""

import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.stats

import genjax
from genjax import VESDE, VPSDE, CosineSchedule, LinearSchedule, SubVPSDE

ALL = {
    "vp": VPSDE(),
    "subvp": SubVPSDE(),
    "ve": VESDE(),
    "vp-cosine": VPSDE(schedule="cosine"),
    "subvp-cosine": SubVPSDE(schedule=CosineSchedule(s=0.01, logsnr_min=-8.0)),
}


@pytest.mark.parametrize("name", list(ALL))
def test_coefficients_satisfy_the_linear_sde_identities(name):
    sde = ALL[name]

    @jax.jit  # one compile instead of dozens of eager float64 kernels
    def quantities(t):
        d = lambda fn: jax.vmap(jax.grad(fn))(t)
        return dict(dvar=d(lambda s: sde.std(s) ** 2), dlog_alpha=d(sde.log_alpha), f=sde.drift_coeff(t),
                    g2=sde.diffusion(t) ** 2, var=sde.std(t) ** 2, dlam=d(sde._iw_cumulative),
                    roundtrip=sde._iw_inverse(sde._iw_cumulative(t)))

    with jax.enable_x64(True):
        t = jnp.linspace(1e-3, 1.0, 23, dtype=jnp.float64)
        q = quantities(t)
        np.testing.assert_allclose(q["f"], q["dlog_alpha"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(q["dvar"] - 2 * q["f"] * q["var"], q["g2"], rtol=1e-9)
        # importance-sampling density of likelihood weighting: Lambda' = g^2 / sigma^2, and its inverse
        np.testing.assert_allclose(q["dlam"], q["g2"] / q["var"], rtol=1e-9)
        np.testing.assert_allclose(q["roundtrip"], t, rtol=1e-9)
    # drift(x, t) = f(t) x and marginal(x0, t) = (alpha x0, sigma), batched over (n, d) with t: (n,)
    x = jnp.arange(12.0).reshape(4, 3)
    tt = jnp.array([0.1, 0.4, 0.7, 1.0])
    np.testing.assert_allclose(sde.drift(x, tt), sde.drift_coeff(tt)[:, None] * x, rtol=1e-6)
    mean, std = sde.marginal(x, tt)
    np.testing.assert_allclose(mean, sde.alpha(tt)[:, None] * x, rtol=1e-6)
    assert std.shape == (4,)


def _song_vp(t, b0=0.1, b1=20.0):
    """Song et al.'s VP / sub-VP formulas in 50-digit arithmetic: log mean coefficient, VP std, sub-VP std."""
    t = mpmath.mpf(t)
    lmc = -t**2 * (b1 - b0) / 4 - t * b0 / 2
    return mpmath.exp(lmc), mpmath.sqrt(1 - mpmath.exp(2 * lmc)), 1 - mpmath.exp(2 * lmc)


@pytest.mark.parametrize("t", [1e-7, 1e-5, 1e-3, 0.1, 0.5, 1.0])
def test_marginals_match_song_et_al_in_high_precision(t):
    mpmath.mp.dps = 50
    alpha, std_vp, std_subvp = _song_vp(t)
    tt = jnp.float32(t)
    np.testing.assert_allclose(VPSDE().alpha(tt), float(alpha), rtol=2e-7)
    np.testing.assert_allclose(VPSDE().std(tt), float(std_vp), rtol=2e-6)  # expm1: accurate down to t ~ 1e-7
    np.testing.assert_allclose(SubVPSDE().std(tt), float(std_subvp), rtol=2e-6)
    ve = VESDE(0.01, 50.0)
    s = mpmath.mpf("0.01") * mpmath.power(5000, mpmath.mpf(t))
    np.testing.assert_allclose(ve.std(tt), float(mpmath.sqrt(s**2 - mpmath.mpf("0.01") ** 2)), rtol=2e-6)
    np.testing.assert_allclose(ve.diffusion(tt), float(s * mpmath.sqrt(2 * mpmath.log(5000))), rtol=2e-6)
    g_subvp = mpmath.sqrt((0.1 + t * 19.9) * (1 - mpmath.exp(-2 * (0.1 * t + 9.95 * t**2))))
    np.testing.assert_allclose(SubVPSDE().diffusion(tt), float(g_subvp), rtol=2e-6)


def test_cosine_schedule_is_nichol_dhariwal_truncated():
    sched = CosineSchedule(s=0.008, logsnr_min=-10.0)
    sde = VPSDE(schedule=sched)
    phi0 = math.pi / 2 * 0.008 / 1.008
    phi1 = math.acos(math.cos(phi0) * math.sqrt(1 / (1 + math.exp(10.0))))
    for t in [0.0, 0.25, 0.5, 0.9, 1.0]:
        phi = phi0 + t * (phi1 - phi0)
        alpha_bar = math.cos(phi) ** 2 / math.cos(phi0) ** 2
        np.testing.assert_allclose(sde.alpha(t) ** 2, alpha_bar, rtol=1e-5)
    alpha_bar1 = float(sde.alpha(1.0) ** 2)
    np.testing.assert_allclose(math.log(alpha_bar1 / (1 - alpha_bar1)), -10.0, atol=1e-3)
    assert np.isfinite(sched.beta(1.0)) and float(sched.beta(0.0)) > 0


@pytest.mark.parametrize("sched", [LinearSchedule(0.1, 20.0), LinearSchedule(0.0, 5.0), CosineSchedule()])
def test_schedule_integral_and_inverse(sched):
    f = jax.jit(lambda t: (jax.vmap(jax.grad(sched.integral))(t), sched.beta(t), sched.inverse_integral(sched.integral(t))))
    with jax.enable_x64(True):
        t = jnp.linspace(0.0, 1.0, 11, dtype=jnp.float64)
        d_integral, beta, roundtrip = f(t)
        np.testing.assert_allclose(d_integral, beta, rtol=1e-10)
        np.testing.assert_allclose(roundtrip, t, atol=1e-10)
        assert float(sched.integral(0.0)) == 0.0


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_marginal_matches_simulated_forward_sde(name, key):
    sde = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(0.01, 5.0)}[name]
    x0 = jnp.array([1.5, -0.5])
    n, steps = 4000, 1000
    dt = 1.0 / steps

    def em(x, i):  # plain Euler-Maruyama forward from x0, one path per row
        t = i * dt
        k = jax.random.fold_in(key, i)
        x = x + sde.drift(x, t) * dt + sde.diffusion(t) * math.sqrt(dt) * jax.random.normal(k, x.shape)
        return x, x

    x = jnp.broadcast_to(x0, (n, 2))
    _, path = jax.jit(lambda x: jax.lax.scan(em, x, jnp.arange(steps)))(x)
    for t_check in [0.3, 1.0]:
        xt = np.asarray(path[round(t_check * steps) - 1], np.float64)
        mean, std = sde.marginal(x0, t_check)
        z = (xt - np.asarray(mean)) / float(std)
        assert scipy.stats.kstest(z.ravel(), "norm").pvalue > 1e-3
        np.testing.assert_allclose(z.mean(0), 0.0, atol=4.5 / math.sqrt(n))
        np.testing.assert_allclose(z.std(0), 1.0, atol=4.5 / math.sqrt(2 * n) + 0.01)  # + EM bias O(dt)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_prior_sample_and_log_prob(name, key):
    sde = ALL[name]
    z = sde.prior_sample(key, (20000, 3))
    assert z.shape == (20000, 3) and z.dtype == jnp.float32
    np.testing.assert_allclose(np.std(z), sde.prior_std(), rtol=0.02)
    lp = sde.prior_log_prob(z[:5])
    ref = scipy.stats.multivariate_normal(np.zeros(3), sde.prior_std() ** 2 * np.eye(3)).logpdf(np.asarray(z[:5]))
    np.testing.assert_allclose(lp, ref, rtol=1e-5)
    assert lp.shape == (5,)


def test_reverse_drifts():
    sde = VPSDE()
    score = lambda x, t: -x * (1.0 + t[:, None])
    x = jnp.ones((3, 2))
    t = jnp.array([0.2, 0.5, 0.9])
    g2 = sde.diffusion(t)[:, None] ** 2
    rev = sde.reverse(score)
    np.testing.assert_allclose(rev.drift(x, t), sde.drift(x, t) - g2 * score(x, t), rtol=1e-6)
    np.testing.assert_allclose(rev.diffusion(t), sde.diffusion(t))
    ode = sde.reverse(score, probability_flow=True)
    np.testing.assert_allclose(ode.drift(x, t), sde.drift(x, t) - 0.5 * g2 * score(x, t), rtol=1e-6)
    np.testing.assert_allclose(ode.diffusion(t), 0.0)
    # conditional scores get cond passed through
    cscore = lambda x, t, cond: cond * x
    np.testing.assert_allclose(sde.reverse(cscore).drift(x, t, 2.0), sde.drift(x, t) - g2 * 2.0 * x, rtol=1e-6)


def test_likelihood_weighting_times_have_density_g2_over_sigma2():
    sde = VPSDE()
    u = jnp.linspace(0.0, 1.0, 101)
    t, z = sde.likelihood_weighting_time(u, 1e-5)
    assert float(t[0]) == pytest.approx(1e-5, rel=1e-3) and float(t[-1]) == pytest.approx(1.0, rel=1e-5)
    assert np.all(np.diff(np.asarray(t)) > 0)
    # normaliser = int g^2/sigma^2 dt, by quadrature in log t
    def f(s):  # Song et al.'s VP: beta(t) / (1 - exp(-B(t)))
        b = 0.1 * s + 9.95 * s**2
        return (0.1 + 19.9 * s) / -math.expm1(-b)

    quad = scipy.integrate.quad(lambda lt: f(math.exp(lt)) * math.exp(lt), math.log(1e-5), 0.0, limit=200)[0]
    np.testing.assert_allclose(z, quad, rtol=1e-4)


def test_invalid_parameters_raise():
    with pytest.raises(ValueError, match="beta_min"):
        VPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(sigma_min=0.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="schedule"):
        SubVPSDE(schedule="quadratic")
    with pytest.raises(ValueError, match="logsnr_min"):
        CosineSchedule(logsnr_min=1.0)


def test_sdes_are_pytrees_usable_under_jit():
    sde = VPSDE()
    f = jax.jit(lambda s, t: s.std(t))
    np.testing.assert_allclose(f(sde, 0.5), sde.std(0.5), rtol=1e-6)
    assert genjax.AbstractSDE in type(sde).__mro__
