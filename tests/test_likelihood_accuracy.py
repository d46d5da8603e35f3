"""Accuracy of the count log-pmfs and their gradients against an mpmath reference at 50 digits.

The grid is the one of issue 2 and ``benchmarks/likelihoods.py``: mu = 1e-6..1e6 and theta = 1e-4..1e8 (one point
per decade), 12 counts in [0, 1e5], plus zi_logits in [-10, 10] for ZINB, plus seeded random points (near-Poisson
counts close to mu, theta around the series cuts), the two failures quoted in the issue and a few extreme points.
References are evaluated at the exact float32 inputs (for the log-parameterised functions: at ``exp`` of the
float32 logs) and cached for the session. Criterion: ``|lp - exact| <= 1e-4 (1 + |exact|)`` in float32, ``1e-10 (1 + |exact|)`` in
float64, at every point.
"""

import functools

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
import scipy.stats

import genjax

DPS = 50
TOL32 = 1e-4
TOL64 = 1e-10
ZI_LOGITS = np.array([-10.0, -2.0, 0.0, 2.0, 10.0])


def nb_ref(x, mu, theta):
    """Exact log NB(x | mu, theta), mpmath numbers in, mpf out (call inside ``mp.workdps``)."""
    x, mu, theta = mp.mpf(x), mp.mpf(mu), mp.mpf(theta)
    out = theta * mp.log(theta / (theta + mu))
    if x > 0:
        out += (
            mp.loggamma(x + theta) - mp.loggamma(theta) - mp.loggamma(x + 1) + x * mp.log(mu / (theta + mu))
        )
    return out


def nb_grad_ref(x, mu, theta):
    """Exact ``(d/dlog_mu, d/dlog_theta)`` and their natural scales (the size of the terms that cancel)."""
    x, mu, theta = mp.mpf(x), mp.mpf(mu), mp.mpf(theta)
    g_log_mu = theta * (x - mu) / (theta + mu)
    delta_phi = mp.digamma(x + theta) - mp.digamma(theta) - mp.log1p(x / theta)
    u = (x - mu) / (theta + mu)
    log1pmx = mp.log1p(u) - u
    g_log_theta = theta * (delta_phi + log1pmx)
    return g_log_mu, g_log_theta, theta * (x + mu) / (theta + mu), theta * (abs(delta_phi) + abs(log1pmx))


def _points():
    mu = 10.0 ** np.arange(-6, 7)
    theta = 10.0 ** np.arange(-4, 9)
    x = np.array([0, 1, 2, 3, 7, 10, 30, 100, 1e3, 1e4, 3e4, 1e5])
    m, t, c = (a.ravel() for a in np.meshgrid(mu, theta, x, indexing="ij"))
    rng = np.random.default_rng(2024)
    n = 400
    cr = np.floor(10 ** rng.uniform(0, 5, n))
    cr[:40] = 0
    mr = 10 ** rng.uniform(-6, 6, n)
    tr = 10 ** rng.uniform(-4, 8, n)
    near = slice(40, 200)  # mu within a relative 1e-5..1 of the count: the deviance series regime
    mr[near] = cr[near] * (1 + 10 ** rng.uniform(-5, 0, 160) * rng.choice([-1, 1], 160))
    tr[200:300] = 10 ** rng.uniform(-1, 1.5, 100)  # around the shift / series cuts of stirlerr and phi
    # the issue's failures and near-Poisson neighbours; huge means (mu (x + theta) overflows float32: XLA rewrites
    # mu / (a / b) as (mu b) / a, so the code must not depend on that division order)
    targeted = np.array(
        [
            [0, 0.5, 1e7],
            [7, 7, 1e8],
            [1e5, 1e5 + 300, 1e8],
            [1e4, 9990, 1e6],
            [1e5, 1e-6, 1e-4],
            [3, 1e30, 4.8e8],
        ]
    )
    c = np.concatenate([c, cr, targeted[:, 0]])
    m = np.concatenate([m, np.maximum(mr, 1e-6), targeted[:, 1]])
    t = np.concatenate([t, tr, targeted[:, 2]])
    return c, m, t


