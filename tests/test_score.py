"""Score networks, parameterisations, the denoising score-matching loss, conditioning blocks and training.

Ground truth: conversions between parameterisations against the closed-form targets; the DSM loss at the exact
Gaussian score against its closed-form minimum (posterior variance of the noise) by quadrature; gradients against
finite differences; a trained model on a 2-D Gaussian mixture reproduces its modes and weights.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.integrate
import scipy.stats

import genjax
from genjax import VESDE, VPSDE, SubVPSDE
from genjax.nn import (
    NULL_LABEL,
    Condition,
    ConditionEmbedding,
    FieldNet,
    FiLM,
    SinusoidalEmbedding,
    check_condition,
    drop_condition,
    null_condition,
)


def _random_params(model, *args, scale=0.3, seed=0):
    """Parameters of the right shapes without compiling ``model.init`` (XLA compiles of random initialisers
    cost seconds on two cores): shapes from ``jax.eval_shape``, values from numpy."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda k: model.init(k, *args), jax.random.key(0))
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shapes)


# ------------------------------------------------------------------------------------------------ parameterisations


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(0.01, 20.0), VPSDE(schedule="cosine")], ids=str)
def test_conversions_between_parameterisations_match_closed_forms(sde, key):
    k1, k2 = jax.random.split(key)
    n, d = 64, 3
    x0 = jax.random.normal(k1, (n, d))
    eps = jax.random.normal(k2, (n, d))
    t = jnp.linspace(0.05, 1.0, n)

    @jax.jit  # one compile for all 36 conversions
    def everything(x0, eps, t):
        alpha, sigma = sde.alpha(t)[:, None], sde.std(t)[:, None]
        xt = alpha * x0 + sigma * eps
        dalpha = (sde.drift_coeff(t) * sde.alpha(t))[:, None]
        dsigma = jax.vmap(jax.grad(sde.std))(t)[:, None]
        truth = {
            "score": -eps / sigma,
            "eps": eps,
            "x0": x0,
            "v": alpha * eps - sigma * x0,
            "velocity": dalpha * x0 + dsigma * eps,  # d x_t / dt along the path
            "eps_skip": eps - sigma * xt / (alpha**2 + sigma**2),
        }
        # the velocity target is the probability-flow drift f x - g^2/2 score
        pf = sde.drift(xt, t) - 0.5 * sde.diffusion(t)[:, None] ** 2 * truth["score"]
        conv = {(a, b): genjax.convert_output(truth[a], xt, t, sde, a, b)
                for a in genjax.PARAMETERISATIONS for b in genjax.PARAMETERISATIONS}
        return truth, pf, conv

    truth, pf, conv = everything(x0, eps, t)
    np.testing.assert_allclose(truth["velocity"], pf, rtol=2e-4, atol=2e-4)
    for (source, target), out in conv.items():
        scale = float(jnp.max(jnp.abs(truth[target])))
        np.testing.assert_allclose(out, truth[target], rtol=0, atol=2e-4 * max(scale, 1.0), err_msg=f"{source}->{target}")
    with pytest.raises(ValueError, match="parameterisation"):
        genjax.convert_output(eps, x0, t, sde, "eps", "noise")


def test_score_function_converts_network_output():
    sde = VPSDE()
    model = FieldNet(n_hidden=16, n_layers=1, time_features=8)
    x, t = jnp.ones((4, 2)), jnp.linspace(0.1, 0.9, 4)
    params = _random_params(model, x, t)

    @jax.jit  # ScoreFunction is a pytree: params traced, apply_fn and parameterisation static
    def call(params):
        raw = model.apply(params, x, t)
        outs = {}
        for p in genjax.PARAMETERISATIONS:
            sf = genjax.ScoreFunction(model.apply, params, sde, p)
            outs[p] = (sf(x, t), sf.output(x, t), genjax.convert_output(raw, x, t, sde, p, "score"))
        return raw, outs

    raw, outs = call(params)
    for score, out, expected in outs.values():
        np.testing.assert_allclose(score, expected, rtol=1e-5)
        np.testing.assert_allclose(out, raw, rtol=1e-6)
    np.testing.assert_allclose(outs["eps"][0], -raw / sde.std(t)[:, None], rtol=1e-5)
    with pytest.raises(ValueError, match="parameterisation"):
        genjax.ScoreFunction(model.apply, params, sde, "epsilon")


