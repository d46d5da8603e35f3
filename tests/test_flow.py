"""Flow matching against ground truth, and classifier-free guidance for flow and diffusion models.

For Gaussian data x ~ N(m, S) on a path x_t = a(t) x + s(t) eps the marginal velocity is closed form,
v(x, t) = a' m + (a a' S + s s' I)(a^2 S + s^2 I)^{-1} (x - a m): plugged into the samplers it must reproduce m
and S, and the change-of-variables likelihood must equal log N(x; m, a(0)^2 S + s(0)^2 I). Trained models are
small, 2-d and shared per module (each compile costs seconds on two cores).
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

import genjax
from genjax.nn import Condition

D = 3


def _gaussian(d, seed):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=d)
    a = rng.normal(size=(d, d)) / math.sqrt(d)
    return m, a @ a.T + 0.3 * np.eye(d)


class GaussianVelocity(eqx.Module):
    """Exact marginal velocity of a path from N(m, S) data (counts its traces)."""

    path: genjax.AbstractPath
    m: jax.Array
    lam: jax.Array
    u: jax.Array

    def __init__(self, path, m, s):
        lam, u = np.linalg.eigh(s)
        self.path = path
        self.m, self.lam, self.u = (jnp.asarray(v, jnp.float32) for v in (m, lam, u))

    def __call__(self, x, t, cond=None):
        _TRACES.append(1)  # runs only while tracing
        a, s = self.path.alpha(t)[..., None], self.path.sigma(t)[..., None]
        da, ds = self.path.d_alpha(t)[..., None], self.path.d_sigma(t)[..., None]
        r = (x - a * self.m) @ self.u
        gain = (a * da * self.lam + s * ds) / (a**2 * self.lam + s**2)
        return da * self.m + (gain * r) @ self.u.T


_TRACES: list = []
M, S = _gaussian(D, 0)
PATHS = {"linear": genjax.LinearPath(sigma_min=0.05), "vp": genjax.VPPath()}
FIELDS = {k: GaussianVelocity(p, M, S) for k, p in PATHS.items()}


def _assert_moments(x, m, s, bias=0.0, z=4.5):
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x))
    n = x.shape[0]
    np.testing.assert_array_less(np.abs(x.mean(0) - m), z * np.sqrt(np.diag(s) / n) + bias)
    se_cov = np.sqrt((np.outer(np.diag(s), np.diag(s)) + s**2) / n)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - s), z * se_cov + bias)


def _data_cov(path):
    return path.alpha(0.0) ** 2 * S + path.sigma(0.0) ** 2 * np.eye(D)


# ------------------------------------------------------------------------------------------------------ paths


@pytest.mark.parametrize("name", ["linear", "vp"])
def test_path_velocity_is_the_time_derivative_and_endpoints(name, key):
    path = PATHS[name]
    x, eps = jax.random.normal(key, (2, 5, D))
    t = jnp.linspace(0.05, 0.95, 5)
    xt, ut = path.interpolate(x, eps, t)
    h = 1e-3
    fd = (path.interpolate(x, eps, t + h)[0] - path.interpolate(x, eps, t - h)[0]) / (2 * h)
    np.testing.assert_allclose(ut, fd, rtol=2e-3, atol=2e-3)
    x0, _ = path.interpolate(x, eps, jnp.zeros(5))
    x1, _ = path.interpolate(x, eps, jnp.ones(5))
    sigma_min = getattr(path, "sigma_min", 0.0)
    np.testing.assert_allclose(x0, x + sigma_min * eps, atol=1e-6)
    np.testing.assert_allclose(x1, eps, atol=1e-6)


def test_cfm_regression_target_has_the_exact_velocity_as_its_minimiser(key):
    # E[u_t | x_t] = v(x_t, t): the residual is orthogonal to every function of (x_t, t), here x_t itself and 1
    path, v = PATHS["linear"], FIELDS["linear"]
    n = 200_000
    kx, ke, kt = jax.random.split(key, 3)
    x = jnp.asarray(M, jnp.float32) + jax.random.normal(kx, (n, D)) @ jnp.asarray(np.linalg.cholesky(S).T, jnp.float32)
    eps = jax.random.normal(ke, (n, D))
    t = jax.random.uniform(kt, (n,))
    xt, ut = path.interpolate(x, eps, t)
    resid = np.asarray(v(xt, t) - ut, np.float64)
    feats = np.concatenate([np.asarray(xt, np.float64), np.ones((n, 1))], axis=1)
    moments = (resid[:, :, None] * feats[:, None, :]).reshape(n, -1)
    z = moments.mean(0) / (moments.std(0) / math.sqrt(n))
    assert np.all(np.abs(z) < 5.0), z
    # and the loss at the exact field is below the loss of a perturbed one
    loss = lambda f: genjax.cfm_loss(key, f, path, x[:4096])[0]  # noqa: E731
    assert float(loss(lambda y, s, c: v(y, s))) < float(loss(lambda y, s, c: v(y, s) + 0.1))


# --------------------------------------------------------------------------------------------------- samplers


def test_adaptive_dopri5_reproduces_gaussian_backward_in_time():
    # integrates from t0 = 1 down to t1 = 0 (diffrax's native backward solve)
    x, nfe = genjax.sample_flow(jax.random.key(1), FIELDS["linear"], (3000, D), path=PATHS["linear"])
    assert x.shape == (3000, D) and x.dtype == jnp.float32 and 10 < int(nfe) < 1000
    _assert_moments(x, M, _data_cov(PATHS["linear"]), bias=0.01)


@pytest.mark.parametrize("solver, per_step", [(diffrax.Euler(), 1), (diffrax.Heun(), 2)])
def test_fixed_step_solvers_reproduce_gaussian_and_count_evaluations(solver, per_step):
    n_steps = 200 if per_step == 1 else 40
    x, nfe = genjax.sample_flow(jax.random.key(2), FIELDS["vp"], (3000, D), path=PATHS["vp"], solver=solver,
                                n_steps=n_steps)
    assert int(nfe) == per_step * n_steps
    _assert_moments(x, M, S, bias=0.03)


def test_sampler_under_vmap_equals_loop_and_does_not_retrace():
    field = FIELDS["vp"]
    keys = jax.random.split(jax.random.key(3), 3)
    kw = dict(path=PATHS["vp"], n_steps=8, max_steps=16)
    batched, nfes = jax.vmap(lambda k: genjax.sample_flow(k, field, (6, D), **kw))(keys)
    looped = [genjax.sample_flow(keys[0], field, (6, D), **kw)[0]]
    n_traced = len(_TRACES)
    looped += [genjax.sample_flow(k, field, (6, D), **kw)[0] for k in keys[1:]]
    # new field values (same structure) and a new step count below max_steps: no retrace either
    other = GaussianVelocity(PATHS["vp"], -M, S)
    _, nfe = genjax.sample_flow(keys[0], other, (6, D), **{**kw, "n_steps": 12})
    assert len(_TRACES) == n_traced and int(nfe) == 12
    np.testing.assert_allclose(batched, np.stack(looped), rtol=1e-5, atol=1e-5)
    assert nfes.tolist() == [8, 8, 8]


def test_flow_log_likelihood_exact_divergence_matches_gaussian():
    from scipy.stats import multivariate_normal

    path = PATHS["linear"]
    x = np.random.default_rng(4).multivariate_normal(M, S, size=64).astype(np.float32)
    logp = genjax.flow_log_likelihood(jax.random.key(0), FIELDS["linear"], x, path=path, divergence="exact")
    exact = multivariate_normal(M, _data_cov(path)).logpdf(x)
    assert logp.shape == (64,) and logp.dtype == jnp.float32
    np.testing.assert_allclose(logp, exact, atol=2e-3)


def test_flow_log_likelihood_hutchinson_is_unbiased():
    from scipy.stats import multivariate_normal

    path = PATHS["vp"]
    x = np.repeat(np.random.default_rng(5).multivariate_normal(M, S, size=4), 256, axis=0).astype(np.float32)
    est = np.asarray(genjax.flow_log_likelihood(jax.random.key(6), FIELDS["vp"], x, path=path,
                                                rtol=1e-4, atol=1e-4), np.float64).reshape(4, 256)
    exact = multivariate_normal(M, S).logpdf(x[::256])
    se = est.std(1) / math.sqrt(256)
    assert np.all(se > 0)  # the estimator is random: probes vary per point
    np.testing.assert_array_less(np.abs(est.mean(1) - exact), 4.5 * se + 1e-3)


# ------------------------------------------------------------------------------------------- OT assignment


def test_linear_assignment_is_optimal_against_scipy():
    rng = np.random.default_rng(7)
    costs = rng.uniform(size=(4, 24, 24)).astype(np.float32)
    perms = np.asarray(jax.jit(jax.vmap(genjax.linear_assignment))(jnp.asarray(costs)))
    for c, p in zip(costs, perms, strict=True):
        assert sorted(p.tolist()) == list(range(24))
        rows, cols = linear_sum_assignment(c)
        best = c[rows, cols].sum()
        assert c[np.arange(24), p].sum() <= best + 24 * 1e-4 * (c.max() - c.min()) + 1e-5
    # block-diagonal problem: matched within groups only, and optimal within each group
    groups = np.repeat([0, 1, 2], 8)
    p = np.asarray(genjax.linear_assignment(jnp.asarray(costs[0]), groups=jnp.asarray(groups)))
    assert np.all(groups[p] == groups)
    for g in range(3):
        idx = np.flatnonzero(groups == g)
        sub = costs[0][np.ix_(idx, idx)]
        r, c = linear_sum_assignment(sub)
        assert costs[0][idx, p[idx]].sum() <= sub[r, c].sum() + 8 * 1e-4 + 1e-5


def test_ot_coupling_pairs_within_conditions_and_shortens_paths(key):
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (64, 2)) * 3.0
    eps = jax.random.normal(ke, (64, 2))
    labels = jnp.asarray(np.repeat([[0], [1]], 32, axis=0), jnp.int32)
    groups = genjax.condition_groups(Condition(labels=labels), 64)
    paired = genjax.ot_coupling(x, eps, groups=groups)
    # a permutation of the noise within each label group
    for g in (0, 32):
        np.testing.assert_allclose(np.sort(np.asarray(paired[g:g + 32]), axis=0), np.sort(np.asarray(eps[g:g + 32]), axis=0))
    cost = lambda e: float(jnp.sum((x - e) ** 2))  # noqa: E731
    assert cost(paired) < 0.8 * cost(eps)


# --------------------------------------------------------------------------------------------------- errors


def test_bad_inputs_raise_before_compute():
    v = FIELDS["linear"]
    with pytest.raises(ValueError, match="shape"):
        genjax.sample_flow(jax.random.key(0), v, (10,))
    with pytest.raises(ValueError, match="n_steps"):
        genjax.sample_flow(jax.random.key(0), v, (10, D), n_steps=0)
    with pytest.raises(ValueError, match="t_min"):
        genjax.sample_flow(jax.random.key(0), v, (10, D), t_min=1.0)
    with pytest.raises(ValueError, match="path"):
        genjax.sample_flow(jax.random.key(0), v, (10, D), path=genjax.VPSDE())
    with pytest.raises(ValueError, match="leading size"):
        genjax.sample_flow(jax.random.key(0), v, (10, D), cond=Condition(covariates=jnp.ones((9, 2))))
    with pytest.raises(ValueError, match="row 1"):
        genjax.flow_log_likelihood(jax.random.key(0), v, np.array([[0.0] * D, [np.inf] * D]))
    with pytest.raises(ValueError, match="sigma_min"):
        genjax.LinearPath(sigma_min=1.0)
    with pytest.raises(ValueError, match="coupling"):
        genjax.make_flow_loss(genjax.nn.FieldNet(), coupling="sinkhorn")
    with pytest.raises(ValueError, match="row 2"):
        genjax.fit_flow_model(np.array([[0.0, 1.0], [1.0, 0.0], [np.nan, 0.0]]), max_steps=1)
    with pytest.raises(ValueError, match="one weight per condition group"):
        genjax.guided_field(v, (1.0, 2.0, 3.0), n_groups=2)
    with pytest.raises(ValueError, match="finite"):
        genjax.guided_field(v, float("nan"))


# ------------------------------------------------------------------------------- trained models and guidance

# A labelled 2-d mixture: component (a, b) sits in quadrant (sign x = a, sign y = b); attribute 0 is a, 1 is b.
CENTERS = np.array([[-1.75, -1.75], [-1.75, 1.75], [1.75, -1.75], [1.75, 1.75]])
LABELS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])
SPREAD = 0.5


def _posterior(y):
    """Exact p(component | y) under the mixture, (n, 4)."""
    ll = -0.5 * np.sum((y[:, None, :] - CENTERS[None]) ** 2, -1) / SPREAD**2 + np.log(WEIGHTS)[None]
    return np.exp(ll - logsumexp(ll, axis=1, keepdims=True))


@pytest.fixture(scope="module", params=["flow", "diffusion"])
def labelled_model(request):
    """(sample(field, cond, key) -> (n, 2), trained field) for each family, trained with condition dropout."""
    steps = 1500 if request.param == "flow" else 3000
    rng = np.random.default_rng(0)
    comp = rng.choice(4, steps * 256, p=WEIGHTS)
    x = (CENTERS[comp] + SPREAD * rng.normal(size=(comp.size, 2))).astype(np.float32)
    cond = Condition(labels=jnp.asarray(LABELS[comp], jnp.int32))
    model = genjax.nn.FieldNet(n_hidden=64, n_layers=2, time_features=16, n_categories=(2, 2))
    kw = dict(cond=cond, cond_dropout=0.2, max_steps=steps, batch_size=256, ema_decay=0.99, progress=False,
              steps_per_dispatch=steps // 3, optimizer=optax.adam(3e-3), seed=0)
    if request.param == "flow":
        field = genjax.fit_flow_model(x, model, **kw).velocity_fn

        def sample(f, c, key):
            return genjax.sample_flow(key, f, (c.labels.shape[0], 2), cond=c, rtol=1e-3, atol=1e-3)[0]
    else:
        sde = genjax.VPSDE()
        field = genjax.fit_score_model(x, sde, model, **kw).score_fn

        def sample(f, c, key):
            return genjax.sample_probability_flow_ode(key, f, sde, (c.labels.shape[0], 2), cond=c, rtol=1e-3,
                                                      atol=1e-3)[0]
    return sample, field


def test_guidance_lands_in_the_requested_component_and_sharpens(labelled_model):
    sample, field = labelled_model
    per = 500
    want = np.repeat(np.arange(4), per)
    cond = Condition(labels=jnp.asarray(LABELS[want], jnp.int32))
    out = {w: _posterior(np.asarray(sample(genjax.guided_field(field, w), cond, jax.random.key(1))))
           for w in (0.0, 1.0, 3.0)}
    hit = {w: p.argmax(1) == want for w, p in out.items()}
    miss = {w: 1.0 - p[np.arange(want.size), want] for w, p in out.items()}  # 1 - p(requested | sample)
    for k in range(4):
        assert hit[1.0][want == k].mean() >= 0.99, (k, hit[1.0][want == k].mean())
    # w > 1 sharpens: samples move away from the other components (p(c | x) rises)
    assert hit[3.0].mean() >= hit[1.0].mean() and miss[3.0].mean() < 0.5 * miss[1.0].mean()
    # w = 0 is the unconditional mixture whatever was requested
    freq = np.bincount(out[0.0].argmax(1), minlength=4) / want.size
    np.testing.assert_allclose(freq, WEIGHTS, atol=0.03)


def test_one_attribute_and_compositional_guidance_on_two_attributes(labelled_model):
    sample, field = labelled_model
    n = 2000
    # attribute 0 only (attribute 1 null): quadrants with sign x = a, in proportions p(b | a)
    only_a = Condition(labels=jnp.asarray(np.tile([[0, -1]], (n, 1)), jnp.int32))
    comp = _posterior(np.asarray(sample(field, only_a, jax.random.key(2)))).argmax(1)
    assert np.mean(LABELS[comp, 0] == 0) >= 0.99
    np.testing.assert_allclose(np.mean(comp == 0) / np.mean(LABELS[comp, 0] == 0), 0.4 / 0.7, atol=0.05)
    # both attributes through compositional guidance f_null + sum_i w_i (f_{attribute i} - f_null)
    want = np.repeat([3, 1], n // 2)  # (1, 1), the rarest, and (0, 1)
    both = Condition(labels=jnp.asarray(LABELS[want], jnp.int32))
    y = sample(genjax.guided_field(field, (1.5, 1.5), n_groups=2), both, jax.random.key(3))
    joint = _posterior(np.asarray(y)).argmax(1) == want
    assert joint[: n // 2].mean() >= 0.98 and joint[n // 2:].mean() >= 0.98


def _eight_modes(n, seed=0):
    rng = np.random.default_rng(seed)
    ang = rng.integers(0, 8, n) * (2 * np.pi / 8)
    return (np.stack([3 * np.cos(ang), 3 * np.sin(ang)], 1) + 0.3 * rng.normal(size=(n, 2))).astype(np.float32)


def test_ot_coupling_reaches_the_same_error_in_fewer_steps():
    # Discretisation error of k Euler steps against the same model's adaptive solve from the same noise: the
    # OT-coupled flow is straighter, so few steps suffice.
    steps, batch = 800, 128
    x = _eight_modes(steps * batch)
    model = genjax.nn.FieldNet(n_hidden=64, n_layers=2, time_features=16)
    errors, samples = {}, {}
    for coupling in ("independent", "ot"):
        v = genjax.fit_flow_model(x, model, coupling=coupling, max_steps=steps, batch_size=batch, ema_decay=0.99,
                                  progress=False, steps_per_dispatch=steps // 2, optimizer=optax.adam(3e-3),
                                  seed=0).velocity_fn
        ref, _ = genjax.sample_flow(jax.random.key(5), v, (2000, 2), rtol=1e-5, atol=1e-5)
        errors[coupling] = {}
        for k in (2, 4, 8):
            y, nfe = genjax.sample_flow(jax.random.key(5), v, (2000, 2), n_steps=k, max_steps=8)
            assert int(nfe) == k
            errors[coupling][k] = float(np.sqrt(np.mean(np.sum((np.asarray(y) - np.asarray(ref)) ** 2, -1))))
        samples[coupling] = np.asarray(ref)
    ot, ind = errors["ot"], errors["independent"]
    assert ot[2] < ind[8] and all(ot[k] < 0.5 * ind[k] for k in (2, 4, 8)), errors
    # both trained flows reproduce the eight modes and their equal weights
    centres = 3 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1)
    for y in samples.values():
        dist = np.linalg.norm(y[:, None] - centres[None], axis=-1)
        assert np.mean(dist.min(1) < 4 * 0.3) > 0.95
        np.testing.assert_allclose(np.bincount(dist.argmin(1), minlength=8) / len(y), 1 / 8, atol=0.03)