@functools.cache
def points32():
    """Float32 inputs (x, mu, theta, log_mu, log_theta) and the references at those exact values."""
    c, m, t = (a.astype(np.float32) for a in _points())
    lm, lt = np.log(m).astype(np.float32), np.log(t).astype(np.float32)
    with mp.workdps(DPS):
        ref = [nb_ref(*map(float, a)) for a in zip(c, m, t, strict=True)]
        exp_m = [mp.exp(float(a)) for a in lm]
        exp_t = [mp.exp(float(a)) for a in lt]
        ref_log = [nb_ref(float(a), b, d) for a, b, d in zip(c, exp_m, exp_t, strict=True)]
        grads = [nb_grad_ref(float(a), b, d) for a, b, d in zip(c, exp_m, exp_t, strict=True)]
    return {
        "x": c,
        "mu": m,
        "theta": t,
        "log_mu": lm,
        "log_theta": lt,
        "ref": ref,
        "ref_log": ref_log,
        "grads": np.array([[float(v) for v in g] for g in grads]),
    }


@functools.cache
def points64():
    c, m, t = _points()
    with mp.workdps(DPS):
        ref = [nb_ref(*map(float, a)) for a in zip(c, m, t, strict=True)]
    return c, m, t, ref


def zinb_ref(x, nb, z):
    """Exact log ZINB from the exact log NB (mpf) and the logit (float)."""
    z = mp.mpf(z)
    softplus = mp.log1p(mp.exp(z))
    if x == 0:
        return mp.log(mp.exp(z) + mp.exp(nb)) - softplus
    return nb - softplus


def _check(out, ref, tol, label):
    ref = np.array([float(r) for r in ref])
    out = np.asarray(out, np.float64)
    err = np.abs(out - ref) / (1.0 + np.abs(ref))
    err[~np.isfinite(out)] = np.inf
    worst = int(np.argmax(err))
    assert err[worst] <= tol, (
        f"{label}: worst error {err[worst]:.3g} at point {worst}: {out[worst]} vs {ref[worst]}"
    )


def _jit(fn):
    """The function without host validation (the public functions are jitted internally)."""
    return functools.partial(fn, validate_args=False)


def test_issue_examples():
    # numpyro gives 0.0 and the scVI formula -8.5 here.
    assert float(genjax.nb_log_prob(0.0, 0.5, 1e7)) == pytest.approx(-0.5, rel=1e-6)
    assert float(genjax.nb_log_prob(7.0, 7.0, 1e8)) == pytest.approx(-1.9037903527, abs=1e-6)


def test_nb_float32():
    p = points32()
    out = _jit(genjax.nb_log_prob)(p["x"], p["mu"], p["theta"])
    assert out.dtype == jnp.float32
    _check(out, p["ref"], TOL32, "nb_log_prob float32")


def test_nb_log_float32():
    p = points32()
    out = _jit(genjax.nb_log_prob_log)(p["x"], p["log_mu"], p["log_theta"])
    assert out.dtype == jnp.float32
    _check(out, p["ref_log"], TOL32, "nb_log_prob_log float32")


@pytest.mark.parametrize("log_params", [False, True])
def test_zinb_float32(log_params):
    p = points32()
    n = len(p["x"])
    z = np.repeat(ZI_LOGITS, n).astype(np.float32)
    x = np.tile(p["x"], len(ZI_LOGITS))
    if log_params:
        out = _jit(genjax.zinb_log_prob_log)(x, np.tile(p["log_mu"], 5), np.tile(p["log_theta"], 5), z)
        nb = p["ref_log"]
    else:
        out = _jit(genjax.zinb_log_prob)(x, np.tile(p["mu"], 5), np.tile(p["theta"], 5), z)
        nb = p["ref"]
    with mp.workdps(DPS):
        ref = [zinb_ref(x[i], nb[i % n], float(z[i])) for i in range(len(x))]
    _check(out, ref, TOL32, f"zinb float32 (log params: {log_params})")


def test_poisson_float32():
    p = points32()
    x, rate = p["x"], p["mu"]
    with mp.workdps(DPS):
        ref = [
            float(a) * mp.log(mp.mpf(float(r))) - mp.mpf(float(r)) - mp.loggamma(float(a) + 1)
            for a, r in zip(x, rate, strict=True)
        ]
        ref_log = []
        for a, lr in zip(x, np.log(rate).astype(np.float32), strict=True):
            r = mp.exp(float(lr))
            ref_log.append(float(a) * float(lr) - r - mp.loggamma(float(a) + 1))
    _check(_jit(genjax.poisson_log_prob)(x, rate), ref, TOL32, "poisson_log_prob float32")
    _check(
        _jit(genjax.poisson_log_prob_log)(x, np.log(rate).astype(np.float32)), ref_log, TOL32, "poisson log"
    )