# ------------------------------------------------------------------------------------------------ loss


def _gaussian_setup():
    m = np.array([1.0, -0.5])
    s = np.array([[1.0, 0.3], [0.3, 0.5]])
    lam, u = np.linalg.eigh(s)
    return m, s, lam, u


def _optimal_loss(sde_np_alpha, sde_np_sigma, weight, lam, t_min):
    """E_t[w(t) tr Cov(eps | x_t) / d] for Gaussian data: Cov(eps | x_t) = I - sigma^2 (alpha^2 S + sigma^2 I)^-1."""

    def integrand(lt):
        t = math.exp(lt)
        a, s = sde_np_alpha(t), sde_np_sigma(t)
        return weight(t) * np.mean(1.0 - s**2 / (a**2 * lam + s**2)) * t

    return scipy.integrate.quad(integrand, math.log(t_min), 0.0, limit=200)[0] / (1.0 - t_min)


def test_dsm_loss_at_the_exact_score_equals_its_closed_form_minimum(key):
    m, s, lam, u = _gaussian_setup()
    sde = VPSDE()
    mj, lamj, uj = jnp.asarray(m, jnp.float32), jnp.asarray(lam, jnp.float32), jnp.asarray(u, jnp.float32)

    def exact_score(x, t, cond=None, scale=1.0):
        a, sg = sde.alpha(t)[:, None], sde.std(t)[:, None]
        r = (x - a * mj) @ uj
        return -scale * (r / (a**2 * lamj + sg**2)) @ uj.T

    chunks, n = 8, 25_000
    x0 = jnp.asarray(np.random.default_rng(0).multivariate_normal(m, s, size=(chunks, n)), jnp.float32)
    variants = {  # (weighting, importance sampling, t_min): uniform times with likelihood weighting need t_min
        "sigma2": ("sigma2", False, 1e-5),  # well above 0 to keep the 1/t variance finite
        "likelihood-is": ("likelihood", True, 1e-5),
        "likelihood-uniform": ("likelihood", False, 1e-2),
    }

    @jax.jit  # one compile for every variant
    def losses_fn(key):
        out = {}
        for name, (w, imp, t_min) in variants.items():
            kw = dict(parameterisation="score", weighting=w, importance_sampling=imp, t_min=t_min)
            per_chunk = jax.vmap(lambda x, i, kw=kw: genjax.dsm_loss(jax.random.fold_in(key, i), exact_score, sde, x, **kw)[0])
            exact = per_chunk(x0, jnp.arange(chunks))
            worse = genjax.dsm_loss(jax.random.fold_in(key, 0), lambda x, t, c=None: exact_score(x, t, scale=1.1),
                                    sde, x0[0], **kw)[0]
            out[name] = (exact, worse)
        return out

    alpha_np = lambda t: math.exp(-0.5 * (0.1 * t + 9.95 * t**2))
    sigma_np = lambda t: math.sqrt(-math.expm1(-(0.1 * t + 9.95 * t**2)))
    weights = {"sigma2": lambda t: 1.0, "likelihood": lambda t: (0.1 + 19.9 * t) / sigma_np(t) ** 2}
    for name, (losses, worse) in losses_fn(key).items():
        w, _, t_min = variants[name]
        expected = _optimal_loss(alpha_np, sigma_np, weights[w], lam, t_min)
        losses = np.asarray(losses)
        mean, se = losses.mean(), losses.std(ddof=1) / math.sqrt(chunks)
        assert abs(mean - expected) < max(4.5 * se, 0.01 * expected), (name, mean, se, expected)
        # any other score does worse (common random numbers)
        assert float(worse) > losses[0], name


