"""numpyro Distribution classes NegativeBinomial / ZeroInflatedNegativeBinomial: shapes, values, validation, and
use inside numpyro models and inference."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints
from numpyro.infer import SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta
from numpyro.infer.util import log_density

import genjax


def test_shapes_values_and_moments(key):
    mu = jnp.array([[0.5], [4.0]])  # (2, 1)
    theta = jnp.array([0.3, 2.0, 1e7])  # (3,)
    d = genjax.NegativeBinomial(mu, theta)
    assert d.batch_shape == (2, 3) and d.event_shape == ()
    assert d.support is constraints.nonnegative_integer
    assert set(d.arg_constraints) == {"mu", "theta"}
    x = jnp.array([0.0, 3.0, 1.0])
    np.testing.assert_array_equal(d.log_prob(x), genjax.nb_log_prob(x, mu, theta))
    np.testing.assert_allclose(d.mean, jnp.broadcast_to(mu, (2, 3)))
    np.testing.assert_allclose(d.variance, mu + mu**2 / theta, rtol=1e-6)
    # sampling: the same call signature as test_likelihoods.py::test_sample_shapes_and_keys (one compilation)
    d_row = genjax.NegativeBinomial(jnp.array([1.0, 5.0, 20.0]), jnp.array([2.0]))
    s = d_row.sample(key, (4,))
    assert s.shape == (4, 3) and bool(d_row.support(s).all())
    np.testing.assert_array_equal(s, genjax.sample_nb(key, d_row.mu, d_row.theta, (4, 3)))

    z = jnp.array([-1.0, 0.0, 2.0])
    dz = genjax.ZeroInflatedNegativeBinomial(mu, theta, z)
    assert dz.batch_shape == (2, 3)
    np.testing.assert_array_equal(dz.log_prob(x), genjax.zinb_log_prob(x, mu, theta, z))
    np.testing.assert_allclose(dz.mean, genjax.zinb_mean(mu, theta, z), rtol=1e-6)
    np.testing.assert_allclose(dz.variance, genjax.zinb_variance(mu, theta, z), rtol=1e-6)
    np.testing.assert_allclose(dz.gate, jnp.broadcast_to(jax.nn.sigmoid(z), (2, 3)), rtol=1e-6)
    # ZINB sampling is exercised through numpyro's Predictive in test_inside_a_model_log_density


@jax.jit
def _ours_and_numpyros(x):
    return (
        genjax.NegativeBinomial(3.0, 2.0).log_prob(x),
        dist.NegativeBinomial2(3.0, 2.0).log_prob(x),
        genjax.ZeroInflatedNegativeBinomial(3.0, 2.0, 0.4).log_prob(x),
        dist.ZeroInflatedNegativeBinomial2(3.0, 2.0, gate_logits=0.4).log_prob(x),
    )


def test_agrees_with_numpyro_where_numpyro_is_accurate():
    nb, nb_numpyro, zinb, zinb_numpyro = _ours_and_numpyros(jnp.arange(20.0))
    np.testing.assert_allclose(nb, nb_numpyro, rtol=1e-5)
    np.testing.assert_allclose(zinb, zinb_numpyro, rtol=1e-5)


def test_validation():
    with pytest.raises(
        ValueError, match=r"NegativeBinomial: mu must be finite and >= 0; found -1.0 at index \(1,\)"
    ):
        genjax.NegativeBinomial(jnp.array([1.0, -1.0]), 1.0, validate_args=True)
    with pytest.raises(ValueError, match=r"theta must be finite and > 0; found 0.0 at index \(\)"):
        genjax.ZeroInflatedNegativeBinomial(1.0, 0.0, 0.0, validate_args=True)
    with pytest.raises(ValueError, match=r"zi_logits must be finite; found nan"):
        genjax.ZeroInflatedNegativeBinomial(1.0, 1.0, jnp.nan, validate_args=True)
    d = genjax.NegativeBinomial(2.0, 1.0, validate_args=True)
    for bad, shown in [([0.0, -1.0], r"-1.0 at index \(1,\)"), ([2.5], "2.5"), ([jnp.nan], "nan")]:
        with pytest.raises(
            ValueError, match=r"NegativeBinomial.log_prob: value must be non-negative integers.*" + shown
        ):
            d.log_prob(jnp.array(bad))
    # validation off: no error; the invalid points are NaN, never a plausible number
    d_off = genjax.NegativeBinomial(2.0, 1.0, validate_args=False)
    assert np.isnan(d_off.log_prob(jnp.array([-1.0, 2.5]))).all()
    genjax.NegativeBinomial(-1.0, 1.0, validate_args=False)
    # None follows numpyro's global switch
    with numpyro.validation_enabled(False):
        genjax.NegativeBinomial(-1.0, 1.0)
    with numpyro.validation_enabled(True), pytest.raises(ValueError, match="mu must be"):
        genjax.NegativeBinomial(-1.0, 1.0)
    # traced values cannot be checked: NaN under jit
    out = jax.jit(lambda v: genjax.NegativeBinomial(2.0, 1.0, validate_args=True).log_prob(v))(
        jnp.array([-1.0, 1.0])
    )
    assert np.isnan(out[0]) and np.isfinite(out[1])


def test_pytree_and_vmap():
    d = genjax.ZeroInflatedNegativeBinomial(jnp.array([1.0, 2.0]), 3.0, 0.0)
    leaves = jax.tree_util.tree_leaves(d)
    assert len(leaves) == 3
    out = jax.jit(lambda d, x: d.log_prob(x))(d, jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(out, d.log_prob(jnp.array([0.0, 1.0])), rtol=1e-6)
    per = jax.vmap(lambda m: genjax.NegativeBinomial(m, 3.0).log_prob(2.0))(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(per, genjax.nb_log_prob(2.0, jnp.array([1.0, 2.0]), 3.0), rtol=1e-6)


def _model(counts=None, n=None, zero_inflated=False):
    log_mu = numpyro.sample("log_mu", dist.Normal(0.0, 5.0))
    log_theta = numpyro.sample("log_theta", dist.Normal(0.0, 5.0))
    mu, theta = jnp.exp(log_mu), jnp.exp(log_theta)
    if zero_inflated:
        z = numpyro.sample("zi_logits", dist.Normal(0.0, 3.0))
        likelihood = genjax.ZeroInflatedNegativeBinomial(mu, theta, z)
    else:
        likelihood = genjax.NegativeBinomial(mu, theta)
    with numpyro.plate("cells", n if counts is None else counts.shape[0]):
        numpyro.sample("x", likelihood, obs=counts)


def test_inside_a_model_log_density():
    counts = jnp.array([0.0, 3.0, 7.0, 1.0])
    params = {"log_mu": jnp.log(2.5), "log_theta": jnp.log(4.0), "zi_logits": jnp.array(-0.5)}
    prior = dist.Normal(0.0, 5.0).log_prob(params["log_mu"]) + dist.Normal(0.0, 5.0).log_prob(
        params["log_theta"]
    )
    lp = jax.jit(lambda p: log_density(_model, (counts,), {}, p)[0])(params)
    np.testing.assert_allclose(lp, prior + genjax.nb_log_prob(counts, 2.5, 4.0).sum(), rtol=1e-5)
    lp = jax.jit(lambda p: log_density(_model, (counts,), {"zero_inflated": True}, p)[0])(params)
    expected = (
        prior + dist.Normal(0.0, 3.0).log_prob(-0.5) + genjax.zinb_log_prob(counts, 2.5, 4.0, -0.5).sum()
    )
    np.testing.assert_allclose(lp, expected, rtol=1e-5)
    prior = Predictive(_model, num_samples=3)(jax.random.key(0), n=5, zero_inflated=True)
    assert prior["x"].shape == (3, 5) and bool(constraints.nonnegative_integer(prior["x"]).all())


def test_svi_recovers_parameters(key):
    """MAP fit of mu and theta on 3000 cells simulated with numpy (an independent sampler), with numpyro's SVI."""
    mu, theta = 6.0, 2.0
    counts = jnp.asarray(
        np.random.default_rng(0).negative_binomial(theta, theta / (theta + mu), 3000), jnp.float32
    )
    guide = AutoDelta(_model)
    svi = SVI(_model, guide, numpyro.optim.Adam(0.05), Trace_ELBO())
    result = svi.run(key, 1500, counts, progress_bar=False)
    fit = guide.median(result.params)
    assert float(jnp.exp(fit["log_mu"])) == pytest.approx(mu, rel=0.08)
    assert float(jnp.exp(fit["log_theta"])) == pytest.approx(theta, rel=0.25)
    assert np.isfinite(result.losses).all() and result.losses[-1] < result.losses[0]