def test_nb_float64():
    c, m, t, ref = points64()
    with jax.enable_x64(True):
        out = _jit(genjax.nb_log_prob)(c, m, t)
        out_log = _jit(genjax.nb_log_prob_log)(c, np.log(m), np.log(t))
        z = np.resize(ZI_LOGITS, len(c))
        out_zinb = _jit(genjax.zinb_log_prob)(c, m, t, z)
        assert out.dtype == jnp.float64
    _check(out, ref, TOL64, "nb_log_prob float64")
    # log(m) rounds in float64; the induced change x * d(log mu) is far below 1e-10 relative here.
    _check(out_log, ref, TOL64, "nb_log_prob_log float64")
    with mp.workdps(DPS):
        ref_zinb = [zinb_ref(c[i], ref[i], z[i]) for i in range(len(c))]
    _check(out_zinb, ref_zinb, TOL64, "zinb_log_prob float64")


def test_nb_float64_against_scipy():
    """scipy.stats.nbinom as an independent float64 reference, where it is itself accurate.

    scipy evaluates with ``p = theta / (theta + mu)`` and loses digits when ``p`` is within ~1e-6 of 1 (large
    theta, small mu); those points are identified against mpmath and left out (the mpmath tests cover them).
    """
    c, m, t, ref = points64()
    ref = np.array([float(r) for r in ref])
    sp = scipy.stats.nbinom.logpmf(c, t, t / (t + m))
    scipy_ok = np.abs(sp - ref) <= 1e-12 * (1 + np.abs(ref))
    assert scipy_ok.sum() > 1000
    with jax.enable_x64(True):
        out = np.asarray(_jit(genjax.nb_log_prob)(c[scipy_ok], m[scipy_ok], t[scipy_ok]))
    np.testing.assert_allclose(out, sp[scipy_ok], rtol=TOL64, atol=TOL64)


# ---------------------------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def _grad_fn(fn, argnums=(1, 2)):
    """Jitted per-element gradients, built once per function for the session."""
    return jax.jit(jax.vmap(jax.grad(functools.partial(fn, validate_args=False), argnums=argnums)))


def _grads(fn, *args):
    return _grad_fn(fn)(*args)


def _check_grad(got, ref, scale, label):
    got = np.asarray(got, np.float64)
    assert np.isfinite(got).all(), (
        f"{label}: non-finite gradient at {np.argwhere(~np.isfinite(got))[:5].ravel()}"
    )
    # 1e-3 relative, or 1e-5 of the size of the terms whose difference the gradient is (the float32 rounding of
    # the inputs alone moves the result by ~1e-7 of that scale).
    excess = np.abs(got - ref) - (1e-3 * np.abs(ref) + 1e-5 * scale)
    worst = int(np.argmax(excess))
    assert excess[worst] <= 0, (
        f"{label}: point {worst}: {got[worst]} vs {ref[worst]} (scale {scale[worst]:.3g})"
    )


def test_nb_log_gradients_float32():
    p = points32()
    g = p["grads"]
    g_log_mu, g_log_theta = _grads(genjax.nb_log_prob_log, p["x"], p["log_mu"], p["log_theta"])
    _check_grad(g_log_mu, g[:, 0], g[:, 2], "d/dlog_mu")
    _check_grad(g_log_theta, g[:, 1], g[:, 3], "d/dlog_theta")


def test_nb_gradients_float32():
    p = points32()
    with mp.workdps(DPS):
        g = np.array(
            [
                [float(v) for v in nb_grad_ref(*map(float, a))]
                for a in zip(p["x"], p["mu"], p["theta"], strict=True)
            ]
        )
    g_mu, g_theta = _grads(genjax.nb_log_prob, p["x"], p["mu"], p["theta"])
    m, t = p["mu"].astype(np.float64), p["theta"].astype(np.float64)
    _check_grad(np.asarray(g_mu) * m, g[:, 0], g[:, 2], "d/dmu")
    _check_grad(np.asarray(g_theta) * t, g[:, 1], g[:, 3], "d/dtheta")