def test_dsm_loss_reductions_and_options(key):
    sde = VPSDE()
    x0 = jnp.ones((8, 3))
    zero = lambda x, t, c=None: jnp.zeros_like(x)  # eps_hat = 0: the loss is the mean square of the noise
    lm, aux = jax.jit(lambda k: genjax.dsm_loss(k, zero, sde, x0, reduction="mean"))(key)
    ls, _ = jax.jit(lambda k: genjax.dsm_loss(k, zero, sde, x0, reduction="sum"))(key)
    # jit equals eager (cheap here: no network)
    np.testing.assert_allclose(genjax.dsm_loss(key, zero, sde, x0, reduction="mean")[0], lm, rtol=1e-6)
    np.testing.assert_allclose(ls, 3 * lm, rtol=1e-6)
    np.testing.assert_allclose(aux["eps_mse"], lm, rtol=1e-6)
    for bad in [dict(weighting="snr"), dict(reduction="max"), dict(time_sampling="sobol"), dict(t_min=0.0),
                dict(parameterisation="noise")]:
        with pytest.raises(ValueError):
            genjax.dsm_loss(key, zero, sde, x0, **bad)


@pytest.mark.parametrize("method", ["uniform", "stratified", "low_discrepancy", "antithetic"])
def test_time_sampling_is_marginally_uniform(method, key):
    draws = jax.vmap(lambda k: genjax.sample_times(k, 16, method))(jax.random.split(key, 2000))
    assert draws.shape == (2000, 16) and float(draws.min()) >= 0.0 and float(draws.max()) < 1.0
    for j in (0, 7, 15):
        assert scipy.stats.kstest(np.asarray(draws[:, j]), "uniform").pvalue > 1e-3
    one = np.sort(np.asarray(draws[0]))
    if method in ("stratified", "low_discrepancy"):  # exactly one time in each stratum
        np.testing.assert_array_equal(np.floor(one * 16), np.arange(16))
    if method == "antithetic":
        np.testing.assert_allclose(np.sort(1.0 - np.asarray(draws[0])), one, atol=1e-6)


def test_loss_gradient_matches_finite_differences():
    model = FieldNet(n_hidden=8, n_layers=1, time_features=4, n_categories=(3,))
    sde = VPSDE()
    x0 = jax.random.normal(jax.random.key(1), (6, 2))
    cond = Condition(labels=jnp.array([[0], [1], [2], [NULL_LABEL], [0], [1]]))
    loss_fn = genjax.make_dsm_loss(model, sde, parameterisation="v", weighting="likelihood")
    params = _random_params(model, x0, jnp.ones(6), cond)
    key = jax.random.key(2)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        b64 = {"x": np.asarray(x0, np.float64), "cond": cond}
        direction = jax.tree.map(lambda a: np.random.default_rng(3).normal(size=a.shape), p64)

        @jax.jit
        def check(p, v, h):
            f = lambda p: loss_fn(p, b64, key, 0)[0]
            g = jax.grad(f)(p)
            shifted = lambda sgn: jax.tree.map(lambda a, b: a + sgn * h * b, p, v)
            an = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(v), strict=True))
            return an, (f(shifted(1.0)) - f(shifted(-1.0))) / (2 * h)

        an, fd = check(p64, direction, 1e-6)
        np.testing.assert_allclose(an, fd, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ blocks


def test_sinusoidal_embedding_formula():
    t = jnp.array([0.0, 0.25, 1.0])
    out = SinusoidalEmbedding(8, scale=1000.0).apply({}, t)
    freqs = np.exp(-math.log(10000) * np.arange(4) / 4)
    arg = 1000.0 * np.asarray(t)[:, None] * freqs
    np.testing.assert_allclose(out, np.concatenate([np.sin(arg), np.cos(arg)], -1), rtol=1e-5, atol=1e-4)


def test_film_starts_as_identity():
    h, c = jnp.arange(6.0).reshape(2, 3), jnp.ones((2, 5))
    film = FiLM()
    params = film.init(jax.random.key(0), h, c)  # zero-initialised projection
    assert all(float(jnp.abs(a).max()) == 0.0 for a in jax.tree.leaves(params))
    np.testing.assert_allclose(film.apply(params, h, c), h)


def test_field_net_rows_are_independent_and_cond_none_is_the_null_condition():
    # samplers and the Hutchinson divergence rely on output row i depending only on input row i
    model = FieldNet(n_hidden=16, n_layers=2, time_features=8, n_categories=(3, 2), n_continuous=2)
    n, d = 5, 3
    x = jax.random.normal(jax.random.key(0), (n, d))
    t = jnp.linspace(0.1, 1.0, n)
    cond = Condition(jnp.array([[0, 1], [1, -1], [2, 0], [-1, -1], [0, 0]]), jnp.ones((n, 2)),
                     jnp.array([[True, False]] * n))
    c2 = cond._replace(covariates=cond.covariates.at[:, 1].set(123.0))  # value of a masked covariate
    bad = cond._replace(labels=cond.labels.at[0, 0].set(3))  # out-of-range label

    @jax.jit  # one compile for every check
    def outputs(params):
        jac = jax.jacfwd(lambda x: model.apply(params, x, t, cond))(x)  # (n, d, n, d)
        f = lambda c: model.apply(params, x, t, c)
        return jac, f(None), f(null_condition(cond)), f(cond), f(c2), f(bad)

    # random (not zero-initialised) FiLM and embeddings, so that every parameter matters
    jac, out_none, out_null, out_cond, out_c2, out = outputs(_random_params(model, x, t, cond))
    off = jac * (1.0 - jnp.eye(n))[:, None, :, None]
    assert float(jnp.max(jnp.abs(off))) == 0.0
    np.testing.assert_allclose(out_none, out_null, rtol=1e-6)
    assert not np.allclose(out_cond, out_none)
    np.testing.assert_allclose(out_c2, out_cond, rtol=1e-6)
    assert bool(jnp.all(jnp.isnan(out[0]))) and bool(jnp.all(jnp.isfinite(out[1:])))
    with pytest.raises(ValueError, match="unconditional"):
        FieldNet(n_hidden=8).init(jax.random.key(0), x, t, cond)


def test_condition_embedding_sums_attribute_tables():
    emb = ConditionEmbedding(n_categories=(2, 3), features=4)
    labels = jnp.array([[0, 2], [1, -1]])
    params = _random_params(emb, Condition(labels), (2,))
    out = jax.jit(emb.apply, static_argnums=2)(params, Condition(labels), (2,))
    t0, t1 = params["params"]["attribute_0"]["embedding"], params["params"]["attribute_1"]["embedding"]
    np.testing.assert_allclose(out[0], t0[0] + t1[2], rtol=1e-6)
    np.testing.assert_allclose(out[1], t0[1] + t1[3], rtol=1e-6)  # -1 -> null row (index num_classes)


def test_drop_condition_and_check_condition(key):
    n = 20000
    cond = Condition(jnp.zeros((n, 2), jnp.int32), jnp.ones((n, 1)), None)
    dropped = jax.jit(drop_condition, static_argnums=2)(key, cond, 0.25)
    frac = np.mean(np.asarray(dropped.labels) == NULL_LABEL, axis=0)
    np.testing.assert_allclose(frac, 0.25, atol=0.015)
    np.testing.assert_allclose(1 - np.mean(np.asarray(dropped.covariate_mask)), 0.25, atol=0.015)
    assert drop_condition(key, None, 0.5) is None
    with pytest.raises(ValueError, match="rate"):
        drop_condition(key, cond, 1.5)
    check_condition(cond, n, (1, 1), 1)
    with pytest.raises(ValueError, match=r"cond.labels\[0, 1\] = 5 is out of range for attribute 1"):
        check_condition(cond._replace(labels=cond.labels.at[0, 1].set(5)), n, (3, 3), 1)
    with pytest.raises(ValueError, match="shape"):
        check_condition(cond, n + 1, (1, 1), 1)
    with pytest.raises(ValueError, match="non-finite"):
        check_condition(cond._replace(covariates=cond.covariates.at[3, 0].set(jnp.nan)), n, (1, 1), 1)
    with pytest.raises(ValueError, match="covariates is None"):
        check_condition(Condition(cond.labels), n, (1, 1), 1)


# ------------------------------------------------------------------------------------------------ training


def test_trained_score_model_reproduces_gaussian_mixture_modes_and_weights():
    rng = np.random.default_rng(0)
    means = np.array([[-2.0, -2.0], [2.0, -1.0], [0.0, 2.5]])
    weights = np.array([0.5, 0.3, 0.2])
    s = 0.3
    n = 800 * 256  # one epoch = the 800 steps (fewer dispatches and compiles in fit)
    comp = rng.choice(3, n, p=weights)
    x = (means[comp] + s * rng.normal(size=(n, 2))).astype(np.float32)
    sde = VPSDE()
    model = genjax.nn.FieldNet(n_hidden=48, n_layers=2, time_features=16)
    res = genjax.fit_score_model(x, sde, model, max_steps=800, batch_size=256, ema_decay=0.99, progress=False,
                                 steps_per_dispatch=200, optimizer=optax.adam(3e-3), seed=0)
    assert res.fit.state.ema_params is not None and int(res.fit.state.step) == 800
    traces = []

    def counting_apply(params, x, t, cond):
        traces.append(1)  # runs only while tracing
        return model.apply(params, x, t, cond)

    ema = genjax.ScoreFunction(counting_apply, res.score_fn.params, sde, "eps")
    y, _ = genjax.sample_reverse_sde(jax.random.key(1), ema, sde, (2000, 2), 200)
    n_traced = len(traces)
    # the raw (non-EMA) parameters are new array leaves of the same pytree: the sampler does not recompile
    raw = genjax.ScoreFunction(counting_apply, res.fit.state.params, sde, "eps")
    y_raw, _ = genjax.sample_reverse_sde(jax.random.key(2), raw, sde, (2000, 2), 200)
    assert len(traces) == n_traced and np.all(np.isfinite(y_raw))
    y = np.asarray(y)
    dist = np.linalg.norm(y[:, None] - means[None], axis=-1)
    nearest = dist.argmin(1)
    assert np.mean(dist.min(1) < 4 * s) > 0.97
    np.testing.assert_allclose(np.bincount(nearest, minlength=3) / len(y), weights, atol=0.04)
    for k in range(3):
        np.testing.assert_allclose(y[nearest == k].mean(0), means[k], atol=0.1)
        np.testing.assert_allclose(np.median(np.abs(y[nearest == k] - means[k]), axis=0) / 0.6745, s, rtol=0.25)


def test_prior_probability_flow_samples_stay_in_the_data_range():
    # Standardised 10-d normal data, the small prior network of the pipeline tests. With plain noise prediction
    # 9% of the probability-flow samples of this network ran off to |x| ~ 100 (the tails of x_t near t = 1, where
    # the VP ODE multiplies noise errors by beta(1) / 2); the prior's eps_skip parameterisation keeps them.
    z = np.random.default_rng(0).normal(size=(2000, 10)).astype(np.float32)
    prior, _ = genjax.fit_prior(z, None, steps=1000, n_hidden=64, n_layers=2, progress=False, seed=0)
    assert prior.parameterisation == "eps_skip"
    x, _ = genjax.sample_probability_flow_ode(jax.random.key(1), prior.field(), prior.make_sde(), (4000, 10),
                                              rtol=1e-3, atol=1e-3)
    x = np.asarray(x)
    assert np.abs(x).max() < 6.0
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.1)
    np.testing.assert_allclose(x.std(0), 1.0, atol=0.1)


def test_fit_score_model_rejects_bad_data():
    with pytest.raises(ValueError, match="row 1"):
        genjax.fit_score_model(np.array([[0.0, 1.0], [np.nan, 0.0]]), max_steps=1)
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        genjax.fit_score_model(np.zeros(5), max_steps=1)