def test_gradients_against_float64_finite_differences():
    """Analytic gradients (ZINB, all three parameters) vs central differences of the float64 function.

    Five-point differences (step 1e-4 in the log-parameters and logits, truncation error ~1e-16). float64
    gradients must agree to 1e-5 wherever the differences resolve the gradient; float32 gradients to
    1e-3 wherever, in addition, the gradient is well conditioned at float32 resolution (moving the inputs by one
    float32 ulp changes it by < 1e-4; e.g. ``x - mu`` at ``x = 10``, ``mu = exp(log 10)`` is pure rounding).
    """
    c, m, t = (a.astype(np.float32) for a in _points())
    sub = np.arange(0, len(c), 7)  # a spread-out subset of grid and random points
    c, lm, lt = c[sub], np.log(m[sub]).astype(np.float32), np.log(t[sub]).astype(np.float32)
    z = np.resize(ZI_LOGITS, len(c)).astype(np.float32)

    grads = _grad_fn(genjax.zinb_log_prob_log, (1, 2, 3))
    got32 = grads(c, lm, lt, z)
    h, ulp = 1e-4, 2.0**-23
    with jax.enable_x64(True):
        f = _jit(genjax.zinb_log_prob_log)
        args = [np.asarray(a, np.float64) for a in (c, lm, lt, z)]
        value = np.asarray(f(*args))
        got64 = grads(*args)
        shift = [ulp * np.maximum(1, np.abs(a)) for a in (lm, lt)] + [ulp * 10]
        shifted = grads(args[0], *(a + d for a, d in zip(args[1:], shift, strict=True)))
        for i in (1, 2, 3):

            def at(step, i=i):
                shifted_args = list(args)
                shifted_args[i] = args[i] + step
                return np.asarray(f(*shifted_args))

            fd = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)
            g32, g64 = np.asarray(got32[i - 1], np.float64), np.asarray(got64[i - 1])
            assert np.isfinite(g32).all() and np.isfinite(g64).all()
            resolved = np.abs(fd) > 1e-6 * (1 + np.abs(value))  # well above the differences' own rounding
            np.testing.assert_allclose(g64[resolved], fd[resolved], rtol=1e-5)
            stable = np.abs(np.asarray(shifted[i - 1]) - g64) <= 1e-4 * np.abs(g64)
            ok = resolved & stable
            assert ok.mean() > 0.5
            rel = np.abs(g32[ok] - fd[ok]) / np.abs(fd[ok])
            assert rel.max() < 1e-3, f"argument {i}: rel error {rel.max():.3g} at x = {c[ok][np.argmax(rel)]}"


@pytest.mark.parametrize("log_mu", [-30.0, -100.0])
def test_very_small_log_mu(log_mu):
    x = jnp.array([0.0, 1.0, 5.0, 1e4])
    log_theta = jnp.array([20.0, 0.0, -9.0, 3.0])
    lp = _jit(genjax.nb_log_prob_log)(x, log_mu, log_theta)
    with mp.workdps(DPS):
        ref = [nb_ref(float(a), mp.exp(log_mu), mp.exp(float(b))) for a, b in zip(x, log_theta, strict=True)]
    _check(lp, ref, TOL32, f"log_mu = {log_mu}")
    g = _grads(genjax.nb_log_prob_log, x, jnp.full(4, log_mu), log_theta)
    assert all(np.isfinite(np.asarray(a)).all() for a in g)
    np.testing.assert_allclose(g[0][1:], x[1:], rtol=1e-6)  # d/dlog_mu = theta (x - mu) / (theta + mu) -> x


def test_gradients_finite_at_zero_mean_and_zero_count():
    # mu -> 0 at x = 0: log-pmf -> 0, d/dmu -> -theta / (theta + mu) -> -1, d/dtheta -> 0.
    mu = jnp.array([0.0, 1e-30, 1e-6, 0.0])
    theta = jnp.array([3.0, 3.0, 3.0, 1e8])
    zero = jnp.zeros(4)
    g_mu, g_theta = _grads(genjax.nb_log_prob, zero, mu, theta)
    np.testing.assert_allclose(g_mu, -theta / (theta + mu), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(g_theta)[[0, 3]], 0.0)
    g = _grad_fn(genjax.zinb_log_prob, (1, 2, 3))(zero, mu, theta, jnp.full(4, 10.0))
    assert all(np.isfinite(np.asarray(a)).all() for a in g)
    (g,) = _grad_fn(genjax.poisson_log_prob, (1,))(zero, mu)
    np.testing.assert_array_equal(g, -1.0)
